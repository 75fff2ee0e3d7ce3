//! Per-endpoint state shared by every snapshot that contains the endpoint: latency
//! estimate, requests in flight, passive (outlier) and active health. All atomics:
//! the request path never takes a lock here. Kept across config reloads for endpoints
//! whose address did not change.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::ewma::PeakEwma;

#[derive(Debug)]
pub struct EndpointState {
    pub address: SocketAddr,
    pub ewma: PeakEwma,
    in_flight: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Ejected until this time (ms on the balancer clock); 0 when not ejected.
    ejected_until_ms: AtomicU64,
    times_ejected: AtomicU32,
    ejections_total: AtomicU64,
    /// Active health: down after `unhealthy_threshold` failed checks in a row, up again
    /// after `healthy_threshold` good ones. Starts up.
    active_down: AtomicBool,
    check_streak: AtomicU32,
    /// A health check of this endpoint is running, or when the next one is due.
    pub check_running: AtomicBool,
    pub next_check_ms: AtomicU64,
    /// Attempts by result and response-head latency, for `/metrics`.
    pub stats: UpstreamStats,
}

/// How an attempt at an endpoint ended, as `edgegate_upstream_requests_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamResult {
    /// A response head with a status below 500.
    Response,
    /// A response head with a 5xx status.
    ServerError,
    /// The connection could not be made (nothing was sent).
    ConnectError,
    /// The endpoint did not answer within the route's timeouts.
    Timeout,
    /// The connection broke or the answer was malformed.
    Error,
}

impl UpstreamResult {
    pub const ALL: [UpstreamResult; 5] = [
        UpstreamResult::Response,
        UpstreamResult::ServerError,
        UpstreamResult::ConnectError,
        UpstreamResult::Timeout,
        UpstreamResult::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UpstreamResult::Response => "response",
            UpstreamResult::ServerError => "5xx",
            UpstreamResult::ConnectError => "connect_error",
            UpstreamResult::Timeout => "timeout",
            UpstreamResult::Error => "error",
        }
    }
}

/// Counters kept per endpoint by the request path: one add per attempt, one bucket add
/// and one sum add per response head.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    results: [AtomicU64; 5],
    pub duration: crate::metrics::family::AtomicHistogram,
}

impl UpstreamStats {
    pub fn count_result(&self, result: UpstreamResult) {
        self.results[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self, result: UpstreamResult) -> u64 {
        self.results[result as usize].load(Ordering::Relaxed)
    }
}

impl EndpointState {
    pub fn new(address: SocketAddr, default_rtt: Duration, now_ms: u64) -> EndpointState {
        EndpointState {
            address,
            ewma: PeakEwma::new(default_rtt, now_ms),
            in_flight: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
            ejections_total: AtomicU64::new(0),
            active_down: AtomicBool::new(false),
            check_streak: AtomicU32::new(0),
            check_running: AtomicBool::new(false),
            next_check_ms: AtomicU64::new(0),
            stats: UpstreamStats::default(),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Peak-EWMA load: cost × (in flight + 1).
    pub fn load(&self, now_ms: u64, tau: Duration) -> f32 {
        self.ewma.cost_us(now_ms, tau) * (self.in_flight() + 1) as f32
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    pub fn is_active_down(&self) -> bool {
        self.active_down.load(Ordering::Relaxed)
    }

    /// Eligible for new requests: not ejected and not failing active checks.
    pub fn is_healthy(&self, now_ms: u64) -> bool {
        !self.is_ejected(now_ms) && !self.is_active_down()
    }

    pub fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    /// Records a success (resets the failure streak). Returns nothing to do.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a connect failure or 5xx; returns the failure streak so far.
    pub fn record_failure(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ejects for `base × times ejected`, capped at `max`.
    pub fn eject(&self, now_ms: u64, base: Duration, max: Duration) -> Duration {
        let times = self.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let span = base.saturating_mul(times).min(max);
        self.ejected_until_ms.store(now_ms + span.as_millis() as u64, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        span
    }

    /// Applies one active health-check result; returns the new "down" state when it
    /// changed.
    pub fn record_check(&self, ok: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> Option<bool> {
        let down = self.is_active_down();
        if ok != down {
            // The result agrees with the current state: the streak towards a flip resets.
            self.check_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.check_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if down { healthy_threshold } else { unhealthy_threshold };
        if streak >= needed {
            self.active_down.store(!down, Ordering::Relaxed);
            self.check_streak.store(0, Ordering::Relaxed);
            if down {
                // Back up: start over with a fresh failure streak.
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return Some(!down);
        }
        None
    }
}

/// One attempt of a request at an endpoint: counts it as in flight until dropped.
#[derive(Debug)]
pub struct Attempt {
    pub endpoint: Arc<EndpointState>,
    pub index: usize,
    pub started: tokio::time::Instant,
}

impl Attempt {
    pub fn start(endpoint: Arc<EndpointState>, index: usize) -> Attempt {
        Attempt::start_at(endpoint, index, tokio::time::Instant::now())
    }

    /// [`Attempt::start`] at a time already read.
    pub fn start_at(endpoint: Arc<EndpointState>, index: usize, started: tokio::time::Instant) -> Attempt {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Attempt { endpoint, index, started }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> EndpointState {
        EndpointState::new("10.0.0.1:80".parse().expect("addr"), Duration::from_millis(30), 0)
    }

    #[test]
    fn attempts_count_in_flight_until_dropped() {
        let e = Arc::new(ep());
        let a = Attempt::start(Arc::clone(&e), 0);
        let b = Attempt::start(Arc::clone(&e), 0);
        assert_eq!(e.in_flight(), 2);
        assert!((e.load(0, Duration::from_secs(10)) - 30_000.0 * 3.0).abs() < 1.0);
        drop(a);
        drop(b);
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn ejection_grows_with_each_ejection_and_is_capped() {
        let e = ep();
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(3);
        assert_eq!(e.eject(0, base, max), Duration::from_secs(1));
        assert!(e.is_ejected(999) && !e.is_ejected(1_000));
        assert_eq!(e.eject(1_000, base, max), Duration::from_secs(2));
        assert_eq!(e.eject(3_000, base, max), Duration::from_secs(3));
        assert_eq!(e.eject(6_000, base, max), Duration::from_secs(3), "capped");
        assert_eq!(e.ejections_total(), 4);
    }

    #[test]
    fn active_checks_flip_state_after_thresholds() {
        let e = ep();
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(true, 2, 3), None, "a success in between resets the streak");
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(false, 2, 3), Some(true), "third failure in a row: down");
        assert!(!e.is_healthy(0));
        assert_eq!(e.record_check(true, 2, 3), None);
        assert_eq!(e.record_check(true, 2, 3), Some(false), "second success in a row: up");
        assert!(e.is_healthy(0));
    }
}
