//! The request framing checks on arbitrary bytes as a raw head: they never panic, and what
//! they accept carries at most one framing header and one Host.
//!
//! Run: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run framing -- -max_total_time=60

#![no_main]

use edgegate_filters::framing::assert_invariants;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| assert_invariants(data));
