//! An audit record whose request-made texts are arbitrary: written as a log row writes it,
//! it reads back as the same record (no string or array ended early, no field added), and
//! its query is the query redacted and cut as documented.
//!
//! Run: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run audit_record -- -max_total_time=60

#![no_main]

use edgegate_filters::audit::record::assert_invariants;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| assert_invariants(data));
