//! Process state: what lives as long as the process, beside the swapped [`Snapshot`] that
//! lives as long as one config. Grouped by lifetime and owner: the snapshot (request
//! path, swapped on reload), metrics, the process lifecycle, the bound listeners (fixed at
//! start, certificates swapped on reload), the cache (budget fixed at start) and the
//! config status (control path only).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use edgegate_config::Config;

use crate::access::Guards;
use crate::cache::CacheState;
use crate::control::status::{ConfigStatus, ServingFrom};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::tls::{PeerTls, SniResolver};

pub struct GatewayState {
    /// The serving config and everything compiled from it: one load per request.
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub lifecycle: Lifecycle,
    pub listeners: Listeners,
    pub cache: CacheState,
    /// The audit trail; `None` when `audit.db` is not set (then policy sees audit off).
    pub audit: Option<Arc<crate::audit::AuditSink>>,
    /// Spans of sampled requests on their way to the OTLP collector (`tracing.otlp`).
    pub spans: Option<Arc<crate::otlp::SpanQueue>>,
    /// Endpoints of the upstream groups that discover theirs from the cluster.
    pub discovery: crate::discovery::Discovery,
    /// Held while a new snapshot is built and swapped in (reloads and discovery changes),
    /// so one never overwrites the other's.
    pub swap: Mutex<()>,
    /// Where the serving config came from and how reloads went; control path only.
    status: Mutex<ConfigStatus>,
}

/// Where the process is in its life, for `/readyz` and the drain.
#[derive(Default)]
pub struct Lifecycle {
    /// The proxy service has its listeners and is accepting.
    pub ready: AtomicBool,
    /// The reload triggers (file watch, SIGHUP) are in place.
    pub watching: AtomicBool,
    /// SIGTERM received: finishing in-flight requests, not accepting new connections.
    pub draining: AtomicBool,
    /// Background services still running (each holds a [`BackgroundGuard`]); the drain
    /// waits for them before the process exits.
    pub background: AtomicUsize,
}

impl Lifecycle {
    /// Serving, with reloads working: what `/readyz` reports.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.watching.load(Ordering::Acquire)
    }
}

/// Held by a background service for as long as it runs.
pub struct BackgroundGuard(Arc<GatewayState>);

impl BackgroundGuard {
    pub fn new(state: &Arc<GatewayState>) -> BackgroundGuard {
        state.lifecycle.background.fetch_add(1, Ordering::AcqRel);
        BackgroundGuard(Arc::clone(state))
    }
}

impl Drop for BackgroundGuard {
    fn drop(&mut self) {
        self.0.lifecycle.background.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The listeners bound at start.
pub struct Listeners {
    /// Bound address of each configured listener, in config order, and whether it sits
    /// behind a TLS-terminating hop.
    pub bound: Vec<(SocketAddr, bool)>,
    /// The SNI resolver of each TLS listener, by listener name; reloads swap their
    /// certificate stores.
    pub tls: Vec<(String, Arc<SniResolver>)>,
}

impl Listeners {
    /// Which listener (index into the config's listeners) accepted a connection on
    /// `local`. A wildcard-bound listener matches by port.
    pub fn of(&self, local: SocketAddr) -> Option<usize> {
        self.bound.iter().position(|(bound, _)| {
            bound.port() == local.port() && (bound.ip() == local.ip() || bound.ip().is_unspecified())
        })
    }

    /// Whether listener `index` sits behind a TLS-terminating hop.
    pub fn behind_tls(&self, index: usize) -> bool {
        self.bound.get(index).is_some_and(|(_, behind)| *behind)
    }
}

impl GatewayState {
    /// `base` is the config's directory, against which the files it names are read (the
    /// audit log, the Redis key); `None` runs without an audit log.
    pub fn new(
        config: Config,
        guards: Guards,
        status: ConfigStatus,
        listeners: Listeners,
        upstream_tls: std::collections::HashMap<String, Arc<PeerTls>>,
        base: Option<&std::path::Path>,
        state_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<Arc<GatewayState>> {
        let discovery = crate::discovery::Discovery::new(&config, state_dir);
        let mut config = config;
        discovery.apply(&mut config);
        let metrics = Metrics::new();
        let cache = CacheState::new(&config, base.unwrap_or(std::path::Path::new(".")));
        let audit = match base {
            Some(base) => crate::audit::AuditSink::start(&config.audit, base, metrics.registry())?,
            None => None,
        };
        let spans = config.tracing.otlp.as_ref().map(|otlp| {
            crate::otlp::SpanQueue::new(otlp, crate::audit::node_name(config.audit.node.as_deref()), metrics.registry())
        });
        crate::proxy::steps::apply_stalled_limit(&config.limits);
        let mut snapshot = Snapshot::build(config, guards, upstream_tls, 1, &metrics, None);
        snapshot.fingerprint = status.hash.as_str().into();
        metrics.config_generation.set(1);
        metrics.config_last_known_good.set(i64::from(status.serving_from == ServingFrom::LastKnownGood));
        // Until the start config's copy is kept (`Reloader::persist_initial`), writable.
        metrics.state_dir_writable.set(i64::from(status.persist_error.is_none()));
        let state = Arc::new(GatewayState {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            lifecycle: Lifecycle::default(),
            listeners,
            cache,
            audit,
            spans,
            discovery,
            swap: Mutex::new(()),
            status: Mutex::new(status),
        });
        // Families read at scrape time from state that lives here (a weak reference: the
        // registry lives in the state too).
        let registry = state.metrics.registry();
        for collector in [
            crate::balancer::metrics::collector(Arc::downgrade(&state)),
            crate::tls::certificate_collector(Arc::downgrade(&state)),
            crate::cache::metrics::collector(Arc::downgrade(&state)),
            crate::snapshot::route_inflight_collector(Arc::downgrade(&state)),
            crate::metrics::request_collector(Arc::downgrade(&state)),
            crate::discovery::collector(Arc::downgrade(&state)),
            crate::logging::collector(),
            crate::metrics::stalled_collector(),
            crate::metrics::handshake_collector(),
            crate::metrics::token_collector(),
        ] {
            registry.register(Box::new(collector)).expect("metric names are unique");
        }
        Ok(state)
    }

    /// Rebuilds the serving snapshot with the discovered endpoints as they are now: same
    /// config and generation, pools of changed groups rebuilt (endpoints that kept their
    /// address keep their state), every other pool shared.
    pub fn rebuild_for_discovery(&self) {
        let _one_at_a_time = self.swap.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.snapshot.load_full();
        let mut config = previous.config.clone();
        self.discovery.apply(&mut config);
        let mut snapshot = Snapshot::build(
            config,
            previous.guards.clone(),
            previous.upstream_tls.clone(),
            previous.generation,
            &self.metrics,
            Some(&previous),
        );
        snapshot.fingerprint = Arc::clone(&previous.fingerprint);
        self.snapshot.store(Arc::new(snapshot));
    }

    pub fn status(&self) -> MutexGuard<'_, ConfigStatus> {
        // A panic while holding it cannot leave the status half-written in a way that
        // matters more than losing the admin view; keep serving.
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
