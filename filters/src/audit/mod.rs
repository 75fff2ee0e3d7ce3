//! The audit trail's records and their store: a tamper-evident log in SQLite, written by
//! one thread in the gateway (`edgegate::audit`), read by the forwarder, `audit export`
//! and `audit verify`.

pub mod record;
pub mod store;
#[cfg(test)]
mod tests;

pub use record::{record_query_into, AsFields, Fields, Record, GENESIS, RECORD_QUERY_MAX};
/// What the log's writes fail with.
pub use rusqlite::Error as StoreError;
pub use store::{
    verify, verify_after, verify_in_parts, Durability, Reader, Store, Verified, VerifyError, VerifyReport, WalCopier,
};
