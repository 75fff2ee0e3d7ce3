//! The balancer's clock: milliseconds since the process started, from tokio's clock so
//! unit tests can pause and advance time.

use std::sync::OnceLock;

static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();

/// Milliseconds since the first call in this process.
pub fn now_ms() -> u64 {
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now().saturating_duration_since(epoch).as_millis() as u64
}
