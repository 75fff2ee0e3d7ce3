//! The balancer's clock: milliseconds since the process started, from tokio's clock so
//! unit tests can pause and advance time.

use std::sync::OnceLock;

static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();

/// Milliseconds since the first call in this process.
pub fn now_ms() -> u64 {
    ms_at(tokio::time::Instant::now())
}

/// [`now_ms`] for an instant already read (a request step reads the clock once).
pub fn ms_at(t: tokio::time::Instant) -> u64 {
    let epoch = *EPOCH.get_or_init(|| t);
    t.saturating_duration_since(epoch).as_millis() as u64
}
