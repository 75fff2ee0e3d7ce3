//! Request path step 3, "rate limit": a per-route, per-key limit as GCRA (the generic
//! cell rate algorithm — a token bucket kept as one timestamp per key). Exact per key, no
//! sketch that overcounts at edge rates; keys live in a bounded map (moka) so a flood of
//! distinct keys cannot grow memory without bound — the least recently seen are dropped,
//! which can only ever let a forgotten key through, never refuse a good one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgegate_config::RateLimit;

/// Most keys remembered per route.
const MAX_KEYS: u64 = 100_000;

/// What the limiter said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitOutcome {
    Allowed,
    /// Refused: the client may try again after this long (`Retry-After`).
    Limited {
        retry_after: Duration,
    },
}

/// One route's limiter; shared across snapshots while its config is unchanged.
pub struct RateLimiter {
    config: RateLimit,
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far ahead of now a key's theoretical arrival time may run (the burst).
    tolerance: u64,
    epoch: Instant,
    /// Per key: the theoretical arrival time of its next request, in ns since `epoch`.
    keys: moka::sync::Cache<String, Arc<AtomicU64>>,
}

impl RateLimiter {
    pub fn new(config: &RateLimit) -> RateLimiter {
        let interval = (1_000_000_000 / u64::from(config.rate.max(1))).max(1);
        RateLimiter {
            config: config.clone(),
            interval,
            tolerance: interval.saturating_mul(u64::from(config.burst.max(1)) - 1),
            epoch: Instant::now(),
            keys: moka::sync::Cache::builder().max_capacity(MAX_KEYS).time_to_idle(Duration::from_secs(600)).build(),
        }
    }

    pub fn config(&self) -> &RateLimit {
        &self.config
    }

    /// Counts one request for `key` now.
    pub fn check(&self, key: &str) -> LimitOutcome {
        self.check_at(key, self.epoch.elapsed())
    }

    fn check_at(&self, key: &str, now: Duration) -> LimitOutcome {
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let tat = self.keys.get_with_by_ref(key, || Arc::new(AtomicU64::new(0)));
        let mut current = tat.load(Ordering::Acquire);
        loop {
            let base = current.max(now);
            if base - now > self.tolerance {
                let wait = base - now - self.tolerance;
                return LimitOutcome::Limited { retry_after: Duration::from_nanos(wait) };
            }
            match tat.compare_exchange_weak(current, base + self.interval, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return LimitOutcome::Allowed,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgegate_config::RateLimitKey;

    fn limiter(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(&RateLimit { rate, burst, key: RateLimitKey::ClientIp })
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let l = limiter(10, 5);
        let t0 = Duration::from_secs(1);
        for i in 0..5 {
            assert_eq!(l.check_at("a", t0), LimitOutcome::Allowed, "burst request {i}");
        }
        let LimitOutcome::Limited { retry_after } = l.check_at("a", t0) else { panic!("the sixth is over the burst") };
        assert_eq!(retry_after, Duration::from_millis(100), "one interval at 10/s");
        assert_eq!(l.check_at("b", t0), LimitOutcome::Allowed, "keys are separate");
        assert_eq!(l.check_at("a", t0 + Duration::from_millis(100)), LimitOutcome::Allowed);
        assert!(matches!(l.check_at("a", t0 + Duration::from_millis(100)), LimitOutcome::Limited { .. }));
        // Exactly the rate over a long run: 10/s for 10 s is 100 more.
        let allowed = (0..1000)
            .filter(|i| l.check_at("a", t0 + Duration::from_millis(200 + i * 10)) == LimitOutcome::Allowed)
            .count();
        assert_eq!(allowed, 100);
    }
}
