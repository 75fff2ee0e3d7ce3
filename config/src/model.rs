//! Validated, immutable runtime configuration. Filters and the gateway only ever see
//! these types; they are built from the raw YAML types by `TryFrom` in `validate`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub admin: Admin,
    /// Sorted by name; routes refer to them by index.
    pub upstreams: Vec<UpstreamGroup>,
    /// In file order.
    pub routes: Vec<Route>,
    pub runtime: Runtime,
    pub shutdown: Shutdown,
    pub logging: Logging,
    pub tracing: Tracing,
    /// Rego policies; required when any route names a decision.
    pub policies: Option<Policies>,
    /// Bearer-token verification; required when any route requires identity.
    pub jwt: Option<Jwt>,
    pub audit: Audit,
    pub cache: CacheBudget,
    /// Shared second level for the response cache; fixed at start.
    pub redis: Option<Redis>,
    /// Peers whose `X-Forwarded-For` is believed; everyone else's is replaced.
    pub trusted_proxies: Vec<Cidr>,
    pub limits: Limits,
}

/// Limits on what a client may send; routes may override them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body in bytes (413 above it).
    pub body: u64,
    /// Largest request head in bytes (431 above it).
    pub header_bytes: usize,
    /// Most header lines in a request (431 above it).
    pub headers: usize,
    /// How long an idle keep-alive client connection is kept open.
    pub keepalive_timeout: Duration,
    /// Requests served on one client connection before it is closed; fixed at start.
    pub keepalive_requests: u32,
    /// Longest time from a connection's accept (first request) or a request's first byte
    /// (later requests) to the end of its head; slower clients are answered 408 and closed.
    pub head_timeout: Duration,
    /// Most open client connections per listener; above it new connections are closed
    /// as soon as they are accepted.
    pub max_connections: usize,
    /// Most open connections from one client address (an IPv6 client by its /64) across all
    /// listeners; addresses in `trusted_proxies` are not limited.
    pub max_connections_per_client: usize,
    /// New connections a second from one client address (an IPv6 client by its /64); above
    /// it a connection is closed as soon as it is accepted, before any handshake;
    /// `trusted_proxies` are not limited.
    pub new_connections_per_client: ClientRate,
    /// Slowest request body accepted, in bytes per second averaged from its first byte,
    /// judged once `head_timeout` has passed; 0: no minimum.
    pub min_body_rate: u64,
    /// Longest wait for a client to take any more of a response (a write that makes no
    /// progress); the request is then aborted and its buffers and pod connection freed.
    pub send_timeout: Duration,
    /// Most responses at once whose client has left a write waiting for over a second; past
    /// it the one stalled longest is cut off.
    pub max_stalled_responses: usize,
    /// Most concurrent HTTP/2 streams per client connection; fixed at start.
    pub h2_max_concurrent_streams: u32,
    /// Longest a request waits for its worker's turn to check a bearer token's signature;
    /// it is then answered 503 `try_again` with `Retry-After: 1`.
    pub token_check_wait: Duration,
}

pub const DEFAULT_BODY_LIMIT: u64 = 1024 * 1024;
pub const DEFAULT_HEADER_BYTES: usize = 16 * 1024;
pub const DEFAULT_HEADERS: usize = 100;
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// As nginx's `keepalive_requests`: closing now and then frees per-connection memory.
pub const DEFAULT_KEEPALIVE_REQUESTS: u32 = 1000;
/// HAProxy's recommended `timeout http-request`: slowloris clients are cut off here.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// At ~40 KiB per idle connection this bounds client connections to ~400 MiB per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// A tenth of `max_connections`: one address cannot take the listener from everyone else,
/// while a carrier-grade NAT address shared by hundreds of phones still fits.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 1000;
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// nginx's `send_timeout`: a client that takes none of a response for this long is cut off.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// A worker checks 10,000–25,000 tokens a second: a request that waited this long is behind
/// a flood it will not catch up with soon, and is better asked to come again.
pub const DEFAULT_TOKEN_CHECK_WAIT: Duration = Duration::from_secs(5);
/// A stalled HTTP/1 response holds up to ~0.4 MiB read from its pod: this bounds what clients
/// that stop reading can make the gateway hold to ~0.4 GiB, where 10,000 connections could
/// hold ~4 GiB.
pub const DEFAULT_MAX_STALLED_RESPONSES: usize = 1000;
/// How long a write to a client may wait before its response counts as stalled.
pub const STALLED_AFTER: Duration = Duration::from_secs(1);
/// Far below any real network (2G moves ~10 KB/s), far above a slow-body attack.
pub const DEFAULT_MIN_BODY_RATE: u64 = 256;

/// An address block, `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `v6::/n`, or a bare address (a block of one).
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<std::net::IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let (net, ip, bits) = match (self.addr, ip) {
            (V4(n), V4(i)) => (u128::from(u32::from(n)) << 96, u128::from(u32::from(i)) << 96, self.prefix),
            (V6(n), V6(i)) => (u128::from(n), u128::from(i), self.prefix),
            (V6(n), V4(i)) => return n.to_ipv4_mapped().is_some() && self.contains(V6(i.to_ipv6_mapped())),
            (V4(_), V6(i)) => return i.to_ipv4_mapped().is_some_and(|v4| self.contains(V4(v4))),
        };
        let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits)) };
        net & mask == ip & mask
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheBudget {
    /// Bytes of cached responses (bodies and headers) kept in memory.
    pub memory: u64,
    /// Lower-case name of the HIT/MISS/STALE header.
    pub status_header: String,
}

/// Redis as a shared second cache level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redis {
    pub url: String,
    pub timeout: Duration,
    /// The fleet's shared secret for the MACs on entries and purges (`None` only for a
    /// Redis on a loopback address).
    pub key_file: Option<PathBuf>,
    /// The key before `key_file` while the fleet rotates: it opens, never seals.
    pub previous_key_file: Option<PathBuf>,
    /// The CAs for Redis's certificate over TLS (`rediss://`); the system's roots when `None`.
    pub ca: Option<PathBuf>,
}

pub const DEFAULT_CACHE_MEMORY: u64 = 64 * 1024 * 1024;

/// A route's response caching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCache {
    pub ttl: Duration,
    /// Lower-case request header names whose values join the key.
    pub vary: Vec<String>,
    pub public: bool,
    /// How long past its freshness an answer may still be served when the upstream
    /// fails or no endpoint is healthy; zero for never.
    pub stale_if_error: Duration,
    /// How long past its freshness an answer is served (`X-Cache: STALE`) while one
    /// background request refreshes it; zero for never.
    pub stale_while_revalidate: Duration,
    /// The verified user's id is part of the key; requests without one bypass the cache.
    pub per_user: bool,
    pub honour_client_no_cache: bool,
    pub cache_set_cookie: bool,
}

impl RouteCache {
    /// Caching for `ttl` with every option off: what a route's `cache: {ttl: …}` alone means.
    pub fn with_ttl(ttl: Duration) -> RouteCache {
        RouteCache {
            ttl,
            vary: Vec::new(),
            public: false,
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            per_user: false,
            honour_client_no_cache: false,
            cache_set_cookie: false,
        }
    }
}

/// Where the `.rego` files (and `data.json`/`data.yaml`) live, relative to the config
/// file's directory unless absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwt {
    pub issuer: String,
    pub audience: String,
    /// JWKS file, relative to the config file's directory unless absolute.
    pub keys: PathBuf,
    /// Claim that becomes `input.user.role`.
    pub role_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Per client address (IPv6: per /64): tokens not verified recently whose signature
    /// may be checked, `rate` a second sustained and `burst` at once.
    pub new_tokens_per_client: ClientRate,
}

/// How often one client address (an IPv6 client by its /64) may do something costly: `rate`
/// a second sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRate {
    pub rate: u32,
    pub burst: u32,
}

/// Signature checks of tokens not verified recently: each costs 18–40 µs, so a client
/// sending tokens that never verify (or each one new) must not have them checked without
/// limit.
pub const DEFAULT_NEW_TOKENS_PER_CLIENT: ClientRate = ClientRate { rate: 50, burst: 1000 };
/// New connections: a TLS handshake costs the gateway ~180 µs of CPU, a dozen proxied
/// requests, and `max_connections_per_client` bounds only those open at once.
pub const DEFAULT_NEW_CONNECTIONS_PER_CLIENT: ClientRate = ClientRate { rate: 100, burst: 500 };

/// The audit trail. Off (no sink, `input.audit.enabled` false) unless `db` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// The node's SQLite log, relative to the config file's directory unless absolute.
    pub db: Option<PathBuf>,
    /// This node's name in its records; `None`: `$NODE_NAME`, else the host name.
    pub node: Option<String>,
    pub retention: Duration,
    /// Most bytes the log's records may take in its file; past it the oldest are deleted
    /// whatever their age (never one the collector has not acknowledged).
    pub max_size: u64,
    /// Ed25519 private key (PKCS#8 PEM) that signs checkpoints; unsigned without it.
    pub signing_key: Option<PathBuf>,
    pub checkpoint_records: u64,
    pub checkpoint_interval: Duration,
    /// How long a record waits, at most, for others to share its commit while the node has
    /// an idle core: one commit per this interval at low rates, not one per record.
    pub commit_interval: Duration,
    /// How often a background thread checks the records and checkpoints appended since its
    /// last good check, chained on from where that check ended.
    pub verify_interval: Duration,
    /// How often it walks the whole chain and checks every checkpoint again (the first time
    /// at start): a walk costs what the whole log holds.
    pub verify_full_interval: Duration,
    /// SQLite `synchronous=FULL` (true) or `NORMAL`.
    pub synchronous_full: bool,
    /// Citizen requests are refused while the sink is not accepting (true), or served unaudited.
    pub deny_on_failure: bool,
    /// Query values are kept in records instead of redacted.
    pub keep_query: bool,
    pub forward: Option<AuditForward>,
}

/// Store-and-forward to the central collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditForward {
    pub url: String,
    pub batch: usize,
    pub interval: Duration,
}

pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(180 * 24 * 3600);
/// ~40 million records of ~250 bytes.
pub const DEFAULT_AUDIT_MAX_SIZE: u64 = 10 << 30;
/// Below this a log could not hold the records between two checkpoints.
pub const MIN_AUDIT_MAX_SIZE: u64 = 64 << 10;
pub const DEFAULT_CHECKPOINT_RECORDS: u64 = 1000;
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_AUDIT_COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// The longest `audit.commit_interval` accepted.
pub const MAX_AUDIT_COMMIT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_AUDIT_VERIFY_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_AUDIT_VERIFY_FULL_INTERVAL: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_FORWARD_BATCH: usize = 1000;
pub const DEFAULT_FORWARD_INTERVAL: Duration = Duration::from_secs(1);

/// Who may use a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Explicitly open: no identity, no policy.
    Public,
    /// The Rego decision at `decision` must be `true`.
    Policy { decision: String, identity: IdentityMode, action: String },
    /// Neither: denied (default deny).
    Unset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityMode {
    /// No valid bearer token → 401 before the policy runs.
    Required,
    /// The policy decides with or without a user.
    Optional,
}

impl Config {
    pub fn upstream(&self, name: &str) -> Option<(UpstreamId, &UpstreamGroup)> {
        self.upstreams.binary_search_by(|g| g.name.as_str().cmp(name)).ok().map(|i| (UpstreamId(i), &self.upstreams[i]))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    /// Port 0 asks the OS for a free port; the gateway reports the one it got.
    pub address: SocketAddr,
    /// Traffic reached this plain listener through a TLS-terminating hop.
    pub behind_tls: bool,
    /// HTTPS on this listener.
    pub tls: Option<Tls>,
    /// A plain listener that only redirects to HTTPS on this port (308).
    pub redirect_https: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Never empty; the first is the default certificate.
    pub certificates: Vec<CertificatePair>,
    /// `Strict-Transport-Security: max-age=…` on responses when set.
    pub hsts: Option<Duration>,
    /// Stateless resumption: the session sealed into a ticket the client keeps.
    pub session_tickets: bool,
    /// How many sessions are held in memory for resumption by session id.
    pub session_cache: usize,
    /// The fleet's ticket secrets (relative to the config file's directory unless
    /// absolute); `None`: keys of this process's own.
    pub session_ticket_keys: Option<PathBuf>,
}

/// Sessions held for resumption by session id unless `tls.session_cache` says otherwise:
/// ~0.3 KiB each once used, so ~6 MiB when full.
pub const DEFAULT_TLS_SESSION_CACHE: usize = 20_000;
/// The most `tls.session_cache` may hold.
pub const MAX_TLS_SESSION_CACHE: u64 = 1_000_000;

/// PEM files, relative to the config file's directory unless absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub address: SocketAddr,
    /// The bearer token mutating endpoints (`/-/reload`, `/-/cache`) require, read from this
    /// file (relative to the config file's directory unless absolute). Required unless the
    /// admin address is a loopback one.
    pub token_file: Option<PathBuf>,
}

pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";

/// Index of an upstream group in [`Config::upstreams`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpstreamId(pub usize);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamGroup {
    pub name: String,
    /// Never empty when listed in the file; with `discovery`, what the cluster said last
    /// (empty until it answers).
    pub endpoints: Vec<Endpoint>,
    /// Where the endpoints come from when not listed.
    pub discovery: Option<KubernetesDiscovery>,
    pub balancer: Balancer,
    /// Active health checking; `None` relies on passive outlier detection alone.
    pub health: Option<HealthCheck>,
    pub outlier: Outlier,
    pub retry: RetryPolicy,
    /// TLS to the endpoints; off by default (pods are node-local).
    pub tls: Option<UpstreamTls>,
}

/// Endpoints from a Kubernetes Service's EndpointSlices: those on this node (`NODE_NAME`)
/// are local, the others remote.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KubernetesDiscovery {
    pub namespace: String,
    pub service: String,
    pub port: DiscoveryPort,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DiscoveryPort {
    /// The EndpointSlice port of this name (the Service port's name).
    Name(String),
    /// This port on every endpoint address.
    Number(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub sni: String,
    /// Relative to the config file's directory unless absolute.
    pub ca: Option<PathBuf>,
    pub verify: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Power of two choices over peak-EWMA load (latency × in-flight).
    PeakEwma,
    /// Smooth weighted round robin: the baseline.
    RoundRobin,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Balancer {
    pub policy: Policy,
    pub decay: Duration,
    pub default_rtt: Duration,
    pub remote_factor: f64,
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer {
            policy: Policy::PeakEwma,
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            remote_factor: 3.0,
        }
    }
}

impl Eq for Balancer {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    /// Connect failures or 5xx answers in a row that eject an endpoint.
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// At most this share of the group is ejected at once (at least one endpoint may be).
    pub max_ejection_percent: u32,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub on_status: Vec<u16>,
    pub budget_ratio: f64,
    pub min_per_second: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 2, on_status: vec![502, 503, 504], budget_ratio: 0.2, min_per_second: 10 }
    }
}

impl Eq for RetryPolicy {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Locality {
    /// A pod on this node: preferred.
    Local,
    /// A pod elsewhere: used when no local pod can serve.
    Remote,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub locality: Locality,
    pub weight: Weight,
}

/// Relative share of traffic, 1..=1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Weight(u16);

impl Weight {
    pub const MAX: u32 = 1000;
    pub const DEFAULT: Weight = Weight(1);

    pub fn new(w: u32) -> Option<Weight> {
        (1..=Self::MAX).contains(&w).then_some(Weight(w as u16))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub host: HostMatch,
    pub path: PathMatch,
    pub methods: MethodSet,
    pub upstream: UpstreamId,
    pub timeouts: RouteTimeouts,
    pub access: Access,
    pub cache: Option<RouteCache>,
    /// `%2F`/`%5C` in the request path are accepted (kept encoded) instead of refused.
    pub allow_encoded_slash: bool,
    /// This route's request body limit, overriding `limits.body`.
    pub body_limit: Option<u64>,
    pub rate_limit: Option<RateLimit>,
    /// Most requests in flight at once on this route (503 above it).
    pub max_inflight: Option<usize>,
    /// WebSocket upgrades are proxied; on other routes a request asking to upgrade is refused.
    pub websocket: bool,
}

/// A route's request rate limit, per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second per key.
    pub rate: u32,
    /// Requests a key may send at once above the rate.
    pub burst: u32,
    pub key: RateLimitKey,
    /// A fleet-wide budget shared through Redis among this many gateways; `None`: local.
    pub global_nodes: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The client address by the trusted-proxy rule.
    ClientIp,
    /// The verified user; requests without one are keyed by client address.
    User,
    /// A request header's value (lower-case name); requests without it share one key.
    Header(String),
}

/// Which `Host` a route answers. Hosts are stored lower-case without a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.gov.cn` stored as `example.gov.cn`: matches any name that ends in
    /// `.example.gov.cn` (at any depth), not `example.gov.cn` itself.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
}

impl Default for RouteTimeouts {
    fn default() -> Self {
        RouteTimeouts { connect: Duration::from_secs(2), read: Duration::from_secs(30), write: Duration::from_secs(30) }
    }
}

/// A set of HTTP methods as a bitmask: matching is one AND.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodSet(u16);

/// The methods a route may name; anything else is a config error.
pub const KNOWN_METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"];

impl MethodSet {
    pub const ANY: MethodSet = MethodSet(u16::MAX);
    pub const NONE: MethodSet = MethodSet(0);

    /// The bit of a method name, or `None` for an extension method.
    pub fn bit(method: &str) -> Option<u16> {
        KNOWN_METHODS.iter().position(|m| *m == method).map(|i| 1u16 << i)
    }

    pub fn insert(&mut self, method: &str) -> bool {
        match Self::bit(method) {
            Some(bit) => {
                self.0 |= bit;
                true
            }
            None => false,
        }
    }

    /// Does the set allow this method? Extension methods only match [`MethodSet::ANY`].
    pub fn contains(self, method: &str) -> bool {
        match Self::bit(method) {
            Some(bit) => self.0 & bit != 0,
            None => self == Self::ANY,
        }
    }

    pub fn overlaps(self, other: MethodSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn union(self, other: MethodSet) -> MethodSet {
        MethodSet(self.0 | other.0)
    }

    /// Method names in the set, for an `Allow` header.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        KNOWN_METHODS.iter().enumerate().filter(move |(i, _)| self.0 & (1 << i) != 0).map(|(_, m)| *m)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runtime {
    /// Worker threads for the proxy; `None` means one per available CPU.
    pub threads: Option<usize>,
    /// Tokio work stealing between the workers; off by default (`loadtest/scenarios/workers.sh`:
    /// two stealing workers cost 32 % more CPU a request than two that do not).
    pub work_stealing: bool,
    /// Threads that do the TLS listeners' handshakes, so that a handshake (up to ~0.6 ms
    /// of CPU with an RSA key) never holds up a worker's requests; 0: on the workers.
    pub tls_handshake_threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// Longest time SIGTERM waits for in-flight requests; the gateway exits as soon as
    /// they are done. The default fits Kubernetes' 30 s termination grace period.
    pub grace_period: Duration,
}

pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logging {
    pub access_log: bool,
}

/// W3C trace context and span export.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tracing {
    /// Of the traces edgegate starts (requests without a valid `traceparent`), how many
    /// per million are marked sampled, so the pods (and edgegate's exporter) record them.
    pub sample_ppm: u32,
    pub otlp: Option<Otlp>,
}

/// Export of edgegate's own span per sampled request to an OTLP/HTTP collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Otlp {
    pub endpoint: String,
    pub batch: usize,
    pub interval: Duration,
}

pub const DEFAULT_OTLP_BATCH: usize = 512;
pub const DEFAULT_OTLP_INTERVAL: Duration = Duration::from_secs(1);
