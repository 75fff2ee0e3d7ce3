//! The live snapshot: the validated config plus everything compiled from it (route
//! table, upstream pools, metric handles). Immutable once built; the request path
//! loads it once per request from [`GatewayState::snapshot`], and a reload replaces it
//! with one `ArcSwap::store`.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use edgegate_config::{Config, RouteTimeouts};

use crate::access::Guards;
use crate::balancer::Pool;
use crate::metrics::{Metrics, RouteMetrics, NO_ROUTE};
use crate::reload::{ConfigStatus, ServingFrom};
use crate::router::{RouteIdx, RouteTable};

/// What the request path needs of one route, resolved at build time.
pub struct RouteInfo {
    pub name: String,
    pub pool: Arc<Pool>,
    /// TLS to the group's endpoints, when the group uses it.
    pub upstream_tls: Option<Arc<crate::tls::PeerTls>>,
    pub timeouts: RouteTimeouts,
    pub metrics: RouteMetrics,
}

pub struct Snapshot {
    pub generation: u64,
    pub config: Config,
    pub table: RouteTable,
    pub routes: Vec<RouteInfo>,
    pub pools: Vec<Arc<Pool>>,
    pub no_route_metrics: RouteMetrics,
    pub guards: Guards,
}

impl Snapshot {
    /// Compiles a validated config. Cannot fail: everything that could go wrong was
    /// rejected by validation. State of objects whose config did not change is carried
    /// over from `previous`: an upstream group defined exactly as before keeps its pool
    /// (and with it the balancer's position and, later, endpoint statistics).
    pub fn build(
        config: Config,
        guards: Guards,
        upstream_tls: std::collections::HashMap<String, Arc<crate::tls::PeerTls>>,
        generation: u64,
        metrics: &Metrics,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let now = crate::balancer::clock::now_ms();
        let pools: Vec<Arc<Pool>> = config
            .upstreams
            .iter()
            .map(|g| {
                let old = previous.and_then(|prev| prev.config.upstream(&g.name).map(|(id, _)| &prev.pools[id.0]));
                match old {
                    Some(old) if old.config == *g => Arc::clone(old),
                    // Changed group: endpoints that kept their address keep their state.
                    _ => Arc::new(Pool::new(g, old.map(|p| &**p), now)),
                }
            })
            .collect();
        // Metric handles of routes that keep their name are reused rather than looked
        // up again in the registry.
        let previous_routes: rustc_hash::FxHashMap<&str, &RouteInfo> =
            previous.map(|p| p.routes.iter().map(|r| (r.name.as_str(), r)).collect()).unwrap_or_default();
        let routes = config
            .routes
            .iter()
            .map(|r| RouteInfo {
                name: r.name.clone(),
                pool: Arc::clone(&pools[r.upstream.0]),
                upstream_tls: upstream_tls.get(&config.upstreams[r.upstream.0].name).cloned(),
                timeouts: r.timeouts,
                metrics: previous_routes
                    .get(r.name.as_str())
                    .map_or_else(|| metrics.route(&r.name), |old| old.metrics.clone()),
            })
            .collect();
        Snapshot {
            generation,
            table: RouteTable::build(&config.routes),
            routes,
            pools,
            no_route_metrics: metrics.route(NO_ROUTE),
            guards,
            config,
        }
    }

    pub fn route(&self, idx: RouteIdx) -> Option<&RouteInfo> {
        self.routes.get(idx as usize)
    }
}

/// Process-wide gateway state shared by the proxy, the admin listener and the
/// control path.
pub struct GatewayState {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    /// The proxy service has its listeners and is accepting.
    pub ready: AtomicBool,
    /// SIGTERM received: finishing in-flight requests, not accepting new connections.
    pub draining: AtomicBool,
    /// Where the serving config came from and how reloads went; control path only.
    status: Mutex<ConfigStatus>,
    /// Bound listener addresses and whether each sits behind a TLS-terminating hop;
    /// fixed for the life of the process.
    pub listeners: Vec<(std::net::SocketAddr, bool)>,
    /// The SNI resolver of each TLS listener, by listener name; reloads swap their
    /// certificate stores.
    pub tls: Vec<(String, Arc<crate::tls::SniResolver>)>,
    /// Cached responses; outlives snapshots (its budget is fixed at start).
    pub cache: Arc<edgegate_filters::cache::ResponseCache>,
    /// Redis as the shared second cache level, when configured (fixed at start).
    pub l2: Option<Arc<crate::l2::L2>>,
    /// The header reporting HIT/MISS/STALE (fixed at start).
    pub cache_header: http::HeaderName,
}

impl GatewayState {
    pub fn new(
        config: Config,
        guards: Guards,
        status: ConfigStatus,
        listeners: Vec<(std::net::SocketAddr, bool)>,
        tls: Vec<(String, Arc<crate::tls::SniResolver>)>,
        upstream_tls: std::collections::HashMap<String, Arc<crate::tls::PeerTls>>,
    ) -> Arc<GatewayState> {
        let metrics = Metrics::new();
        let cache = Arc::new(edgegate_filters::cache::ResponseCache::new(config.cache.memory));
        let cache_header = http::HeaderName::from_bytes(config.cache.status_header.as_bytes())
            .unwrap_or(http::HeaderName::from_static("x-cache"));
        let l2 = config.redis.as_ref().and_then(|r| match crate::l2::L2::new(r) {
            Ok(l2) => Some(Arc::new(l2)),
            Err(e) => {
                tracing::error!(error = %e, "redis cache level disabled");
                None
            }
        });
        let snapshot = Snapshot::build(config, guards, upstream_tls, 1, &metrics, None);
        metrics.config_generation.set(1);
        metrics.config_last_known_good.set(i64::from(status.serving_from == ServingFrom::LastKnownGood));
        Arc::new(GatewayState {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            status: Mutex::new(status),
            listeners,
            tls,
            cache,
            l2,
            cache_header,
        })
    }

    /// Which listener (index into the config's listeners) accepted a connection on
    /// `local`. A wildcard-bound listener matches by port.
    pub fn listener_of(&self, local: std::net::SocketAddr) -> Option<usize> {
        self.listeners.iter().position(|(bound, _)| {
            bound.port() == local.port() && (bound.ip() == local.ip() || bound.ip().is_unspecified())
        })
    }

    /// Whether listener `index` sits behind a TLS-terminating hop.
    pub fn behind_tls(&self, index: usize) -> bool {
        self.listeners.get(index).is_some_and(|(_, behind)| *behind)
    }

    pub fn status(&self) -> MutexGuard<'_, ConfigStatus> {
        // A panic while holding it cannot leave the status half-written in a way that
        // matters more than losing the admin view; keep serving.
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(upstreams: &str) -> Config {
        Config::from_yaml(&format!(
            "listeners: [{{name: p, address: '127.0.0.1:0'}}]\nupstreams:\n{upstreams}routes: [{{name: r, upstream: a}}]\n"
        ))
        .expect("valid")
    }

    #[test]
    fn unchanged_upstream_groups_keep_their_pool_across_builds() {
        let metrics = Metrics::new();
        let first = Snapshot::build(
            config("  a: {endpoints: [{address: '10.0.0.1:80'}, {address: '10.0.0.2:80'}]}\n  b: {endpoints: [{address: '10.0.0.3:80'}]}\n"),
            Guards::default(),
            Default::default(),
            1,
            &metrics,
            None,
        );
        let picked = first.pools[0].pick(0, Default::default());
        let second = Snapshot::build(
            config("  a: {endpoints: [{address: '10.0.0.1:80'}, {address: '10.0.0.2:80'}]}\n  b: {endpoints: [{address: '10.0.0.4:80'}]}\n"),
            Guards::default(),
            Default::default(),
            2,
            &metrics,
            Some(&first),
        );
        assert!(Arc::ptr_eq(&first.pools[0], &second.pools[0]), "group a is unchanged: same pool");
        assert!(!Arc::ptr_eq(&first.pools[1], &second.pools[1]), "group b changed: new pool");
        assert!(Arc::ptr_eq(&second.routes[0].pool, &second.pools[0]));
        assert!(picked.is_some());
        assert_eq!(second.pools[1].endpoints[0].address.to_string(), "10.0.0.4:80");
    }
}
