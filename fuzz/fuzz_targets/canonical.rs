//! The request canonicaliser on arbitrary bytes: it never panics, and whatever it accepts
//! is rooted, free of dot and empty segments and bad bytes, and a fixed point.
//! Input: `host NUL path`, or a path alone (fixed host).
//!
//! Run: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run canonical -- -max_total_time=60

#![no_main]

use edgegate_filters::normalise::{assert_invariants, split_fuzz_input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (host, path) = split_fuzz_input(data);
    assert_invariants(host, path);
});
