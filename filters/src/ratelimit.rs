//! Request path step 3, "rate limit": a per-route, per-key limit as GCRA (the generic
//! cell rate algorithm — a token bucket kept as one timestamp per key). Exact per key, no
//! sketch that overcounts at edge rates. Keys live in a bounded, sharded map so a flood of
//! distinct keys cannot grow memory without bound: a full shard first drops the keys whose
//! debt is paid (they would be allowed anyway), and past that stops remembering new keys —
//! forgetting can only ever let a key through, never refuse a good one.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use edgegate_config::{ClientRate, RateLimit, RateLimitKey};

/// A shard's keys. Clients choose them (an address, a header's value), so they are hashed
/// with keys drawn at random for each limiter: with a fixed hash (FxHash) anyone can
/// compute thousands of values that land in one bucket chain, and each request with one
/// would then walk all of them.
type KeyMap<V> = std::collections::HashMap<Box<str>, V, ahash::RandomState>;

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
    shards: Vec<Mutex<KeyMap<u64>>>,
    hasher: ahash::RandomState,
}

impl RateLimiter {
    pub fn new(config: &RateLimit) -> RateLimiter {
        let interval = (1_000_000_000 / u64::from(config.rate.max(1))).max(1);
        RateLimiter {
            config: config.clone(),
            interval,
            tolerance: interval.saturating_mul(u64::from(config.burst.max(1)) - 1),
            epoch: Instant::now(),
            shards: new_shards(),
            hasher: ahash::RandomState::new(),
        }
    }

    pub fn config(&self) -> &RateLimit {
        &self.config
    }

    /// `limit.rate` a second, `limit.burst` at once, per client address (IPv6: per /64):
    /// for what one client may do, whatever route it asks for.
    pub fn per_client(limit: ClientRate) -> RateLimiter {
        RateLimiter::new(&RateLimit {
            rate: limit.rate,
            burst: limit.burst,
            key: RateLimitKey::ClientIp,
            global_nodes: None,
        })
    }

    /// Whether this is [`RateLimiter::per_client`] for `limit` (its state may be kept).
    pub fn is_per_client(&self, limit: ClientRate) -> bool {
        self.config.key == RateLimitKey::ClientIp && self.config.rate == limit.rate && self.config.burst == limit.burst
    }

    /// Counts one for the client `ip` belongs to ([`crate::addr::client_of`]); requests
    /// without an address share one key.
    pub fn check_client(&self, ip: Option<std::net::IpAddr>) -> LimitOutcome {
        let mut buf = [0u8; 64];
        self.check(ip.map_or("", |ip| crate::addr::client_str(ip, &mut buf)))
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

    fn shard(&self, key: &str) -> MutexGuard<'_, KeyMap<u64>> {
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        // A panic while holding a shard leaves only timestamps behind: keep using them.
        shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A route's limiter: this gateway's own, or a share of a fleet-wide budget.
pub enum Limiter {
    Local(RateLimiter),
    Global(GlobalLimiter),
}

impl Limiter {
    pub fn new(config: &RateLimit) -> Limiter {
        match config.global_nodes {
            Some(nodes) => Limiter::Global(GlobalLimiter::new(config, nodes)),
            None => Limiter::Local(RateLimiter::new(config)),
        }
    }

    pub fn config(&self) -> &RateLimit {
        match self {
            Limiter::Local(l) => l.config(),
            Limiter::Global(g) => &g.config,
        }
    }

    pub fn check(&self, key: &str) -> LimitOutcome {
        match self {
            Limiter::Local(l) => l.check(key),
            Limiter::Global(g) => g.check(key, unix_now()),
        }
    }
}

fn new_shards<V>() -> Vec<Mutex<KeyMap<V>>> {
    let hasher = ahash::RandomState::new();
    (0..SHARDS).map(|_| Mutex::new(KeyMap::with_hasher(hasher.clone()))).collect()
}

fn unix_now() -> Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// How often a gateway settles its global counts with Redis (the bound is 250 ms).
pub const GLOBAL_SYNC: Duration = Duration::from_millis(100);

/// One key's state in the current one-second window.
#[derive(Debug, Default, Clone, Copy)]
struct WindowCount {
    window: u64,
    /// Requests this gateway may still admit before its next sync.
    allowance: u64,
    /// Admitted here since the last sync (not yet in Redis).
    pending: u64,
    /// Refused here since the last sync: the key wants more, so its share is refreshed.
    wanting: bool,
}

/// A fleet-wide budget of `rate` requests per key per one-second window (windows are Unix
/// seconds, so every gateway counts the same ones), shared through Redis. Between syncs a
/// gateway admits only from its share: `(rate − admitted fleet-wide) / nodes`, refreshed
/// every [`GLOBAL_SYNC`] from the window's total in Redis. A gateway alone never admits
/// more than `rate` in a window; a gateway whose neighbours are idle gets half of what is
/// left each sync, so it reaches the budget within a few syncs. The fleet keeps to `rate`
/// while every gateway's counts reach Redis on time: each assumes the others admitted as
/// many as it did since its last sync, so a gateway whose sync is late lets the others hand
/// out again what it admitted unseen (up to its share; see the tests). While Redis cannot
/// be reached, each gateway falls back to a local limit of `rate / nodes` (burst
/// `burst / nodes`): never to no limit.
pub struct GlobalLimiter {
    config: RateLimit,
    nodes: u64,
    fallback: RateLimiter,
    /// Redis is unavailable: the local fallback decides.
    degraded: std::sync::atomic::AtomicBool,
    shards: Vec<Mutex<KeyMap<WindowCount>>>,
    hasher: ahash::RandomState,
}

/// One key's counts to settle with Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub key: Box<str>,
    pub window: u64,
    pub pending: u64,
}

impl GlobalLimiter {
    pub fn new(config: &RateLimit, nodes: u32) -> GlobalLimiter {
        let nodes = u64::from(nodes.max(1));
        let local = RateLimit {
            rate: (u64::from(config.rate) / nodes).max(1) as u32,
            burst: (u64::from(config.burst) / nodes).max(1) as u32,
            key: config.key.clone(),
            global_nodes: None,
        };
        GlobalLimiter {
            config: config.clone(),
            nodes,
            fallback: RateLimiter::new(&local),
            degraded: std::sync::atomic::AtomicBool::new(false),
            shards: new_shards(),
            hasher: ahash::RandomState::new(),
        }
    }

    pub fn config(&self) -> &RateLimit {
        &self.config
    }

    /// Whether Redis is unavailable and the local `rate / nodes` limit applies.
    pub fn degraded(&self) -> bool {
        self.degraded.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_degraded(&self, degraded: bool) {
        self.degraded.store(degraded, std::sync::atomic::Ordering::Relaxed);
    }

    fn first_share(&self) -> u64 {
        (u64::from(self.config.rate) / self.nodes).max(1)
    }

    /// `now` is the time since the Unix epoch.
    pub fn check(&self, key: &str, now: Duration) -> LimitOutcome {
        if self.degraded() {
            return self.fallback.check(key);
        }
        let window = now.as_secs();
        let next_window = Duration::from_secs(window + 1).saturating_sub(now);
        let mut shard = self.shard(key);
        if !shard.contains_key(key) && shard.len() >= MAX_KEYS / SHARDS {
            shard.retain(|_, c| c.window >= window);
            if shard.len() >= MAX_KEYS / SHARDS {
                return LimitOutcome::Allowed;
            }
        }
        let first = self.first_share();
        let count = shard.entry(key.into()).or_default();
        if count.window != window {
            *count = WindowCount { window, allowance: first, pending: 0, wanting: false };
        }
        if count.allowance > 0 {
            count.allowance -= 1;
            count.pending += 1;
            LimitOutcome::Allowed
        } else {
            count.wanting = true;
            // The share may grow at the next sync; the budget surely renews with the window.
            LimitOutcome::Limited { retry_after: next_window.min(Duration::from_secs(1)) }
        }
    }

    /// Takes what must be settled with Redis for the window `now` is in: every key that
    /// admitted or refused requests since the last sync. Keys of past windows are dropped.
    pub fn take_deltas(&self, now: Duration) -> Vec<Delta> {
        let window = now.as_secs();
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, c| c.window >= window);
            for (key, c) in shard.iter_mut() {
                if c.pending > 0 || c.wanting {
                    out.push(Delta { key: key.clone(), window: c.window, pending: c.pending });
                    c.pending = 0;
                    c.wanting = false;
                }
            }
        }
        out
    }

    /// Applies Redis's answer: `total` admitted fleet-wide in the key's window, this
    /// gateway's `pushed` delta included. The others may not have settled yet: each is
    /// assumed to have admitted as many as this one did since its last sync, so what is
    /// left is `rate − total − (nodes − 1) × pushed`, and this gateway's new share is that
    /// divided among the nodes. Even traffic is then admitted exactly up to the budget; a
    /// gateway alone loses a sync now and then (a few per cent of the budget).
    pub fn settle(&self, key: &str, window: u64, total: u64, pushed: u64) {
        let mut shard = self.shard(key);
        if let Some(c) = shard.get_mut(key) {
            if c.window == window {
                let unsettled = (self.nodes - 1).saturating_mul(pushed);
                let left = u64::from(self.config.rate).saturating_sub(total + unsettled + c.pending);
                c.allowance = left.div_ceil(self.nodes).min(left);
            }
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, KeyMap<WindowCount>> {
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgegate_config::RateLimitKey;

    fn limiter(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(&RateLimit { rate, burst, key: RateLimitKey::ClientIp, global_nodes: None })
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
    fn each_limiter_hashes_keys_its_own_way() {
        // What an attacker would need to fill one bucket chain differs between processes.
        let (a, b) = (limiter(1, 1), limiter(1, 1));
        let differ =
            (0..64).map(|i| format!("2001:db8:{i}::/64")).filter(|k| a.hasher.hash_one(k) != b.hasher.hash_one(k));
        assert_eq!(differ.count(), 64);
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

    fn global(rate: u32, nodes: u32) -> GlobalLimiter {
        GlobalLimiter::new(
            &RateLimit { rate, burst: rate, key: RateLimitKey::ClientIp, global_nodes: Some(nodes) },
            nodes,
        )
    }

    fn admitted(g: &GlobalLimiter, key: &str, now: Duration, tries: usize) -> usize {
        (0..tries).filter(|_| g.check(key, now) == LimitOutcome::Allowed).count()
    }

    /// Settles `deltas` as the sync does, against `redis`, the window's total there.
    fn settle_all(g: &GlobalLimiter, deltas: impl IntoIterator<Item = Delta>, redis: &mut u64) {
        for d in deltas {
            *redis += d.pending;
            g.settle(&d.key, d.window, *redis, d.pending);
        }
    }

    #[test]
    fn two_gateways_sharing_a_budget_never_admit_more_than_it() {
        // Two gateways, a shared total as Redis would keep it, both hammered every sync.
        let (a, b) = (global(100, 2), global(100, 2));
        let t = Duration::from_secs(1_000);
        let mut redis = 0u64;
        let mut total = 0usize;
        for sync in 0..10u32 {
            let now = t + GLOBAL_SYNC * sync;
            total += admitted(&a, "k", now, 1_000) + admitted(&b, "k", now, 1_000);
            for g in [&a, &b] {
                settle_all(g, g.take_deltas(now), &mut redis);
            }
        }
        assert!(total <= 100, "admitted {total} against a budget of 100");
        assert!(total >= 95, "and nearly all of it: {total}");
        // A new window renews the budget.
        let next = t + Duration::from_secs(1);
        assert_eq!(admitted(&a, "k", next, 1_000), 50, "each node's first share is rate / nodes");
    }

    #[test]
    fn a_gateway_alone_reaches_the_budget_in_a_few_syncs() {
        let a = global(100, 2);
        let t = Duration::from_secs(2_000);
        let (mut redis, mut total) = (0u64, 0usize);
        for sync in 0..9u32 {
            let now = t + GLOBAL_SYNC * sync;
            total += admitted(&a, "k", now, 1_000);
            settle_all(&a, a.take_deltas(now), &mut redis);
        }
        assert!((95..=100).contains(&total), "{total}");
    }

    #[test]
    fn a_gateway_whose_sync_is_late_lets_the_other_take_its_share_again_but_no_more() {
        // B spends its first share at once and its counts reach Redis only after A's second
        // sync (a slow round trip, a busy node): A cannot see them and, finding the
        // window's total still at its own 50, takes part of the rest. Neither gateway ever
        // admits more than the budget on its own, and the excess is bounded by what B
        // admitted unseen.
        let (a, b) = (global(100, 2), global(100, 2));
        let t = Duration::from_secs(3_000);
        let mut redis = 0u64;
        let (mut by_a, mut by_b) = (0usize, admitted(&b, "k", t, 1_000));
        let mut b_late = b.take_deltas(t);
        for sync in 0..10u32 {
            let now = t + GLOBAL_SYNC * sync;
            by_a += admitted(&a, "k", now, 1_000);
            settle_all(&a, a.take_deltas(now), &mut redis);
            if sync == 2 {
                settle_all(&b, b_late.drain(..), &mut redis);
            }
            by_b += admitted(&b, "k", now, 1_000);
        }
        assert_eq!(by_b, 50, "B's first share, then nothing: it saw A's counts");
        assert!(by_a <= 100, "a gateway alone never admits more than the budget: {by_a}");
        assert!(by_a + by_b <= 100 + 50, "the excess is at most what B admitted unseen: {by_a} + {by_b}");
        assert!(by_a + by_b > 100, "the estimate's known limit (documented): {by_a} + {by_b}");
    }

    #[test]
    fn without_redis_each_gateway_keeps_rate_over_nodes() {
        let a = global(100, 4);
        a.set_degraded(true);
        let allowed = (0..1_000).filter(|_| a.check("k", Duration::from_secs(5)) == LimitOutcome::Allowed).count();
        assert_eq!(allowed, 25, "burst / nodes at once, never unlimited");
    }
}
