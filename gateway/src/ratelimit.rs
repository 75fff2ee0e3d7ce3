//! The fleet-wide rate budgets' link to Redis: every [`GLOBAL_SYNC`] this background
//! service takes each global limiter's counts since the last sync, adds them to the
//! window's totals in Redis with one atomic script (one round trip for every key), and
//! hands each total back so the limiter can compute its new share. When Redis cannot be
//! reached the limiters fall back to their local `rate / nodes` limit — never to 500s,
//! never to no limit — `edgegate_rate_limit_fallback` says so (and
//! `edgegate_rate_limit_fallbacks_total` counts the episodes), and the next successful
//! round trip ends it. With the fleet's key (`cache.redis.key_file`) a counter is named by
//! a MAC of its route, second and key ([`L2::counter_key`]), not by the client's address
//! or user.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use edgegate_config::Redis;
use edgegate_filters::ratelimit::{Limiter, GLOBAL_SYNC};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::{IntCounter, IntGauge};

use crate::cache::l2::L2;
use crate::state::GatewayState;

/// Adds each delta to its key's window total, keeps the key two windows, returns the totals.
const SCRIPT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('INCRBY', key, ARGV[i + 1])
  redis.call('PEXPIRE', key, ARGV[1])
end
return out
";

/// The counters' names of one second, by route and key: each computed once a second
/// rather than at every sync — with the fleet's key a name is a MAC, and a flood from many
/// addresses has a delta for each of them at every sync.
#[derive(Default)]
struct Names {
    window: u64,
    by_route: HashMap<Box<str>, HashMap<Box<str>, String>>,
}

impl Names {
    fn get(&mut self, l2: &L2, route: &str, window: u64, key: &str) -> String {
        if window > self.window {
            self.window = window;
            self.by_route.clear();
        }
        if window < self.window {
            return l2.counter_key(route, window, key);
        }
        let keys = match self.by_route.get_mut(route) {
            Some(keys) => keys,
            None => self.by_route.entry(route.into()).or_default(),
        };
        match keys.get(key) {
            Some(name) => name.clone(),
            None => keys.entry(key.into()).or_insert_with(|| l2.counter_key(route, window, key)).clone(),
        }
    }
}

pub struct GlobalRateSync {
    pub state: Arc<GatewayState>,
    pub redis: Redis,
    pub fallback: IntGauge,
    pub fallbacks: IntCounter,
}

impl GlobalRateSync {
    /// The service when some route has a global budget and Redis is configured.
    pub fn new(state: &Arc<GatewayState>) -> Option<GlobalRateSync> {
        let snapshot = state.snapshot.load();
        let any_global =
            snapshot.config.routes.iter().any(|r| r.rate_limit.as_ref().is_some_and(|l| l.global_nodes.is_some()));
        let redis = snapshot.config.redis.clone()?;
        any_global.then(|| GlobalRateSync {
            state: Arc::clone(state),
            redis,
            fallback: state.metrics.rate_limit_fallback.clone(),
            fallbacks: state.metrics.rate_limit_fallbacks.clone(),
        })
    }

    /// One sync round; Err when Redis did not answer.
    async fn round(
        &self,
        l2: &L2,
        client: &redis::Client,
        conn: &mut Option<redis::aio::MultiplexedConnection>,
        names: &mut Names,
    ) -> Result<(), String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let snapshot = self.state.snapshot.load_full();
        let limiters: Vec<(&str, &edgegate_filters::ratelimit::GlobalLimiter)> = snapshot
            .routes
            .iter()
            .filter_map(|r| match r.limiter.as_deref() {
                Some(Limiter::Global(g)) => Some((r.name(), g)),
                _ => None,
            })
            .collect();
        let degraded = limiters.iter().any(|(_, g)| g.degraded());
        let connection = match conn {
            Some(c) => c,
            None => {
                let c = tokio::time::timeout(
                    self.redis.timeout.max(Duration::from_millis(200)),
                    client.get_multiplexed_async_connection_with_config(&crate::cache::l2::connection_config(
                        self.redis.timeout,
                    )),
                )
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| e.to_string())?;
                conn.insert(c)
            }
        };
        if degraded {
            // Probe before leaving the fallback; counts made meanwhile were local.
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(connection);
            tokio::time::timeout(self.redis.timeout, ping)
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            for (_, g) in &limiters {
                let _ = g.take_deltas(now);
                g.set_degraded(false);
            }
            return Ok(());
        }
        let mut keys = Vec::new();
        let mut deltas = Vec::new();
        for (route, g) in &limiters {
            for d in g.take_deltas(now) {
                keys.push(names.get(l2, route, d.window, &d.key));
                deltas.push((*g, d));
            }
        }
        if deltas.is_empty() {
            return Ok(());
        }
        // EVAL with the script text: a few hundred bytes every sync, no script cache to miss.
        let mut eval = redis::cmd("EVAL");
        eval.arg(SCRIPT).arg(keys.len());
        for k in &keys {
            eval.arg(k);
        }
        eval.arg(2_000);
        for (_, d) in &deltas {
            eval.arg(d.pending);
        }
        let totals: Vec<u64> = tokio::time::timeout(self.redis.timeout, eval.query_async(connection))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        for ((g, d), total) in deltas.iter().zip(totals) {
            g.settle(&d.key, d.window, total, d.pending);
        }
        Ok(())
    }

    fn degrade(&self, error: &str, was: &mut bool) {
        let snapshot = self.state.snapshot.load();
        for r in &snapshot.routes {
            if let Some(Limiter::Global(g)) = r.limiter.as_deref() {
                g.set_degraded(true);
            }
        }
        self.fallback.set(1);
        if !*was {
            self.fallbacks.inc();
            tracing::warn!(error, "redis unavailable: global rate limits fall back to rate / nodes on this gateway");
            *was = true;
        }
    }
}

#[async_trait]
impl BackgroundService for GlobalRateSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // The cache's Redis level: the same server, over TLS with the same CAs when set,
        // and the same key.
        let Some(l2) = self.state.cache.l2.as_deref() else {
            let mut was = false;
            self.degrade("the Redis level could not be set up at start (logged then)", &mut was);
            return;
        };
        let client = l2.client();
        let mut names = Names::default();
        let mut conn = None;
        let mut degraded = false;
        let mut tick = tokio::time::interval(GLOBAL_SYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {}
            }
            match self.round(l2, &client, &mut conn, &mut names).await {
                Ok(()) => {
                    if degraded {
                        tracing::info!("redis back: global rate limits shared again");
                        degraded = false;
                        self.fallback.set(0);
                    }
                }
                Err(e) => {
                    conn = None;
                    self.degrade(&e, &mut degraded);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The names kept for a second are the names `counter_key` gives, for that second only:
    // the next second's are new, and a late delta of the second before is named as its own
    // second's, never as the current one's.
    #[test]
    fn a_seconds_names_are_kept_for_that_second_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("fleet.key"), [7u8; 32]).expect("write key");
        let redis = Redis {
            url: "redis://10.0.0.1:6379".into(),
            timeout: Duration::from_millis(50),
            key_file: Some("fleet.key".into()),
            previous_key_file: None,
            ca: None,
        };
        let l2 = L2::new(&redis, dir.path()).expect("the Redis level");
        let mut names = Names::default();
        let at = |names: &mut Names, w: u64, client: &str| names.get(&l2, "api", w, client);
        assert_eq!(at(&mut names, 100, "a"), l2.counter_key("api", 100, "a"));
        assert_eq!(at(&mut names, 100, "a"), l2.counter_key("api", 100, "a"), "kept");
        assert_eq!(names.by_route.get("api").map(HashMap::len), Some(1));
        assert_eq!(at(&mut names, 101, "b"), l2.counter_key("api", 101, "b"));
        assert_eq!(names.by_route.get("api").map(HashMap::len), Some(1), "the second before forgotten");
        assert_eq!(at(&mut names, 100, "a"), l2.counter_key("api", 100, "a"), "a late delta: its own second");
        assert_ne!(l2.counter_key("api", 100, "a"), l2.counter_key("api", 101, "a"));
        assert_eq!(names.window, 101);
    }
}
