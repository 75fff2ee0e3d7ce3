//! Raw serde types that mirror the YAML file one to one.
//!
//! Each section (every listener, upstream and route) is deserialised on its own, so one
//! bad entry does not hide the errors of the others: the operator sees every problem in
//! one `edgegate check` run. Nothing here is semantic; `validate` turns these into the
//! runtime types.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_yaml::Value;

use crate::error::FieldError;

/// A duration written the way operators write them: `500ms`, `2s`, `10m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDuration(pub Duration);

impl schemars::JsonSchema for RawDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A number with a unit: 500ms, 2s, 10m, 1h, 180d",
            "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*[a-zA-Zµ]+(\\s*[0-9]+(\\.[0-9]+)?\\s*[a-zA-Zµ]+)*\\s*$",
            "examples": ["500ms", "2s", "10m"]
        })
    }
}

/// The longest duration any setting may be (100 years): every deadline and window the
/// gateway computes from one stays within what its clocks can hold.
pub const MOST_DURATION: std::time::Duration = std::time::Duration::from_secs(100 * 36_525 * 864);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        const FORMS: &str = "a number with a unit: 500ms, 2s, 10m, 1h, 180d";
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawDuration;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a duration, {FORMS}")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawDuration, E> {
                let d = humantime::parse_duration(text.trim())
                    .map_err(|e| E::custom(format!("invalid duration {text:?}: {e}; write {FORMS}")))?;
                // A config `check` accepted with `18446744073709551615s` in a timeout made
                // every connection's deadline overflow the clock (a panic per connection).
                if d > MOST_DURATION {
                    return Err(E::custom(format!(
                        "invalid duration {text:?}: longer than 100 years, the longest any setting may be"
                    )));
                }
                Ok(RawDuration(d))
            }

            // A bare number has no unit: seconds or milliseconds? Say so rather than guess.
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RawDuration, E> {
                Err(E::custom(format!("{n} has no unit; write {FORMS} (e.g. {n}s or {n}ms)")))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RawDuration, E> {
                Err(E::custom(format!("{n} has no unit; write {FORMS}")))
            }

            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<RawDuration, E> {
                Err(E::custom(format!("{n} has no unit; write {FORMS}")))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub address: String,
    /// Plain-text listener that only receives traffic which arrived over TLS at a hop in
    /// front of edgegate (a node-local TLS terminator). Counts as encrypted for policy.
    pub behind_tls: Option<bool>,
    pub tls: Option<RawTls>,
    /// Answer every request with a permanent redirect to HTTPS on this port.
    pub redirect_https: Option<u16>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Certificate/key pairs; SNI picks by the names in each certificate, the first is
    /// the default for clients without SNI (or with an unknown name).
    pub certificates: Vec<RawCertificate>,
    /// `Strict-Transport-Security` max-age; absent for no header.
    pub hsts: Option<RawDuration>,
    /// Resume sessions from tickets the gateway encrypts under keys it makes at start and
    /// rotates every 6 h (default true).
    pub session_tickets: Option<bool>,
    /// Sessions held in memory for clients that resume by session id (default 20000; 0 for
    /// none).
    pub session_cache: Option<u64>,
    /// File of secrets the fleet shares for its tickets (one per line, the first seals), so
    /// that a ticket resumes on every node and across restarts; read at start.
    pub session_ticket_keys: Option<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: Option<String>,
    /// File holding the bearer token that mutating admin endpoints require.
    pub token_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    /// Endpoints learned from the cluster instead of listed.
    pub discovery: Option<RawDiscovery>,
    #[serde(default)]
    pub balancer: RawBalancer,
    pub health: Option<RawHealth>,
    #[serde(default)]
    pub outlier: RawOutlier,
    #[serde(default)]
    pub retry: RawRetry,
    pub tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    pub kubernetes: Option<RawKubernetesDiscovery>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetesDiscovery {
    pub namespace: Option<String>,
    pub service: Option<String>,
    /// The Service port's name, or the pods' port number.
    pub port: Option<RawPort>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum RawPort {
    Number(u32),
    Name(String),
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// Server name sent and verified; defaults to none (IP endpoints).
    pub sni: Option<String>,
    /// PEM bundle of CAs to trust instead of the system roots.
    pub ca: Option<String>,
    /// Verify the upstream's certificate (default true).
    pub verify: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawPolicy {
    #[default]
    PeakEwma,
    RoundRobin,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBalancer {
    #[serde(default)]
    pub policy: RawPolicy,
    /// Peak-EWMA decay time constant.
    pub decay: Option<RawDuration>,
    /// Cost assumed for an endpoint with no observations yet.
    pub default_rtt: Option<RawDuration>,
    /// Use remote endpoints when every local one's load exceeds the best remote's
    /// by this factor.
    pub remote_factor: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: String,
    pub interval: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_failures: Option<u32>,
    pub base_ejection_time: Option<RawDuration>,
    pub max_ejection_time: Option<RawDuration>,
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Retries after the first attempt; 0 turns retries off.
    pub attempts: Option<u32>,
    /// Statuses that are retried for idempotent requests.
    pub on_status: Option<Vec<u16>>,
    /// Retries allowed as a fraction of requests over the budget window.
    pub budget_ratio: Option<f64>,
    /// Retries always allowed per second, whatever the ratio says.
    pub min_per_second: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawLocality {
    #[default]
    Local,
    Remote,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub address: String,
    #[serde(default)]
    pub locality: RawLocality,
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub path: Option<String>,
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP connect to the upstream endpoint.
    pub connect: Option<RawDuration>,
    /// Longest wait for the upstream to send (response header or the next body chunk).
    pub read: Option<RawDuration>,
    /// Longest wait to write the request to the upstream.
    pub write: Option<RawDuration>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    pub upstream: String,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Rego decision that must be true, e.g. `data.government.digital.allow`.
    pub policy: Option<String>,
    /// Explicitly open to everyone: no identity, no policy.
    pub public: Option<bool>,
    pub identity: Option<RawIdentityMode>,
    /// `input.action` for the policy; default `service_request`.
    pub action: Option<String>,
    pub cache: Option<RawRouteCache>,
    /// How the request path may look on this route.
    pub path: Option<RawPathRules>,
    /// Overrides of the global `limits` for this route.
    pub limits: Option<RawLimits>,
    pub rate_limit: Option<RawRateLimit>,
    /// Most requests this route has in flight at once; more get 503.
    pub max_inflight: Option<usize>,
    /// Proxy WebSocket upgrades (`Upgrade: websocket` on a GET); refused with 400 otherwise.
    pub websocket: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Requests per second per key.
    pub rate: u32,
    /// Requests at once above the rate; default: `rate`.
    pub burst: Option<u32>,
    /// One budget for the whole fleet, shared through `cache.redis`.
    pub global: Option<bool>,
    /// Gateways sharing a global budget: each starts from `rate / nodes`, and falls back to
    /// that local limit while Redis is unavailable.
    pub nodes: Option<u32>,
    /// `client_ip` (default), `user`, or `header:NAME`.
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest request body, e.g. `1MiB`; larger ones get 413.
    pub body: Option<String>,
    /// Largest request head (request line and headers), e.g. `16KiB`; larger ones get 431.
    /// Global only.
    pub header_bytes: Option<String>,
    /// Most header lines in a request; more get 431. Global only.
    pub headers: Option<usize>,
    /// How long an idle keep-alive client connection is kept, e.g. `60s`. Global only.
    pub keepalive_timeout: Option<RawDuration>,
    /// Requests served on one client connection before it is closed. Global only.
    pub keepalive_requests: Option<u32>,
    /// Longest time a client may take to send a whole request head, e.g. `10s`. Global only.
    pub head_timeout: Option<RawDuration>,
    /// Most open client connections per listener; new ones above it are closed at once.
    /// Global only.
    pub max_connections: Option<usize>,
    /// Most open connections from one client address (IPv6: its /64); `trusted_proxies` are
    /// exempt. Global only.
    pub max_connections_per_client: Option<usize>,
    /// New connections a second from one client address (IPv6: its /64), e.g.
    /// `{rate: 100, burst: 500}`; `trusted_proxies` are exempt. Global only.
    pub new_connections_per_client: Option<RawClientRate>,
    /// Slowest request body accepted, in bytes per second (`1KiB`); `0` turns it off.
    /// Global only.
    pub min_body_rate: Option<String>,
    /// Longest wait for a client to take any more of a response, e.g. `60s`. Global only.
    pub send_timeout: Option<RawDuration>,
    /// Most responses at once whose client has left a write waiting for over a second; past
    /// it the one stalled longest is cut off. Global only.
    pub max_stalled_responses: Option<usize>,
    /// Most concurrent HTTP/2 streams a client may open on one connection. Global only.
    pub h2_max_concurrent_streams: Option<u32>,
    /// Longest a request waits for its worker's turn to check a bearer token, e.g. `5s`;
    /// then 503 `try_again`. Global only.
    pub token_check_wait: Option<RawDuration>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPathRules {
    /// Accept `%2F` and `%5C` in the path (kept encoded, never treated as separators), for
    /// pods that use them; refused with 400 otherwise.
    pub allow_encoded_slash: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    /// Freshness when the upstream gives no `max-age`/`s-maxage`.
    pub ttl: RawDuration,
    /// Request headers whose values are part of the key (besides Accept-Encoding).
    pub vary: Option<Vec<String>>,
    /// Cache answers to requests that carry `Authorization` (the answer is the same for
    /// every caller).
    pub public: Option<bool>,
    /// After expiry, keep serving the stale answer this long when the upstream fails.
    pub stale_if_error: Option<RawDuration>,
    /// After expiry, serve the stale answer this long while refreshing it in the background.
    pub stale_while_revalidate: Option<RawDuration>,
    /// Key answers by the verified user (`sub`) as well: per-citizen answers.
    pub per_user: Option<bool>,
    /// A client's `Cache-Control: no-cache` skips the lookup (the answer is still stored).
    pub honour_client_no_cache: Option<bool>,
    /// Store answers that carry `Set-Cookie` (off by default: cookies are per client).
    pub cache_set_cookie: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Memory budget for cached responses, e.g. `256MiB`.
    pub memory: Option<String>,
    pub redis: Option<RawRedis>,
    /// Name of the header that reports HIT/MISS/STALE; default `X-Cache`.
    pub status_header: Option<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://host:port[/db]`
    pub url: String,
    /// Longest wait for one Redis command before giving up on it.
    pub timeout: Option<RawDuration>,
    /// A file holding the fleet's shared secret (at least 32 bytes): every entry and purge
    /// a gateway writes to Redis carries a MAC under it, and nothing without a valid one is
    /// served or applied. Required unless `url` names a loopback address.
    pub key_file: Option<String>,
    /// The key before `key_file`, during a rotation: entries and purges sealed under it are
    /// still served and applied; nothing new is sealed under it.
    pub previous_key_file: Option<String>,
    /// With a `rediss://` URL: a PEM bundle of the CAs that may sign Redis's certificate
    /// (the system's roots when absent).
    pub ca: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawIdentityMode {
    Required,
    Optional,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicies {
    pub dir: String,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub jwt: Option<RawJwt>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub issuer: String,
    pub audience: String,
    /// JWKS file, relative to the config file's directory.
    pub keys: String,
    pub role_claim: Option<String>,
    pub leeway: Option<RawDuration>,
    /// Tokens checked a second per client address (IPv6: per /64) that the gateway has not
    /// verified recently; default `{rate: 50, burst: 1000}`.
    pub new_tokens_per_client: Option<RawClientRate>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawClientRate {
    /// A second, sustained.
    pub rate: u32,
    /// At once; default `4 × rate`.
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Removed: whether audit works is now the sink's health, not a setting.
    pub enabled: Option<bool>,
    /// The SQLite file of this node's audit log; audit is on when it is set.
    pub db: Option<String>,
    /// This node's name in its records; default `$NODE_NAME`, else the host name.
    pub node: Option<String>,
    /// How long records are kept, e.g. `180d`.
    pub retention: Option<RawDuration>,
    /// Most the log may hold on disk, e.g. `10GiB`: past it the oldest records go (only
    /// those the collector acknowledged, when forwarding).
    pub max_size: Option<String>,
    /// Ed25519 private key (PKCS#8 PEM) that signs checkpoints.
    pub signing_key: Option<String>,
    /// A checkpoint after this many records…
    pub checkpoint_records: Option<u64>,
    /// …or this long after the last one, whichever comes first.
    pub checkpoint_interval: Option<RawDuration>,
    /// How long a record waits at most for others to share its commit, e.g. `100ms`
    /// (at most `5s`).
    pub commit_interval: Option<RawDuration>,
    /// How often the gateway verifies the records appended to its log since its last check, e.g. `1h`.
    pub verify_interval: Option<RawDuration>,
    /// How often it walks the whole chain again (and at start), e.g. `30d`.
    pub verify_full_interval: Option<RawDuration>,
    /// SQLite `synchronous`: `full` (default) or `normal`.
    pub synchronous: Option<String>,
    /// What happens to citizen requests when the sink is not accepting: `deny` (default) or `allow`.
    pub on_failure: Option<String>,
    pub fields: Option<RawAuditFields>,
    pub forward: Option<RawAuditForward>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuditFields {
    /// `redact` (default: parameter names kept, values replaced) or `keep`.
    pub query: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuditForward {
    /// The central collector: an HTTP(S) endpoint taking gzip newline-delimited JSON.
    pub url: Option<String>,
    /// Most records per request.
    pub batch: Option<usize>,
    /// Pause between sends when caught up.
    pub interval: Option<RawDuration>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub threads: Option<usize>,
    /// Tokio work stealing between the workers (default false: each worker serves the
    /// connections handed to it, with its own I/O driver and pod connections).
    pub work_stealing: Option<bool>,
    /// Threads of their own for the TLS listeners' handshakes (0: on the workers).
    pub tls_handshake_threads: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub grace_period: Option<RawDuration>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub access_log: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// Share of the traces edgegate starts that are marked sampled, 0.0–1.0 (default 0).
    pub sample_ratio: Option<f64>,
    pub otlp: Option<RawOtlp>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://otel-collector:4318/v1/traces`.
    pub endpoint: Option<String>,
    /// Most spans per export request.
    pub batch: Option<usize>,
    /// How often queued spans are sent.
    pub interval: Option<RawDuration>,
}

/// The whole file, section by section. Entries that failed to deserialise are absent;
/// their errors are in [`RawConfig::parse`]'s error list.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    pub listeners: Vec<(usize, RawListener)>,
    /// How many listener entries the file had, including ones that did not deserialise.
    pub listener_entries: usize,
    pub admin: RawAdmin,
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Upstream names whose body did not deserialise: routes naming them are not
    /// reported a second time as "unknown upstream".
    pub broken_upstreams: BTreeSet<String>,
    pub routes: Vec<(usize, RawRoute)>,
    pub runtime: RawRuntime,
    pub shutdown: RawShutdown,
    pub logging: RawLogging,
    pub tracing: RawTracing,
    pub policies: Option<RawPolicies>,
    pub identity: RawIdentity,
    pub audit: RawAudit,
    pub cache: RawCache,
    /// Peers whose `X-Forwarded-For` is believed, as CIDRs (`10.0.0.0/8`) or addresses.
    pub trusted_proxies: Vec<String>,
    pub limits: RawLimits,
}

/// The file as one typed document; see [`RawConfig::parse`].
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawFile {
    listeners: Vec<RawListener>,
    admin: Option<RawAdmin>,
    upstreams: Option<BTreeMap<String, RawUpstream>>,
    routes: Option<Vec<RawRoute>>,
    runtime: Option<RawRuntime>,
    shutdown: Option<RawShutdown>,
    logging: Option<RawLogging>,
    tracing: Option<RawTracing>,
    policies: Option<RawPolicies>,
    identity: Option<RawIdentity>,
    audit: Option<RawAudit>,
    cache: Option<RawCache>,
    trusted_proxies: Option<Vec<String>>,
    limits: Option<RawLimits>,
}

impl From<RawFile> for RawConfig {
    fn from(f: RawFile) -> RawConfig {
        RawConfig {
            listener_entries: f.listeners.len(),
            listeners: f.listeners.into_iter().enumerate().collect(),
            admin: f.admin.unwrap_or_default(),
            upstreams: f.upstreams.unwrap_or_default(),
            broken_upstreams: BTreeSet::new(),
            routes: f.routes.unwrap_or_default().into_iter().enumerate().collect(),
            runtime: f.runtime.unwrap_or_default(),
            shutdown: f.shutdown.unwrap_or_default(),
            logging: f.logging.unwrap_or_default(),
            tracing: f.tracing.unwrap_or_default(),
            policies: f.policies,
            identity: f.identity.unwrap_or_default(),
            audit: f.audit.unwrap_or_default(),
            cache: f.cache.unwrap_or_default(),
            trusted_proxies: f.trusted_proxies.unwrap_or_default(),
            limits: f.limits.unwrap_or_default(),
        }
    }
}

const TOP_LEVEL: &[&str] = &[
    "listeners",
    "admin",
    "upstreams",
    "routes",
    "runtime",
    "shutdown",
    "logging",
    "tracing",
    "policies",
    "identity",
    "audit",
    "cache",
    "trusted_proxies",
    "limits",
];

impl RawConfig {
    /// Parses YAML text into the raw sections. Returns what did parse together with
    /// every structural error (unknown fields, wrong types) and its field path, so
    /// validation can add its findings about the healthy parts. Only a file that is not
    /// YAML at all, or not a mapping, fails outright.
    pub fn parse(text: &str) -> Result<(RawConfig, Vec<FieldError>), Vec<FieldError>> {
        // Fast path: a file that deserialises in one typed pass needs no per-section
        // error collection, and skipping the intermediate `Value` tree roughly halves
        // the parse time of a large config (see docs/benchmarks.md, reload).
        if let Ok(file) = serde_yaml::from_str::<RawFile>(text) {
            return Ok((file.into(), Vec::new()));
        }
        let root: Value =
            serde_yaml::from_str(text).map_err(|e| vec![FieldError::new("", format!("YAML syntax: {e}"))])?;
        let mut map = match root {
            Value::Mapping(m) => m,
            Value::Null => return Err(vec![FieldError::new("", "the config file is empty")]),
            other => {
                return Err(vec![FieldError::new(
                    "",
                    format!("expected a mapping at the top level, found {}", kind(&other)),
                )])
            }
        };
        let mut errors = Vec::new();
        let mut raw = RawConfig::default();

        for key in map.keys() {
            match key.as_str() {
                Some(k) if TOP_LEVEL.contains(&k) => {}
                Some(k) => {
                    errors.push(FieldError::new(k, format!("unknown field, expected one of {}", TOP_LEVEL.join(", "))))
                }
                None => {
                    errors.push(FieldError::new("", format!("top-level keys must be strings, found {}", kind(key))))
                }
            }
        }

        match map.remove("listeners") {
            None => errors.push(FieldError::new("listeners", "missing: at least one listener is required")),
            Some(Value::Sequence(items)) => {
                raw.listener_entries = items.len();
                for (i, item) in items.into_iter().enumerate() {
                    if let Some(l) = section(item, &format!("listeners[{i}]"), &mut errors) {
                        raw.listeners.push((i, l));
                    }
                }
            }
            Some(other) => {
                errors.push(FieldError::new("listeners", format!("expected a list, found {}", kind(&other))))
            }
        }

        match map.remove("upstreams") {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(groups)) => {
                for (name, body) in groups {
                    let Some(name) = name.as_str().map(str::to_owned) else {
                        errors.push(FieldError::new(
                            "upstreams",
                            format!("upstream names must be strings, found {}", kind(&name)),
                        ));
                        continue;
                    };
                    match section(body, &format!("upstreams.{name}"), &mut errors) {
                        Some(u) => {
                            raw.upstreams.insert(name, u);
                        }
                        None => {
                            raw.broken_upstreams.insert(name);
                        }
                    }
                }
            }
            Some(other) => errors.push(FieldError::new(
                "upstreams",
                format!("expected a mapping of name to upstream group, found {}", kind(&other)),
            )),
        }

        match map.remove("routes") {
            None | Some(Value::Null) => {}
            Some(Value::Sequence(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    if let Some(r) = section(item, &format!("routes[{i}]"), &mut errors) {
                        raw.routes.push((i, r));
                    }
                }
            }
            Some(other) => errors.push(FieldError::new("routes", format!("expected a list, found {}", kind(&other)))),
        }

        raw.admin = optional_section(&mut map, "admin", &mut errors);
        raw.runtime = optional_section(&mut map, "runtime", &mut errors);
        raw.shutdown = optional_section(&mut map, "shutdown", &mut errors);
        raw.logging = optional_section(&mut map, "logging", &mut errors);
        raw.tracing = optional_section(&mut map, "tracing", &mut errors);
        raw.policies = match map.remove("policies") {
            None | Some(Value::Null) => None,
            Some(v) => section(v, "policies", &mut errors),
        };
        raw.identity = optional_section(&mut map, "identity", &mut errors);
        raw.audit = optional_section(&mut map, "audit", &mut errors);
        raw.cache = optional_section(&mut map, "cache", &mut errors);
        raw.trusted_proxies = optional_section(&mut map, "trusted_proxies", &mut errors);
        raw.limits = optional_section(&mut map, "limits", &mut errors);
        Ok((raw, errors))
    }
}

fn optional_section<T: DeserializeOwned + Default>(
    map: &mut serde_yaml::Mapping,
    key: &str,
    errors: &mut Vec<FieldError>,
) -> T {
    match map.remove(key) {
        None | Some(Value::Null) => T::default(),
        Some(v) => section(v, key, errors).unwrap_or_default(),
    }
}

/// Deserialises one section, recording a failure under `prefix` + the path inside it.
fn section<T: DeserializeOwned>(value: Value, prefix: &str, errors: &mut Vec<FieldError>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = match (prefix.is_empty(), inner.as_str()) {
                (_, ".") => prefix.to_owned(),
                (true, inner) => inner.to_owned(),
                (false, inner) if inner.starts_with('[') => format!("{prefix}{inner}"),
                (false, inner) => format!("{prefix}.{inner}"),
            };
            errors.push(FieldError::new(path, e.into_inner().to_string()));
            None
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// The config file's JSON Schema (draft 2020-12), generated from these types: what editors
/// use to validate and complete the YAML (`edgegate config schema`). Semantic rules — an
/// upstream a route names must exist, addresses must parse — are `edgegate check`'s.
pub fn json_schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(RawFile)).unwrap_or_default();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("title".into(), "edgegate config".into());
        obj.insert("$id".into(), "https://edgegate.example/schema/config.json".into());
    }
    schema
}
