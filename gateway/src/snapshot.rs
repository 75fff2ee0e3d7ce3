//! The live snapshot: the validated config plus everything compiled from it (route
//! table, upstream pools, metric handles). Immutable once built; the request path
//! loads it once per request from `GatewayState::snapshot`, and a reload replaces it
//! with one `ArcSwap::store`. Everything that outlives a snapshot is in `state`.

use std::sync::Arc;

use edgegate_config::{Config, Route};

use crate::access::Guards;
use crate::balancer::Pool;
use crate::metrics::{Metrics, RouteMetrics};
use crate::router::{RouteIdx, RouteTable};

/// One route as the request path needs it, resolved at build time: its validated
/// definition, its upstream pool and TLS, its metric handles. The route table's lookup
/// yields its index; there is no second array to keep in step.
pub struct RouteInfo {
    pub spec: Route,
    pub pool: Arc<Pool>,
    /// TLS to the group's endpoints, when the group uses it.
    pub upstream_tls: Option<Arc<crate::tls::PeerTls>>,
    pub metrics: RouteMetrics,
    /// Carried over from the previous snapshot while the route's limit is unchanged, so a
    /// reload does not hand every client a fresh burst.
    pub limiter: Option<Arc<edgegate_filters::ratelimit::Limiter>>,
    /// Requests in flight on this route; one counter for the route's whole life, across
    /// reloads, so a reload cannot open the gate wider than `max_inflight`.
    pub inflight: Arc<std::sync::atomic::AtomicUsize>,
}

impl RouteInfo {
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

pub struct Snapshot {
    pub generation: u64,
    pub config: Config,
    pub table: RouteTable,
    pub routes: Vec<RouteInfo>,
    pub pools: Vec<Arc<Pool>>,
    /// TLS to the endpoints of each upstream group that uses it, by group name.
    pub upstream_tls: std::collections::HashMap<String, Arc<crate::tls::PeerTls>>,
    pub no_route_metrics: RouteMetrics,
    pub guards: Guards,
    /// The config's fingerprint (content hash of the file and what it refers to), as
    /// audit records name the config that served them.
    pub fingerprint: Arc<str>,
    /// `Strict-Transport-Security` of each listener (by index) that sets `tls.hsts`, built
    /// once per snapshot for every response on it.
    pub hsts: Vec<Option<http::HeaderValue>>,
    /// `limits.new_connections_per_client`, carried over while it is unchanged, so a reload
    /// does not hand every client a fresh burst.
    pub new_connections: Arc<edgegate_filters::ratelimit::RateLimiter>,
}

impl Snapshot {
    /// Compiles a validated config. Cannot fail: everything that could go wrong was
    /// rejected by validation. State of objects whose config did not change is carried
    /// over from `previous`: an upstream group defined exactly as before keeps its pool
    /// (and with it the balancer's position and, later, endpoint statistics).
    pub fn build(
        config: Config,
        mut guards: Guards,
        upstream_tls: std::collections::HashMap<String, Arc<crate::tls::PeerTls>>,
        generation: u64,
        metrics: &Metrics,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let now = crate::balancer::clock::now_ms();
        // A token verifier built from the same settings and keys as before is kept: every
        // citizen's remembered token would otherwise be checked again after each reload
        // (18–40 µs each, a CPU spike; and a carrier-grade NAT address's citizens, all at
        // once, would run into its budget of new tokens).
        if let (Some(new), Some(old)) = (&guards.verifier, previous.and_then(|p| p.guards.verifier.as_ref())) {
            if new.same_source(old) {
                guards.verifier = Some(Arc::clone(old));
            }
        }
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
            previous.map(|p| p.routes.iter().map(|r| (r.name(), r)).collect()).unwrap_or_default();
        let routes = config
            .routes
            .iter()
            .map(|r| RouteInfo {
                spec: r.clone(),
                pool: Arc::clone(&pools[r.upstream.0]),
                upstream_tls: upstream_tls.get(&config.upstreams[r.upstream.0].name).cloned(),
                metrics: previous_routes
                    .get(r.name.as_str())
                    .map_or_else(|| metrics.route(&r.name), |old| old.metrics.clone()),
                inflight: previous_routes
                    .get(r.name.as_str())
                    .map_or_else(Arc::default, |old| Arc::clone(&old.inflight)),
                limiter: r.rate_limit.as_ref().map(|rl| {
                    let old = previous_routes.get(r.name.as_str()).and_then(|old| old.limiter.as_ref());
                    match old {
                        Some(l) if l.config() == rl => Arc::clone(l),
                        _ => Arc::new(edgegate_filters::ratelimit::Limiter::new(rl)),
                    }
                }),
            })
            .collect();
        let limit = config.limits.new_connections_per_client;
        let new_connections = match previous.map(|p| &p.new_connections) {
            Some(old) if old.is_per_client(limit) => Arc::clone(old),
            _ => Arc::new(edgegate_filters::ratelimit::RateLimiter::per_client(limit)),
        };
        let hsts = config
            .listeners
            .iter()
            .map(|l| {
                let max_age = l.tls.as_ref()?.hsts?;
                http::HeaderValue::try_from(format!("max-age={}", max_age.as_secs())).ok()
            })
            .collect();
        Snapshot {
            generation,
            table: RouteTable::build(&config.routes),
            routes,
            pools,
            upstream_tls,
            no_route_metrics: metrics.no_route(),
            guards,
            config,
            fingerprint: Arc::from(""),
            hsts,
            new_connections,
        }
    }

    pub fn route(&self, idx: RouteIdx) -> Option<&RouteInfo> {
        self.routes.get(idx as usize)
    }
}

static ROUTE_SPECS: [crate::metrics::family::Spec; 1] = [crate::metrics::family::Spec {
    name: "edgegate_route_inflight_requests",
    help: "Requests past the access checks and not yet finished, by route",
    kind: prometheus::proto::MetricType::GAUGE,
    labels: &["route"],
}];

/// In-flight requests per route of the serving snapshot, read at scrape time from the
/// counters `max_inflight` uses.
pub fn route_inflight_collector(
    state: std::sync::Weak<crate::state::GatewayState>,
) -> crate::metrics::family::ScrapeCollector {
    crate::metrics::family::ScrapeCollector::new(&ROUTE_SPECS, move || {
        let Some(state) = state.upgrade() else { return Vec::new() };
        let mut family = ROUTE_SPECS[0].family();
        for route in &state.snapshot.load().routes {
            family.push(&[route.name()], route.inflight.load(std::sync::atomic::Ordering::Relaxed) as f64);
        }
        vec![family.finish()]
    })
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
        // The limits are the same: each client's rate of new connections goes on.
        assert!(Arc::ptr_eq(&first.new_connections, &second.new_connections));
    }
}
