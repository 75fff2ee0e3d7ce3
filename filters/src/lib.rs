//! edgegate's per-request decisions, one module per filter on the request path
//! (see docs/architecture.md, "The request path"). The `ProxyHttp` hooks in `gateway` only
//! dispatch here and act on the returned [`Decision`].

pub mod access;
pub mod addr;
pub mod audit;
pub mod cache;
pub mod framing;
pub mod headers;
pub mod hex;
pub mod identity;
pub mod json;
pub mod normalise;
pub mod policy;
pub mod query;
pub mod ratelimit;
pub mod reply;
pub mod request_id;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
mod token_crypto;
pub mod trace;

pub use reply::{Decision, Reply};
pub use request_id::RequestId;
