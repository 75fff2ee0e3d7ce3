//! The response cache on the request path: [`lookup`] (step 6, after access), [`fill`]
//! (step 9, storing an upstream answer), [`serve`] (writing a hit), [`l2`] (Redis as the
//! shared second level) and [`revalidate`] (background refreshes).

pub mod fill;
pub mod l2;
pub mod lookup;
pub mod metrics;
pub mod revalidate;
pub mod serve;

use std::sync::Arc;

use edgegate_config::Config;
use edgegate_filters::cache::ResponseCache;

/// The cache's process-wide parts: its budget, Redis settings and status header are fixed
/// at start (changing them needs a restart), so they outlive every snapshot.
pub struct CacheState {
    pub responses: Arc<ResponseCache>,
    /// Redis as the shared second level, when configured.
    pub l2: Option<Arc<l2::L2>>,
    /// The header reporting HIT/MISS/STALE.
    pub status_header: http::HeaderName,
    /// Background refreshes' connections to the upstreams (pooled, TLS where configured).
    pub connector: Arc<pingora_core::connectors::http::Connector>,
}

impl CacheState {
    /// `base` is the config's directory (for `cache.redis.key_file`). A Redis level that
    /// cannot be set up (its URL, its key) is left out, said at start: the gateway serves
    /// from memory and the pods (`edgegate check` refuses such a config).
    pub fn new(config: &Config, base: &std::path::Path) -> CacheState {
        let status_header = http::HeaderName::from_bytes(config.cache.status_header.as_bytes())
            .unwrap_or(http::HeaderName::from_static("x-cache"));
        let l2 = config.redis.as_ref().and_then(|r| match l2::L2::new(r, base) {
            Ok(l2) => Some(Arc::new(l2)),
            Err(e) => {
                tracing::error!(error = %e, "redis cache level disabled");
                None
            }
        });
        CacheState {
            responses: Arc::new(ResponseCache::new(config.cache.memory)),
            l2,
            status_header,
            connector: Arc::new(pingora_core::connectors::http::Connector::new(None)),
        }
    }
}

/// Applies purges other gateways publish through Redis, as a background service.
pub struct PurgeFollower {
    pub state: Arc<crate::state::GatewayState>,
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for PurgeFollower {
    async fn start(&self, shutdown: pingora_core::server::ShutdownWatch) {
        let _running = crate::state::BackgroundGuard::new(&self.state);
        if let Some(l2) = &self.state.cache.l2 {
            l2.follow_purges(&self.state.cache.responses, shutdown).await;
        }
    }
}
