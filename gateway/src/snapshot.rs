//! The live snapshot: the validated config plus everything compiled from it (route
//! table, upstream pools, metric handles). Immutable once built; the request path
//! loads it once per request from [`GatewayState::snapshot`], and a reload replaces it
//! with one `ArcSwap::store`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use edgegate_config::{Config, RouteTimeouts};

use crate::balancer::Pool;
use crate::metrics::{Metrics, RouteMetrics, NO_ROUTE};
use crate::router::{RouteIdx, RouteTable};

/// What the request path needs of one route, resolved at build time.
pub struct RouteInfo {
    pub name: String,
    pub pool: Arc<Pool>,
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
}

impl Snapshot {
    /// Compiles a validated config. Cannot fail: everything that could go wrong was
    /// rejected by validation.
    pub fn build(config: Config, generation: u64, metrics: &Metrics) -> Snapshot {
        let pools: Vec<Arc<Pool>> = config.upstreams.iter().map(|g| Arc::new(Pool::new(g))).collect();
        let routes = config
            .routes
            .iter()
            .map(|r| RouteInfo {
                name: r.name.clone(),
                pool: Arc::clone(&pools[r.upstream.0]),
                timeouts: r.timeouts,
                metrics: metrics.route(&r.name),
            })
            .collect();
        Snapshot {
            generation,
            table: RouteTable::build(&config.routes),
            routes,
            pools,
            no_route_metrics: metrics.route(NO_ROUTE),
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
}

impl GatewayState {
    pub fn new(config: Config) -> Arc<GatewayState> {
        let metrics = Metrics::new();
        let snapshot = Snapshot::build(config, 1, &metrics);
        metrics.config_generation.set(1);
        Arc::new(GatewayState {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }
}
