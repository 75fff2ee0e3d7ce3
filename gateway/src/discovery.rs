//! Node-local endpoint discovery: an upstream group with
//! `discovery: {kubernetes: {namespace, service, port}}` takes its endpoints from the
//! Service's EndpointSlices, watched through the API server (the `kube` crate, in-cluster
//! config). Endpoints on this node (`NODE_NAME`) are `local`, the others `remote`; an
//! endpoint gets requests only while it is serving and not terminating. Changes apply to
//! the live snapshot without a reload, and endpoints that keep their address keep their
//! latency estimate and ejection state.
//!
//! An edge node loses its link to the centre now and then: the last endpoints learned stay
//! in use while the API server is unreachable, are persisted in the state directory
//! (`endpoints.json`, beside the last-known-good config), and a gateway that restarts
//! without the API server starts from them. `/-/config` and
//! `edgegate_discovery_stale{upstream}` say when endpoints are not current.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use edgegate_config::{files, Config, DiscoveryPort, Endpoint, KubernetesDiscovery, Locality, Weight};
use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::proto::MetricType;
use serde::{Deserialize, Serialize};

use crate::metrics::family::{ScrapeCollector, Spec};
use crate::state::GatewayState;

/// The environment variable that points discovery at an API server URL instead of the
/// in-cluster one (local runs and tests; no credentials are sent).
pub const API_URL_ENV: &str = "EDGEGATE_KUBE_API";
const STATE_FILE: &str = "endpoints.json";

/// Where a group's endpoints came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Nothing learned yet.
    None,
    /// The API server's current view.
    Api,
    /// The copy persisted by an earlier run (the API server has not answered since start).
    Persisted,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KnownEndpoint {
    pub address: SocketAddr,
    pub local: bool,
}

/// What is known about one discovered group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub source: Source,
    pub endpoints: Vec<KnownEndpoint>,
    /// When the endpoints last changed (ms since the epoch).
    pub updated_ms: u64,
    /// Why the API server is not being heard, while it is not.
    pub error: Option<String>,
}

impl GroupView {
    /// Not the API server's current view: persisted, or the API server unreachable.
    pub fn stale(&self) -> bool {
        self.source != Source::Api || self.error.is_some()
    }
}

#[derive(Serialize, Deserialize, Default)]
struct Persisted {
    groups: BTreeMap<String, PersistedGroup>,
}

impl Persisted {
    /// What `file` holds, or nothing when it is missing, unreadable or not this layout.
    fn read(file: &std::path::Path) -> Persisted {
        files::read(file, files::CONFIG_FILE).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }
}

#[derive(Serialize, Deserialize)]
struct PersistedGroup {
    /// The discovery settings the endpoints were learned with: a group now pointing
    /// elsewhere does not start from another Service's pods.
    service: String,
    endpoints: Vec<KnownEndpoint>,
    updated_ms: u64,
}

fn service_key(d: &KubernetesDiscovery) -> String {
    let port = match &d.port {
        DiscoveryPort::Name(n) => n.clone(),
        DiscoveryPort::Number(n) => n.to_string(),
    };
    format!("{}/{}:{port}", d.namespace, d.service)
}

/// The discovered endpoints of every group, shared by the watchers, snapshot builds and
/// the admin views.
pub struct Discovery {
    groups: Mutex<HashMap<String, GroupView>>,
    state_file: Option<PathBuf>,
    node: Option<String>,
}

impl Discovery {
    /// Starts from the endpoints persisted in `state_dir` for the groups of `config` that
    /// use discovery with the same settings.
    pub fn new(config: &Config, state_dir: Option<&std::path::Path>) -> Discovery {
        let state_file = state_dir.map(|d| d.join(STATE_FILE));
        let persisted = state_file.as_deref().map(Persisted::read).unwrap_or_default();
        let mut groups = HashMap::new();
        for g in &config.upstreams {
            let Some(d) = &g.discovery else { continue };
            let view = match persisted.groups.get(&g.name).filter(|p| p.service == service_key(d)) {
                Some(p) => {
                    tracing::info!(upstream = %g.name, endpoints = p.endpoints.len(), "starting from the endpoints persisted by the last run; the API server's view replaces them when it answers");
                    GroupView {
                        source: Source::Persisted,
                        endpoints: p.endpoints.clone(),
                        updated_ms: p.updated_ms,
                        error: None,
                    }
                }
                None => GroupView { source: Source::None, endpoints: Vec::new(), updated_ms: 0, error: None },
            };
            groups.insert(g.name.clone(), view);
        }
        let node = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty());
        Discovery { groups: Mutex::new(groups), state_file, node }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, GroupView>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts the discovered endpoints into the groups of `config` that use discovery
    /// (before a snapshot is built from it).
    pub fn apply(&self, config: &mut Config) {
        let groups = self.lock();
        for g in &mut config.upstreams {
            if g.discovery.is_none() {
                continue;
            }
            g.endpoints = groups
                .get(&g.name)
                .map(|v| {
                    v.endpoints
                        .iter()
                        .map(|e| Endpoint {
                            address: e.address,
                            locality: if e.local { Locality::Local } else { Locality::Remote },
                            weight: Weight::DEFAULT,
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
    }

    /// Every discovered group, for `/-/config`.
    pub fn view(&self) -> BTreeMap<String, GroupView> {
        self.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Records the API server's view of `group`; true when the endpoints changed.
    fn update(&self, group: &str, service: &str, endpoints: Vec<KnownEndpoint>) -> bool {
        let changed = {
            let mut groups = self.lock();
            let view = groups.entry(group.to_owned()).or_insert(GroupView {
                source: Source::None,
                endpoints: Vec::new(),
                updated_ms: 0,
                error: None,
            });
            let changed = view.endpoints != endpoints || view.source != Source::Api;
            if view.error.take().is_some() {
                tracing::info!(upstream = group, "the API server answers again; endpoints are current");
            }
            if changed {
                view.endpoints = endpoints;
                view.source = Source::Api;
                view.updated_ms = crate::audit::now_ms();
            }
            changed
        };
        if changed {
            self.persist(group, service);
        }
        changed
    }

    fn failed(&self, group: &str, error: String) {
        let mut groups = self.lock();
        if let Some(view) = groups.get_mut(group) {
            if view.error.as_deref() != Some(error.as_str()) {
                tracing::warn!(upstream = group, %error, endpoints = view.endpoints.len(), "cannot reach the API server; serving the last known endpoints");
                view.error = Some(error);
            }
        }
    }

    /// Writes the known endpoints of every group (atomically: a temporary file renamed).
    fn persist(&self, group: &str, service: &str) {
        let Some(file) = &self.state_file else { return };
        let mut persisted = Persisted::read(file);
        if let Some(view) = self.lock().get(group) {
            persisted.groups.insert(
                group.to_owned(),
                PersistedGroup {
                    service: service.to_owned(),
                    endpoints: view.endpoints.clone(),
                    updated_ms: view.updated_ms,
                },
            );
        }
        let write = || -> std::io::Result<()> {
            let tmp = file.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&persisted)?)?;
            std::fs::rename(&tmp, file)
        };
        if let Err(e) = write() {
            tracing::warn!(file = %file.display(), error = %e, "cannot persist the discovered endpoints; a restart without the API server would start without them");
        }
    }

    /// Endpoints of `slices` for `d`: serving, not terminating, with the port resolved;
    /// on this node → local. Sorted, so an unchanged set compares equal.
    pub fn endpoints_of(
        &self,
        d: &KubernetesDiscovery,
        slices: &BTreeMap<String, EndpointSlice>,
    ) -> Vec<KnownEndpoint> {
        let mut out: Vec<KnownEndpoint> = Vec::new();
        for slice in slices.values() {
            if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
                continue;
            }
            let port = match &d.port {
                DiscoveryPort::Number(n) => Some(*n),
                DiscoveryPort::Name(name) => slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok()),
            };
            let Some(port) = port else { continue };
            for e in &slice.endpoints {
                let c = e.conditions.as_ref();
                // Unknown readiness counts as ready (the API's convention); serving
                // defaults to ready; terminating endpoints get no new requests.
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                if !serving || terminating {
                    continue;
                }
                let Some(ip) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
                let local = match (&self.node, &e.node_name) {
                    (Some(node), Some(at)) => node == at,
                    // Without NODE_NAME every endpoint is as near as any other.
                    (None, _) => true,
                    (Some(_), None) => false,
                };
                let address = SocketAddr::new(ip, port);
                if !out.iter().any(|k| k.address == address) {
                    out.push(KnownEndpoint { address, local });
                }
            }
        }
        out.sort_by_key(|e| (!e.local, e.address));
        out
    }
}

/// Watches the EndpointSlices of every discovered group of the serving config, and
/// rebuilds the snapshot when a group's endpoints change.
pub struct DiscoveryService {
    pub state: Arc<GatewayState>,
}

async fn api_client() -> Result<kube::Client, String> {
    let config = match std::env::var(API_URL_ENV) {
        Ok(url) => kube::Config::new(url.parse().map_err(|e| format!("{API_URL_ENV}={url}: {e}"))?),
        Err(_) => kube::Config::incluster().map_err(|e| format!("in-cluster config: {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("API client: {e}"))
}

#[async_trait]
impl BackgroundService for DiscoveryService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _running = crate::state::BackgroundGuard::new(&self.state);
        // One watcher per discovered group, started and stopped as reloads add and
        // remove groups or change what they watch.
        let mut watchers: HashMap<String, (KubernetesDiscovery, tokio::task::JoinHandle<()>)> = HashMap::new();
        let mut client_error_said = false;
        let mut client: Option<kube::Client> = None;
        loop {
            let wanted: Vec<(String, KubernetesDiscovery)> = self
                .state
                .snapshot
                .load()
                .config
                .upstreams
                .iter()
                .filter_map(|g| g.discovery.clone().map(|d| (g.name.clone(), d)))
                .collect();
            watchers.retain(|name, (d, task)| {
                let keep = wanted.iter().any(|(n, w)| n == name && w == d);
                if !keep {
                    task.abort();
                }
                keep
            });
            if !wanted.is_empty() && client.is_none() {
                match api_client().await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        if !client_error_said {
                            tracing::error!(error = %e, "endpoint discovery cannot reach the API server; serving the last known endpoints");
                            client_error_said = true;
                        }
                        for (name, _) in &wanted {
                            self.state.discovery.failed(name, e.clone());
                        }
                    }
                }
            }
            if let Some(c) = &client {
                for (name, d) in wanted {
                    if let std::collections::hash_map::Entry::Vacant(slot) = watchers.entry(name.clone()) {
                        let task = tokio::spawn(watch_group(Arc::downgrade(&self.state), c.clone(), name, d.clone()));
                        slot.insert((d, task));
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        for (_, (_, task)) in watchers {
            task.abort();
        }
    }
}

async fn watch_group(state: Weak<GatewayState>, client: kube::Client, group: String, d: KubernetesDiscovery) {
    let api: kube::Api<EndpointSlice> = kube::Api::namespaced(client, &d.namespace);
    let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={}", d.service));
    let service = service_key(&d);
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut initial: Option<BTreeMap<String, EndpointSlice>> = None;
    while let Some(event) = stream.next().await {
        let Some(state) = state.upgrade() else { return };
        let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
        let settled = match event {
            Err(e) => {
                state.discovery.failed(&group, e.to_string());
                false
            }
            Ok(Event::Init) => {
                initial = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(s)) => {
                initial.get_or_insert_with(BTreeMap::new).insert(name(&s), s);
                false
            }
            Ok(Event::InitDone) => {
                slices = initial.take().unwrap_or_default();
                true
            }
            Ok(Event::Apply(s)) => {
                slices.insert(name(&s), s);
                true
            }
            Ok(Event::Delete(s)) => {
                slices.remove(&name(&s));
                true
            }
        };
        if settled {
            let endpoints = state.discovery.endpoints_of(&d, &slices);
            let (local, total) = (endpoints.iter().filter(|e| e.local).count(), endpoints.len());
            if state.discovery.update(&group, &service, endpoints) {
                tracing::info!(upstream = %group, local, remote = total - local, "discovered endpoints changed");
                state.rebuild_for_discovery();
            }
        }
    }
}

static SPECS: [Spec; 2] = [
    Spec {
        name: "edgegate_discovery_endpoints",
        help: "Endpoints a discovered upstream group has, by locality",
        kind: MetricType::GAUGE,
        labels: &["upstream", "locality"],
    },
    Spec {
        name: "edgegate_discovery_stale",
        help: "1 while a discovered group's endpoints are not the API server's current view (persisted by an earlier run, or the API server unreachable)",
        kind: MetricType::GAUGE,
        labels: &["upstream"],
    },
];

pub fn collector(state: Weak<GatewayState>) -> ScrapeCollector {
    ScrapeCollector::new(&SPECS, move || {
        let Some(state) = state.upgrade() else { return Vec::new() };
        let mut endpoints = SPECS[0].family();
        let mut stale = SPECS[1].family();
        for (name, view) in state.discovery.view() {
            let local = view.endpoints.iter().filter(|e| e.local).count();
            endpoints.push(&[&name, "local"], local as f64);
            endpoints.push(&[&name, "remote"], (view.endpoints.len() - local) as f64);
            stale.push(&[&name], f64::from(u8::from(view.stale())));
        }
        vec![endpoints.finish(), stale.finish()]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery(node: Option<&str>) -> Discovery {
        Discovery { groups: Mutex::default(), state_file: None, node: node.map(str::to_owned) }
    }

    fn slice(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).expect("an EndpointSlice")
    }

    /// What the API server returns is not trusted to be sane: slices of other address
    /// types, addresses that are not IPs, ports that are missing, unnamed or out of range,
    /// and duplicates are dropped rather than turned into endpoints.
    #[test]
    fn hostile_or_odd_slices_yield_only_sound_endpoints() {
        let d = KubernetesDiscovery {
            namespace: "gov".into(),
            service: "permits".into(),
            port: DiscoveryPort::Name("http".into()),
        };
        let ep = |addr: &str, node: &str| serde_json::json!({"addresses": [addr], "nodeName": node});
        let mut slices = BTreeMap::new();
        for (name, s) in [
            (
                "good",
                serde_json::json!({"metadata": {"name": "good"}, "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [ep("10.0.0.1", "edge-1"), ep("10.0.0.1", "edge-1"), ep("10.0.0.2", "edge-2")]}),
            ),
            (
                "fqdn",
                serde_json::json!({"metadata": {"name": "fqdn"}, "addressType": "FQDN",
                "ports": [{"name": "http", "port": 8080}], "endpoints": [ep("evil.example", "edge-1")]}),
            ),
            (
                "not-ip",
                serde_json::json!({"metadata": {"name": "not-ip"}, "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [ep("10.0.0.3:80/../x", "edge-1"), ep("", "edge-1"), {"addresses": [], "nodeName": "edge-1"}]}),
            ),
            (
                "no-port",
                serde_json::json!({"metadata": {"name": "no-port"}, "addressType": "IPv4",
                "ports": [{"name": "metrics", "port": 9090}, {"port": 8080}], "endpoints": [ep("10.0.0.4", "edge-1")]}),
            ),
            (
                "big-port",
                serde_json::json!({"metadata": {"name": "big-port"}, "addressType": "IPv4",
                "ports": [{"name": "http", "port": 70000}], "endpoints": [ep("10.0.0.5", "edge-1")]}),
            ),
            (
                "v6",
                serde_json::json!({"metadata": {"name": "v6"}, "addressType": "IPv6",
                "ports": [{"name": "http", "port": 8080}], "endpoints": [ep("fd00::7", "edge-2")]}),
            ),
        ] {
            slices.insert(name.to_owned(), slice(s));
        }
        let got = discovery(Some("edge-1")).endpoints_of(&d, &slices);
        let want: Vec<KnownEndpoint> = [("10.0.0.1:8080", true), ("10.0.0.2:8080", false), ("[fd00::7]:8080", false)]
            .iter()
            .map(|(a, local)| KnownEndpoint { address: a.parse().expect("addr"), local: *local })
            .collect();
        assert_eq!(got, want);
        // Without NODE_NAME every endpoint counts as local.
        assert!(discovery(None).endpoints_of(&d, &slices).iter().all(|e| e.local));
    }
}
