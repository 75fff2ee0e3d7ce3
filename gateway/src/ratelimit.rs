//! The fleet-wide rate budgets' link to Redis: every [`GLOBAL_SYNC`] this background
//! service takes each global limiter's counts since the last sync, adds them to the
//! window's totals in Redis with one atomic script (one round trip for every key), and
//! hands each total back so the limiter can compute its new share. When Redis cannot be
//! reached the limiters fall back to their local `rate / nodes` limit — never to 500s,
//! never to no limit — `edgegate_rate_limit_fallback` says so (and
//! `edgegate_rate_limit_fallbacks_total` counts the episodes), and the next successful
//! round trip ends it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use edgegate_config::Redis;
use edgegate_filters::ratelimit::{Limiter, GLOBAL_SYNC};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::{IntCounter, IntGauge};

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
        client: &redis::Client,
        conn: &mut Option<redis::aio::MultiplexedConnection>,
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
                    client.get_multiplexed_async_connection(),
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
                keys.push(format!("edgegate:rl:{route}:{}:{}", d.window, d.key));
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
        // The cache's Redis level: the same server, over TLS with the same CAs when set.
        let Some(client) = self.state.cache.l2.as_ref().map(|l2| l2.client()) else {
            let mut was = false;
            self.degrade("the Redis level could not be set up at start (logged then)", &mut was);
            return;
        };
        let mut conn = None;
        let mut degraded = false;
        let mut tick = tokio::time::interval(GLOBAL_SYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {}
            }
            match self.round(&client, &mut conn).await {
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
