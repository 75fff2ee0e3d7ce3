//! Request path step 3, "rate limit": a per-route, per-key limit as GCRA (the generic
//! cell rate algorithm — a token bucket kept as one timestamp per key). Exact per key, no
//! sketch that overcounts at edge rates. Keys live in a bounded, sharded map so a flood of
//! distinct keys cannot grow memory without bound: a full shard first drops the keys whose
//! debt is paid (they would be allowed anyway), and past that stops remembering new keys —
//! forgetting can only ever let a key through, never refuse a good one.

use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use edgegate_config::RateLimit;

/// Most keys remembered per route.
const MAX_KEYS: usize = 100_000;
/// Shards of the key map: a request locks one.
const SHARDS: usize = 16;

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
    shards: Vec<Mutex<FxHashMap<Box<str>, u64>>>,
}

impl RateLimiter {
    pub fn new(config: &RateLimit) -> RateLimiter {
        let interval = (1_000_000_000 / u64::from(config.rate.max(1))).max(1);
        RateLimiter {
            config: config.clone(),
            interval,
            tolerance: interval.saturating_mul(u64::from(config.burst.max(1)) - 1),
            epoch: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
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
        let mut shard = self.shard(key);
        let tat = match shard.get_mut(key) {
            Some(tat) => tat,
            None => {
                if shard.len() >= MAX_KEYS / SHARDS {
                    // Keys whose debt is paid would be allowed like a new key anyway.
                    shard.retain(|_, tat| *tat > now);
                    if shard.len() >= MAX_KEYS / SHARDS {
                        return LimitOutcome::Allowed;
                    }
                }
                shard.entry(key.into()).or_insert(0)
            }
        };
        let base = (*tat).max(now);
        if base - now > self.tolerance {
            return LimitOutcome::Limited { retry_after: Duration::from_nanos(base - now - self.tolerance) };
        }
        *tat = base + self.interval;
        LimitOutcome::Allowed
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, FxHashMap<Box<str>, u64>> {
        let shard = &self.shards[(rustc_hash::FxBuildHasher.hash_one(key) as usize) % SHARDS];
        // A panic while holding a shard leaves only timestamps behind: keep using them.
        shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

    #[test]
    fn a_flood_of_keys_is_bounded_and_never_refuses_a_new_key() {
        let l = limiter(1, 1);
        let t = Duration::from_secs(1);
        for i in 0..(MAX_KEYS + 5_000) {
            assert_eq!(l.check_at(&format!("k{i}"), t), LimitOutcome::Allowed, "new key {i}");
        }
        let kept: usize = l.shards.iter().map(|s| s.lock().map_or(0, |m| m.len())).sum();
        assert!(kept <= MAX_KEYS, "{kept} keys kept");
        // Once their debt is paid, old keys make room again.
        assert_eq!(l.check_at("late", t + Duration::from_secs(2)), LimitOutcome::Allowed);
        assert!(matches!(l.check_at("late", t + Duration::from_secs(2)), LimitOutcome::Limited { .. }), "remembered");
    }
}
