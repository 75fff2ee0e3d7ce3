//! Raw YAML types → validated [`Config`]. Validation collects every error, each naming
//! its field path and the offending value, and never stops at the first.

use std::collections::{BTreeSet, HashMap};
use std::fmt::{self, Display};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::FieldError;
use crate::model::*;
use crate::raw::*;

/// Upper bound on worker threads: more is a typo, not a tuning.
const MAX_THREADS: usize = 256;

impl TryFrom<RawConfig> for Config {
    type Error = Vec<FieldError>;

    fn try_from(raw: RawConfig) -> Result<Config, Vec<FieldError>> {
        let mut v = Validator { errors: Vec::new() };
        let config = v.config(raw);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            Err(v.errors)
        }
    }
}

struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    /// A collector's URL at `path`: `http://` or `https://` with a host, and no whitespace or
    /// control byte; named in the error without its `user:password@`.
    fn http_url(&mut self, path: &str, url: &str) {
        let authority = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        let host_ok = authority.is_some_and(|a| !a.is_empty() && !a.starts_with('/'));
        if !host_ok || url.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            self.err(path, format!("{:?}: expected an http:// or https:// URL", url_for_message(url)));
        }
    }

    fn tracing(&mut self, raw: &RawTracing) -> Tracing {
        let sample_ppm = match raw.sample_ratio {
            None => 0,
            Some(r) if (0.0..=1.0).contains(&r) => (r * 1e6).round() as u32,
            Some(r) => {
                self.err("tracing.sample_ratio", format!("{r}: expected a share from 0.0 to 1.0, e.g. 0.01"));
                0
            }
        };
        let otlp = raw.otlp.as_ref().and_then(|o| {
            let Some(endpoint) = &o.endpoint else {
                self.err(
                    "tracing.otlp.endpoint",
                    "required when tracing.otlp is set, e.g. http://otel-collector:4318/v1/traces",
                );
                return None;
            };
            self.http_url("tracing.otlp.endpoint", endpoint);
            if o.batch == Some(0) {
                self.err("tracing.otlp.batch", "must be at least 1");
            }
            Some(Otlp {
                endpoint: endpoint.clone(),
                batch: o.batch.unwrap_or(DEFAULT_OTLP_BATCH).max(1),
                interval: self.positive("tracing.otlp.interval", o.interval, DEFAULT_OTLP_INTERVAL),
            })
        });
        Tracing { sample_ppm, otlp }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let admin = self.admin(&raw.admin);
        let listeners = self.listeners(&raw.listeners, raw.listener_entries, &admin);
        let upstreams = self.upstreams(&raw);
        let routes = self.routes(&raw, &upstreams);
        let runtime = self.runtime(&raw.runtime);
        Config {
            listeners,
            admin,
            upstreams,
            routes,
            runtime,
            shutdown: Shutdown { grace_period: raw.shutdown.grace_period.map_or(DEFAULT_GRACE_PERIOD, |d| d.0) },
            logging: Logging { access_log: raw.logging.access_log.unwrap_or(true) },
            tracing: self.tracing(&raw.tracing),
            policies: raw.policies.as_ref().map(|p| Policies { dir: PathBuf::from(&p.dir) }),
            jwt: raw.identity.jwt.as_ref().map(|j| self.jwt(j)),
            audit: self.audit(&raw.audit),
            cache: CacheBudget {
                memory: self.memory(raw.cache.memory.as_deref()),
                status_header: self
                    .header_name("cache.status_header", raw.cache.status_header.as_deref().unwrap_or("x-cache")),
            },
            limits: self.limits(&raw.limits),
            trusted_proxies: raw
                .trusted_proxies
                .iter()
                .enumerate()
                .filter_map(|(i, text)| {
                    let cidr = Cidr::parse(text.trim());
                    if cidr.is_none() {
                        self.err(
                            format!("trusted_proxies[{i}]"),
                            format!("invalid address block {text:?}: expected 10.0.0.0/8, 2001:db8::/32 or an address"),
                        );
                    }
                    cidr
                })
                .collect(),
            redis: raw.cache.redis.as_ref().map(|r| {
                if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://")) {
                    self.err(
                        "cache.redis.url",
                        format!("invalid URL {:?}: expected redis://host:port", url_for_message(&r.url)),
                    );
                }
                let key_file = r.key_file.as_ref().map(PathBuf::from);
                if key_file.is_none() && !redis_is_loopback(&r.url) {
                    self.err(
                        "cache.redis.key_file",
                        format!(
                            "required when cache.redis.url ({}) is not a loopback address: whoever can write to that \
                             Redis, or to the link to it, would otherwise choose what every gateway serves",
                            url_for_message(&r.url)
                        ),
                    );
                }
                if r.previous_key_file.is_some() && key_file.is_none() {
                    self.err("cache.redis.previous_key_file", "only beside cache.redis.key_file (the key that seals)");
                }
                if r.ca.is_some() && !r.url.starts_with("rediss://") {
                    self.err("cache.redis.ca", "only with a rediss:// URL (Redis over TLS)");
                }
                Redis {
                    url: r.url.clone(),
                    timeout: self.positive("cache.redis.timeout", r.timeout, Duration::from_millis(50)),
                    key_file,
                    previous_key_file: r.previous_key_file.as_ref().map(PathBuf::from),
                    ca: r.ca.as_ref().map(PathBuf::from),
                }
            }),
        }
    }

    fn address(&mut self, path: impl Display, text: &str) -> Option<SocketAddr> {
        match text.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    path.to_string(),
                    format!("unparseable address {text:?}: expected IP:PORT, e.g. 10.42.0.15:8080 or [::1]:8080"),
                );
                None
            }
        }
    }

    fn admin(&mut self, raw: &RawAdmin) -> Admin {
        let fallback = SocketAddr::from(([127, 0, 0, 1], 9901));
        let address = match &raw.address {
            Some(text) => self.address("admin.address", text).unwrap_or(fallback),
            None => fallback,
        };
        let token_file = raw.token_file.as_ref().map(PathBuf::from);
        if token_file.is_none() && !address.ip().is_loopback() {
            self.err(
                "admin.token_file",
                format!("required when admin.address ({address}) is not a loopback address: /-/reload and /-/cache must not be open to the network"),
            );
        }
        Admin { address, token_file }
    }

    fn listeners(&mut self, raw: &[(usize, RawListener)], entries: usize, admin: &Admin) -> Vec<Listener> {
        let mut out = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut bound: Vec<(SocketAddr, String)> = vec![(admin.address, "admin.address".to_owned())];
        for (i, l) in raw {
            let base = format!("listeners[{i}]");
            if l.name.trim().is_empty() {
                self.err(format!("{base}.name"), "must not be empty");
            } else if let Some(first) = names.insert(&l.name, *i) {
                self.err(
                    format!("{base}.name"),
                    format!("duplicate listener name {:?} (also listeners[{first}])", l.name),
                );
            }
            let Some(address) = self.address(format_args!("{base}.address"), &l.address) else { continue };
            if let Some((_, other)) = bound.iter().find(|(a, _)| conflicts(*a, address)) {
                self.err(format!("{base}.address"), format!("address {address} conflicts with {other}"));
            }
            bound.push((address, format!("{base}.address")));
            let tls = l.tls.as_ref().map(|t| {
                if t.certificates.is_empty() {
                    self.err(format!("{base}.tls.certificates"), "must list at least one cert/key pair");
                }
                if l.behind_tls == Some(true) {
                    self.err(format!("{base}.behind_tls"), "a TLS listener is encrypted already");
                }
                Tls {
                    certificates: t
                        .certificates
                        .iter()
                        .map(|c| CertificatePair { cert: PathBuf::from(&c.cert), key: PathBuf::from(&c.key) })
                        .collect(),
                    hsts: t.hsts.map(|d| d.0),
                    session_tickets: t.session_tickets.unwrap_or(true),
                    session_cache: match t.session_cache {
                        None => DEFAULT_TLS_SESSION_CACHE,
                        Some(n) if n > MAX_TLS_SESSION_CACHE => {
                            self.err(
                                format!("{base}.tls.session_cache"),
                                format!("{n} sessions is more than the most, {MAX_TLS_SESSION_CACHE}"),
                            );
                            0
                        }
                        Some(n) => n as usize,
                    },
                    session_ticket_keys: match (&t.session_ticket_keys, t.session_tickets) {
                        (Some(_), Some(false)) => {
                            self.err(
                                format!("{base}.tls.session_ticket_keys"),
                                "set, but session_tickets is false: no tickets are made",
                            );
                            None
                        }
                        (Some(p), _) if p.trim().is_empty() => {
                            self.err(format!("{base}.tls.session_ticket_keys"), "must not be empty");
                            None
                        }
                        (keys, _) => keys.as_ref().map(PathBuf::from),
                    },
                }
            });
            if l.redirect_https.is_some() && tls.is_some() {
                self.err(format!("{base}.redirect_https"), "a TLS listener cannot redirect to HTTPS");
            }
            if l.redirect_https == Some(0) {
                self.err(format!("{base}.redirect_https"), "port 0 is not a redirect target");
            }
            out.push(Listener {
                name: l.name.clone(),
                address,
                behind_tls: l.behind_tls.unwrap_or(false),
                tls,
                redirect_https: l.redirect_https,
            });
        }
        if entries == 0 {
            self.err("listeners", "at least one listener is required");
        }
        out
    }

    fn upstreams(&mut self, raw: &RawConfig) -> Vec<UpstreamGroup> {
        let mut out = Vec::new();
        // BTreeMap iteration is sorted by name, which `Config::upstream` relies on.
        for (name, group) in &raw.upstreams {
            let base = format!("upstreams.{name}");
            if name.trim().is_empty() {
                self.err(&base, "upstream name must not be empty");
            }
            let discovery = group.discovery.as_ref().and_then(|d| self.discovery(&base, d));
            match (group.endpoints.is_empty(), group.discovery.is_some()) {
                (true, false) => {
                    self.err(format!("{base}.endpoints"), "must list at least one endpoint (or set discovery)")
                }
                (false, true) => self.err(
                    format!("{base}.discovery"),
                    "set either endpoints or discovery: discovered endpoints replace the listed ones",
                ),
                _ => {}
            }
            let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
            let mut endpoints = Vec::new();
            for (j, e) in group.endpoints.iter().enumerate() {
                let path = EndpointAt(name, j);
                let Some(address) = self.address(format_args!("{path}.address"), &e.address) else { continue };
                if address.port() == 0 {
                    self.err(format!("{path}.address"), format!("port 0 in {address} is not a reachable endpoint"));
                }
                if let Some(first) = seen.insert(address, j) {
                    self.err(
                        format!("{path}.address"),
                        format!("duplicate endpoint {address} (also endpoints[{first}])"),
                    );
                }
                let weight = match e.weight {
                    None => Weight::DEFAULT,
                    Some(w) => Weight::new(w).unwrap_or_else(|| {
                        self.err(format!("{path}.weight"), format!("weight {w} out of range 1..={}", Weight::MAX));
                        Weight::DEFAULT
                    }),
                };
                let locality = match e.locality {
                    RawLocality::Local => Locality::Local,
                    RawLocality::Remote => Locality::Remote,
                };
                endpoints.push(Endpoint { address, locality, weight });
            }
            let balancer = self.balancer(&base, &group.balancer);
            let health = group.health.as_ref().map(|h| self.health(&base, h));
            let outlier = self.outlier(&base, &group.outlier);
            let retry = self.retry(&base, &group.retry);
            let tls = group.tls.as_ref().map(|t| {
                let verify = t.verify.unwrap_or(true);
                if verify && t.sni.as_deref().is_none_or(str::is_empty) {
                    self.err(
                        format!("{base}.tls.sni"),
                        "required to verify the upstream's certificate (or set verify: false)",
                    );
                }
                UpstreamTls { sni: t.sni.clone().unwrap_or_default(), ca: t.ca.as_ref().map(PathBuf::from), verify }
            });
            out.push(UpstreamGroup { name: name.clone(), endpoints, discovery, balancer, health, outlier, retry, tls });
        }
        out
    }

    fn discovery(&mut self, base: &str, raw: &RawDiscovery) -> Option<KubernetesDiscovery> {
        let Some(k) = &raw.kubernetes else {
            self.err(format!("{base}.discovery"), "expected kubernetes: {namespace, service, port}");
            return None;
        };
        let path = format!("{base}.discovery.kubernetes");
        // Namespace and Service names are DNS labels (RFC 1123).
        let mut label = |field: &str, v: &Option<String>| -> Option<String> {
            match v {
                None => {
                    self.err(format!("{path}.{field}"), "required");
                    None
                }
                Some(s)
                    if s.is_empty()
                        || s.len() > 63
                        || s.starts_with('-')
                        || s.ends_with('-')
                        || !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
                {
                    self.err(
                        format!("{path}.{field}"),
                        format!("{s:?}: expected a DNS label (a-z, 0-9, '-', at most 63)"),
                    );
                    None
                }
                Some(s) => Some(s.clone()),
            }
        };
        let namespace = label("namespace", &k.namespace);
        let service = label("service", &k.service);
        let port = match &k.port {
            None => {
                self.err(format!("{path}.port"), "required: the Service port's name, or the pods' port number");
                None
            }
            Some(RawPort::Number(n)) => match u16::try_from(*n) {
                Ok(n) if n > 0 => Some(DiscoveryPort::Number(n)),
                _ => {
                    self.err(format!("{path}.port"), format!("{n} out of range 1..=65535"));
                    None
                }
            },
            Some(RawPort::Name(n)) if !n.is_empty() && n.len() <= 63 => Some(DiscoveryPort::Name(n.clone())),
            Some(RawPort::Name(n)) => {
                self.err(format!("{path}.port"), format!("{n:?}: expected a port name or number"));
                None
            }
        };
        Some(KubernetesDiscovery { namespace: namespace?, service: service?, port: port? })
    }

    /// A duration that must be positive, or the default when absent.
    /// A count that must be at least 1 when given.
    fn at_least_one<N: PartialEq + From<u8> + Copy>(&mut self, path: &str, v: Option<N>, default: N) -> N {
        match v {
            Some(n) if n == N::from(0) => {
                self.err(path, "must be at least 1");
                default
            }
            Some(n) => n,
            None => default,
        }
    }

    fn positive(&mut self, path: impl Display, v: Option<RawDuration>, default: Duration) -> Duration {
        match v {
            Some(RawDuration(t)) if t.is_zero() => {
                self.err(path.to_string(), "must be greater than 0");
                default
            }
            Some(RawDuration(t)) => t,
            None => default,
        }
    }

    fn balancer(&mut self, base: &str, raw: &RawBalancer) -> Balancer {
        let d = Balancer::default();
        let remote_factor = match raw.remote_factor {
            Some(f) if !(1.0..=1000.0).contains(&f) => {
                self.err(format!("{base}.balancer.remote_factor"), format!("{f} out of range 1..=1000"));
                d.remote_factor
            }
            Some(f) => f,
            None => d.remote_factor,
        };
        Balancer {
            policy: match raw.policy {
                RawPolicy::PeakEwma => Policy::PeakEwma,
                RawPolicy::RoundRobin => Policy::RoundRobin,
            },
            decay: self.positive(format_args!("{base}.balancer.decay"), raw.decay, d.decay),
            default_rtt: self.positive(format_args!("{base}.balancer.default_rtt"), raw.default_rtt, d.default_rtt),
            remote_factor,
        }
    }

    fn health(&mut self, base: &str, raw: &RawHealth) -> HealthCheck {
        if !raw.path.starts_with('/') || raw.path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            self.err(format!("{base}.health.path"), format!("invalid path {:?}: must start with '/'", raw.path));
        }
        let interval = self.positive(format_args!("{base}.health.interval"), raw.interval, Duration::from_secs(2));
        let timeout = self.positive(format_args!("{base}.health.timeout"), raw.timeout, Duration::from_secs(1));
        if timeout > interval {
            self.err(format!("{base}.health.timeout"), format!("{timeout:?} is longer than the interval {interval:?}"));
        }
        HealthCheck {
            path: raw.path.clone(),
            interval,
            timeout,
            healthy_threshold: self.at_least_one(&format!("{base}.health.healthy_threshold"), raw.healthy_threshold, 2),
            unhealthy_threshold: self.at_least_one(
                &format!("{base}.health.unhealthy_threshold"),
                raw.unhealthy_threshold,
                3,
            ),
        }
    }

    fn outlier(&mut self, base: &str, raw: &RawOutlier) -> Outlier {
        let d = Outlier::default();
        let consecutive_failures = self.at_least_one(
            &format!("{base}.outlier.consecutive_failures"),
            raw.consecutive_failures,
            d.consecutive_failures,
        );
        let max_ejection_percent = match raw.max_ejection_percent {
            Some(p) if p > 100 => {
                self.err(format!("{base}.outlier.max_ejection_percent"), format!("{p} is more than 100"));
                d.max_ejection_percent
            }
            Some(p) => p,
            None => d.max_ejection_percent,
        };
        let base_ejection_time = self.positive(
            format_args!("{base}.outlier.base_ejection_time"),
            raw.base_ejection_time,
            d.base_ejection_time,
        );
        let max_ejection_time =
            self.positive(format_args!("{base}.outlier.max_ejection_time"), raw.max_ejection_time, d.max_ejection_time);
        if max_ejection_time < base_ejection_time {
            self.err(format!("{base}.outlier.max_ejection_time"), "must not be shorter than base_ejection_time");
        }
        Outlier { consecutive_failures, base_ejection_time, max_ejection_time, max_ejection_percent }
    }

    fn retry(&mut self, base: &str, raw: &RawRetry) -> RetryPolicy {
        let d = RetryPolicy::default();
        let attempts = match raw.attempts {
            Some(n) if n > 5 => {
                self.err(format!("{base}.retry.attempts"), format!("{n} is more than 5"));
                d.attempts
            }
            Some(n) => n,
            None => d.attempts,
        };
        let on_status = raw.on_status.clone().unwrap_or(d.on_status);
        for (k, code) in on_status.iter().enumerate() {
            if !(500..=599).contains(code) {
                self.err(format!("{base}.retry.on_status[{k}]"), format!("{code} is not a 5xx status"));
            }
        }
        let budget_ratio = match raw.budget_ratio {
            Some(r) if !(0.0..=1.0).contains(&r) => {
                self.err(format!("{base}.retry.budget_ratio"), format!("{r} out of range 0..=1"));
                d.budget_ratio
            }
            Some(r) => r,
            None => d.budget_ratio,
        };
        RetryPolicy {
            attempts,
            on_status,
            budget_ratio,
            min_per_second: raw.min_per_second.unwrap_or(d.min_per_second),
        }
    }

    fn routes(&mut self, raw: &RawConfig, upstreams: &[UpstreamGroup]) -> Vec<Route> {
        let mut out = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        // File index of each route in `out`, for the unreachable-route check below.
        let mut file_index = Vec::new();
        for (i, r) in &raw.routes {
            let base = RouteAt(*i);
            if r.name.trim().is_empty() {
                self.err(format!("{base}.name"), "must not be empty");
            } else if let Some(first) = names.insert(&r.name, *i) {
                self.err(format!("{base}.name"), format!("duplicate route name {:?} (also routes[{first}])", r.name));
            }
            let host = self.host(format_args!("{base}.match.host"), r.matcher.host.as_deref());
            let path = self.path(base, &r.matcher);
            let methods = self.methods(format_args!("{base}.match.methods"), r.matcher.methods.as_deref());
            let upstream = match upstreams.binary_search_by(|g| g.name.as_str().cmp(&r.upstream)) {
                Ok(idx) => Some(UpstreamId(idx)),
                Err(_) => {
                    if !raw.broken_upstreams.contains(&r.upstream) {
                        let known: BTreeSet<&str> = upstreams.iter().map(|g| g.name.as_str()).collect();
                        let hint = if known.is_empty() {
                            "no upstreams are defined".to_owned()
                        } else {
                            format!("known: {}", known.into_iter().collect::<Vec<_>>().join(", "))
                        };
                        self.err(format!("{base}.upstream"), format!("unknown upstream {:?} ({hint})", r.upstream));
                    }
                    None
                }
            };
            let timeouts = self.timeouts(format_args!("{base}.timeouts"), &r.timeouts);
            let access = self.access(base, r, raw);
            let cache = r.cache.as_ref().map(|c| RouteCache {
                ttl: self.positive(format_args!("{base}.cache.ttl"), Some(c.ttl), Duration::from_secs(1)),
                vary: c.vary.iter().flatten().map(|h| h.trim().to_ascii_lowercase()).collect(),
                public: c.public.unwrap_or(false),
                stale_if_error: c.stale_if_error.map_or(Duration::ZERO, |d| d.0),
                stale_while_revalidate: c.stale_while_revalidate.map_or(Duration::ZERO, |d| d.0),
                per_user: c.per_user.unwrap_or(false),
                honour_client_no_cache: c.honour_client_no_cache.unwrap_or(false),
                cache_set_cookie: c.cache_set_cookie.unwrap_or(false),
            });
            let (Some(host), Some(path), Some(methods), Some(upstream)) = (host, path, methods, upstream) else {
                continue;
            };
            file_index.push(*i);
            let allow_encoded_slash = r.path.as_ref().and_then(|p| p.allow_encoded_slash).unwrap_or(false);
            if r.websocket == Some(true) && r.cache.is_some() {
                self.err(format!("{base}.cache"), "a websocket route is not cached: remove cache or websocket");
            }
            if let Some(l) = &r.limits {
                for (field, set) in [
                    ("header_bytes", l.header_bytes.is_some()),
                    ("headers", l.headers.is_some()),
                    ("keepalive_timeout", l.keepalive_timeout.is_some()),
                    ("keepalive_requests", l.keepalive_requests.is_some()),
                    ("head_timeout", l.head_timeout.is_some()),
                    ("max_connections", l.max_connections.is_some()),
                    ("max_connections_per_client", l.max_connections_per_client.is_some()),
                    ("new_connections_per_client", l.new_connections_per_client.is_some()),
                    ("h2_max_concurrent_streams", l.h2_max_concurrent_streams.is_some()),
                    ("min_body_rate", l.min_body_rate.is_some()),
                    ("send_timeout", l.send_timeout.is_some()),
                    ("max_stalled_responses", l.max_stalled_responses.is_some()),
                    ("token_check_wait", l.token_check_wait.is_some()),
                ] {
                    if set {
                        self.err(
                            format!("{base}.limits.{field}"),
                            "global only: the request head is read before its route is known (set it in the top-level limits)",
                        );
                    }
                }
            }
            let rate_limit = r.rate_limit.as_ref().and_then(|rl| self.rate_limit(base, rl, raw.cache.redis.is_some()));
            if r.max_inflight == Some(0) {
                self.err(format!("{base}.max_inflight"), "must be at least 1");
            }
            let body_limit = r
                .limits
                .as_ref()
                .and_then(|l| l.body.as_deref())
                .map(|b| self.size(&format!("{base}.limits.body"), Some(b), DEFAULT_BODY_LIMIT));
            out.push(Route {
                name: r.name.clone(),
                host,
                path,
                methods,
                upstream,
                timeouts,
                access,
                cache,
                allow_encoded_slash,
                body_limit,
                rate_limit,
                max_inflight: r.max_inflight,
                websocket: r.websocket.unwrap_or(false),
            });
        }
        self.unreachable_routes(&out, &file_index);
        out
    }

    /// A route with the same host and path as an earlier one and an overlapping method
    /// set could never be chosen. Found by sorting rather than hashing clones of every
    /// host and path: this runs on every reload of a possibly large config.
    fn unreachable_routes(&mut self, routes: &[Route], file_index: &[usize]) {
        let mut order: Vec<usize> = (0..routes.len()).collect();
        // Stable sort: within one (host, path) group, file order is kept.
        order.sort_by(|&a, &b| (&routes[a].host, &routes[a].path).cmp(&(&routes[b].host, &routes[b].path)));
        for group in order.chunk_by(|&a, &b| routes[a].host == routes[b].host && routes[a].path == routes[b].path) {
            for (k, &later) in group.iter().enumerate().skip(1) {
                if let Some(&earlier) = group[..k].iter().find(|&&e| routes[e].methods.overlaps(routes[later].methods))
                {
                    self.err(
                        format!("{}.match", RouteAt(file_index[later])),
                        format!(
                            "same host, path and methods as routes[{}]: this route could never be chosen",
                            file_index[earlier]
                        ),
                    );
                }
            }
        }
    }

    fn host(&mut self, path: impl Display, raw: Option<&str>) -> Option<HostMatch> {
        let Some(text) = raw else { return Some(HostMatch::Any) };
        let lower = text.trim().trim_end_matches('.').to_ascii_lowercase();
        if lower == "*" {
            return Some(HostMatch::Any);
        }
        let (suffix, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, lower.clone()),
        };
        let valid_label =
            |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            self.err(path.to_string(), format!("invalid host {text:?}: expected a DNS name (example.gov.cn) or a wildcard (*.example.gov.cn), without port"));
            return None;
        }
        Some(if suffix { HostMatch::Suffix(name) } else { HostMatch::Exact(name) })
    }

    /// Requests are routed on their canonical path (dot segments resolved, `//` collapsed,
    /// unreserved escapes decoded), so a route path must itself be canonical or it could
    /// never match.
    fn path(&mut self, base: RouteAt, m: &RawMatch) -> Option<PathMatch> {
        let (field, text, exact) = match (&m.path_prefix, &m.path) {
            (Some(_), Some(_)) => {
                self.err(format!("{base}.match"), "path_prefix and path are mutually exclusive");
                return None;
            }
            (None, None) => return Some(PathMatch::Prefix("/".to_owned())),
            (Some(p), None) => ("path_prefix", p, false),
            (None, Some(p)) => ("path", p, true),
        };
        match path_problem(text) {
            Some(problem) => {
                self.err(format!("{base}.match.{field}"), format!("invalid path {text:?}: {problem}"));
                None
            }
            None if exact => Some(PathMatch::Exact(text.clone())),
            None => Some(PathMatch::Prefix(text.clone())),
        }
    }

    fn methods(&mut self, path: impl Display, raw: Option<&[String]>) -> Option<MethodSet> {
        let Some(list) = raw else { return Some(MethodSet::ANY) };
        if list.is_empty() {
            self.err(path.to_string(), "must list at least one method, or be left out to allow all");
            return None;
        }
        let mut set = MethodSet::NONE;
        let mut ok = true;
        for (k, m) in list.iter().enumerate() {
            if !set.insert(m) {
                self.err(
                    format!("{path}[{k}]"),
                    format!("unknown method {m:?}: expected one of {}", KNOWN_METHODS.join(", ")),
                );
                ok = false;
            }
        }
        ok.then_some(set)
    }

    fn timeouts(&mut self, path: impl Display, raw: &RawTimeouts) -> RouteTimeouts {
        let d = RouteTimeouts::default();
        RouteTimeouts {
            connect: self.positive(format_args!("{path}.connect"), raw.connect, d.connect),
            read: self.positive(format_args!("{path}.read"), raw.read, d.read),
            write: self.positive(format_args!("{path}.write"), raw.write, d.write),
        }
    }

    fn header_name(&mut self, path: &str, name: &str) -> String {
        let lower = name.trim().to_ascii_lowercase();
        if lower.is_empty() || !lower.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            self.err(path, format!("invalid header name {name:?}"));
        }
        lower
    }

    /// `256MiB`, `1GiB`, `500MB`, `1048576`.
    fn rate_limit(&mut self, base: RouteAt, raw: &RawRateLimit, has_redis: bool) -> Option<RateLimit> {
        if raw.rate == 0 {
            self.err(format!("{base}.rate_limit.rate"), "must be at least 1 request per second");
            return None;
        }
        let burst = raw.burst.unwrap_or(raw.rate);
        if burst == 0 {
            self.err(format!("{base}.rate_limit.burst"), "must be at least 1");
            return None;
        }
        let key = match raw.key.as_deref().map(str::trim) {
            None | Some("client_ip") => RateLimitKey::ClientIp,
            Some("user") => RateLimitKey::User,
            Some(k) if k.starts_with("header:") && k.len() > 7 => {
                let name = k[7..].trim().to_ascii_lowercase();
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                    self.err(format!("{base}.rate_limit.key"), format!("invalid header name in {k:?}"));
                    return None;
                }
                RateLimitKey::Header(name)
            }
            Some(k) => {
                self.err(
                    format!("{base}.rate_limit.key"),
                    format!("unknown key {k:?}: expected client_ip, user or header:NAME"),
                );
                return None;
            }
        };
        let global_nodes = match (raw.global, raw.nodes) {
            (Some(true), Some(0)) => {
                self.err(format!("{base}.rate_limit.nodes"), "must be at least 1");
                return None;
            }
            (Some(true), None) => {
                self.err(
                    format!("{base}.rate_limit.nodes"),
                    "required with global: true (how many gateways share the budget; each falls back to rate / nodes without Redis)",
                );
                return None;
            }
            (Some(true), Some(n)) => {
                if !has_redis {
                    self.err(format!("{base}.rate_limit.global"), "needs cache.redis: the budget is shared through it");
                }
                if n > raw.rate {
                    self.err(
                        format!("{base}.rate_limit.rate"),
                        format!(
                            "{} is below nodes ({n}): each gateway admits at least one request a second of a key \
                             before it hears from the others, so {n} gateways could admit {n} a second; raise \
                             rate, or set nodes to how many gateways one key's traffic reaches",
                            raw.rate
                        ),
                    );
                    return None;
                }
                Some(n)
            }
            (_, Some(_)) => {
                self.err(format!("{base}.rate_limit.nodes"), "only with global: true");
                return None;
            }
            _ => None,
        };
        Some(RateLimit { rate: raw.rate, burst, key, global_nodes })
    }

    fn limits(&mut self, raw: &RawLimits) -> Limits {
        if raw.headers == Some(0) {
            self.err("limits.headers", "must be at least 1");
        }
        Limits {
            body: self.size("limits.body", raw.body.as_deref(), DEFAULT_BODY_LIMIT),
            header_bytes: usize::try_from(self.size(
                "limits.header_bytes",
                raw.header_bytes.as_deref(),
                DEFAULT_HEADER_BYTES as u64,
            ))
            .unwrap_or(DEFAULT_HEADER_BYTES),
            headers: raw.headers.unwrap_or(DEFAULT_HEADERS),
            keepalive_timeout: self.positive(
                "limits.keepalive_timeout",
                raw.keepalive_timeout,
                DEFAULT_KEEPALIVE_TIMEOUT,
            ),
            keepalive_requests: self.at_least_one(
                "limits.keepalive_requests",
                raw.keepalive_requests,
                DEFAULT_KEEPALIVE_REQUESTS,
            ),
            head_timeout: self.positive("limits.head_timeout", raw.head_timeout, DEFAULT_HEAD_TIMEOUT),
            max_connections: self.at_least_one("limits.max_connections", raw.max_connections, DEFAULT_MAX_CONNECTIONS),
            max_connections_per_client: self.at_least_one(
                "limits.max_connections_per_client",
                raw.max_connections_per_client,
                DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            ),
            new_connections_per_client: self.client_rate(
                "limits.new_connections_per_client",
                raw.new_connections_per_client.as_ref(),
                DEFAULT_NEW_CONNECTIONS_PER_CLIENT,
            ),
            min_body_rate: self.size("limits.min_body_rate", raw.min_body_rate.as_deref(), DEFAULT_MIN_BODY_RATE),
            send_timeout: self.positive("limits.send_timeout", raw.send_timeout, DEFAULT_SEND_TIMEOUT),
            max_stalled_responses: self.at_least_one(
                "limits.max_stalled_responses",
                raw.max_stalled_responses,
                DEFAULT_MAX_STALLED_RESPONSES,
            ),
            h2_max_concurrent_streams: self.at_least_one(
                "limits.h2_max_concurrent_streams",
                raw.h2_max_concurrent_streams,
                DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            ),
            token_check_wait: self.positive("limits.token_check_wait", raw.token_check_wait, DEFAULT_TOKEN_CHECK_WAIT),
        }
    }

    fn audit(&mut self, raw: &RawAudit) -> Audit {
        if raw.enabled.is_some() {
            self.err(
                "audit.enabled",
                "removed: policies see whether the audit sink is accepting records; set audit.db to turn audit on",
            );
        }
        let choice = |v: &mut Self, field: &str, text: Option<&str>, yes: &str, no: &str, default: bool| match text {
            None => default,
            Some(t) if t == yes => true,
            Some(t) if t == no => false,
            Some(t) => {
                v.err(field, format!("{t:?}: expected {yes} or {no}"));
                default
            }
        };
        let synchronous_full = choice(self, "audit.synchronous", raw.synchronous.as_deref(), "full", "normal", true);
        let deny_on_failure = choice(self, "audit.on_failure", raw.on_failure.as_deref(), "deny", "allow", true);
        let keep_query = choice(
            self,
            "audit.fields.query",
            raw.fields.as_ref().and_then(|f| f.query.as_deref()),
            "keep",
            "redact",
            false,
        );
        if raw.checkpoint_records == Some(0) {
            self.err("audit.checkpoint_records", "must be at least 1");
        }
        if let Some(node) = &raw.node {
            if node.is_empty()
                || node.len() > 253
                || node.bytes().any(|b| !(b.is_ascii_alphanumeric() || b"-._".contains(&b)))
            {
                self.err("audit.node", format!("{node:?}: expected a node name of letters, digits, '-', '.', '_'"));
            }
        }
        let forward = raw.forward.as_ref().and_then(|f| {
            let Some(url) = &f.url else {
                self.err("audit.forward.url", "required when audit.forward is set");
                return None;
            };
            self.http_url("audit.forward.url", url);
            if f.batch == Some(0) {
                self.err("audit.forward.batch", "must be at least 1");
            }
            Some(AuditForward {
                url: url.clone(),
                batch: f.batch.unwrap_or(DEFAULT_FORWARD_BATCH).max(1),
                interval: self.positive("audit.forward.interval", f.interval, DEFAULT_FORWARD_INTERVAL),
            })
        });
        if raw.db.is_none() && (raw.forward.is_some() || raw.signing_key.is_some()) {
            self.err("audit.db", "required when audit.forward or audit.signing_key is set");
        }
        Audit {
            db: raw.db.as_ref().map(PathBuf::from),
            node: raw.node.clone(),
            retention: self.positive("audit.retention", raw.retention, DEFAULT_AUDIT_RETENTION),
            max_size: {
                let size = self.size("audit.max_size", raw.max_size.as_deref(), DEFAULT_AUDIT_MAX_SIZE);
                if size < MIN_AUDIT_MAX_SIZE {
                    self.err("audit.max_size", "must be at least 64KiB");
                }
                size
            },
            signing_key: raw.signing_key.as_ref().map(PathBuf::from),
            checkpoint_records: raw.checkpoint_records.unwrap_or(DEFAULT_CHECKPOINT_RECORDS).max(1),
            checkpoint_interval: self.positive(
                "audit.checkpoint_interval",
                raw.checkpoint_interval,
                DEFAULT_CHECKPOINT_INTERVAL,
            ),
            commit_interval: {
                let t = self.positive("audit.commit_interval", raw.commit_interval, DEFAULT_AUDIT_COMMIT_INTERVAL);
                if t > MAX_AUDIT_COMMIT_INTERVAL {
                    self.err(
                        "audit.commit_interval",
                        format!(
                            "{} ms is longer than {} s: records would wait that long uncommitted, and a crash loses them",
                            t.as_millis(),
                            MAX_AUDIT_COMMIT_INTERVAL.as_secs()
                        ),
                    );
                }
                t.min(MAX_AUDIT_COMMIT_INTERVAL)
            },
            verify_interval: self.positive("audit.verify_interval", raw.verify_interval, DEFAULT_AUDIT_VERIFY_INTERVAL),
            verify_full_interval: self.positive(
                "audit.verify_full_interval",
                raw.verify_full_interval,
                DEFAULT_AUDIT_VERIFY_FULL_INTERVAL,
            ),
            synchronous_full,
            deny_on_failure,
            keep_query,
            forward,
        }
    }

    fn memory(&mut self, raw: Option<&str>) -> u64 {
        self.size("cache.memory", raw, DEFAULT_CACHE_MEMORY)
    }

    /// A byte size: `256MiB`, `1GiB`, `500MB`, `4096`.
    fn size(&mut self, field: &str, raw: Option<&str>, default: u64) -> u64 {
        let Some(text) = raw else { return default };
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let factor: Option<u64> = match unit.trim() {
            "" | "B" => Some(1),
            "KiB" => Some(1 << 10),
            "MiB" => Some(1 << 20),
            "GiB" => Some(1 << 30),
            "KB" => Some(1_000),
            "MB" => Some(1_000_000),
            "GB" => Some(1_000_000_000),
            _ => None,
        };
        match (digits.parse::<u64>(), factor) {
            (Ok(n), Some(f)) if n > 0 => n.saturating_mul(f),
            _ => {
                self.err(field, format!("invalid size {text:?}: use e.g. 256MiB, 1GiB, 500MB"));
                default
            }
        }
    }

    fn jwt(&mut self, raw: &RawJwt) -> Jwt {
        for (field, value) in [("issuer", &raw.issuer), ("audience", &raw.audience), ("keys", &raw.keys)] {
            if value.trim().is_empty() {
                self.err(format!("identity.jwt.{field}"), "must not be empty");
            }
        }
        Jwt {
            issuer: raw.issuer.clone(),
            audience: raw.audience.clone(),
            keys: PathBuf::from(&raw.keys),
            role_claim: raw.role_claim.clone().unwrap_or_else(|| "role".to_owned()),
            leeway: raw.leeway.map_or(Duration::from_secs(30), |d| d.0),
            new_tokens_per_client: self.client_rate(
                "identity.jwt.new_tokens_per_client",
                raw.new_tokens_per_client.as_ref(),
                DEFAULT_NEW_TOKENS_PER_CLIENT,
            ),
        }
    }

    fn client_rate(&mut self, field: &str, raw: Option<&RawClientRate>, default: ClientRate) -> ClientRate {
        let Some(raw) = raw else { return default };
        if raw.rate == 0 {
            self.err(format!("{field}.rate"), "must be at least 1 a second");
        }
        if raw.burst == Some(0) {
            self.err(format!("{field}.burst"), "must be at least 1");
        }
        let burst = raw.burst.unwrap_or(raw.rate.saturating_mul(4));
        ClientRate { rate: raw.rate.max(1), burst: burst.max(1) }
    }

    fn access(&mut self, base: RouteAt, r: &RawRoute, raw: &RawConfig) -> Access {
        let public = r.public.unwrap_or(false);
        match (&r.policy, public) {
            (Some(_), true) => {
                self.err(format!("{base}.public"), "a public route cannot also name a policy");
                Access::Public
            }
            (None, true) => {
                if r.identity.is_some() || r.action.is_some() {
                    self.err(format!("{base}.public"), "a public route takes no identity or action");
                }
                Access::Public
            }
            (None, false) => Access::Unset,
            (Some(decision), false) => {
                let valid = decision.strip_prefix("data.").is_some_and(|rest| {
                    !rest.is_empty()
                        && rest.split('.').all(|p| {
                            !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                        })
                });
                if !valid {
                    self.err(
                        format!("{base}.policy"),
                        format!(
                            "invalid decision {decision:?}: expected a rule path like data.government.digital.allow"
                        ),
                    );
                }
                if raw.policies.is_none() {
                    self.err(format!("{base}.policy"), "names a policy but no `policies: {dir: …}` is configured");
                }
                let identity = match r.identity {
                    Some(RawIdentityMode::Optional) => IdentityMode::Optional,
                    _ => IdentityMode::Required,
                };
                if identity == IdentityMode::Required && raw.identity.jwt.is_none() {
                    self.err(
                        format!("{base}.identity"),
                        "requires identity but no `identity.jwt` is configured (or set `identity: optional`)",
                    );
                }
                Access::Policy {
                    decision: decision.clone(),
                    identity,
                    action: r.action.clone().unwrap_or_else(|| "service_request".to_owned()),
                }
            }
        }
    }

    fn runtime(&mut self, raw: &RawRuntime) -> Runtime {
        let threads = match raw.threads {
            Some(0) => {
                self.err("runtime.threads", "must be at least 1 (leave it out for one per CPU)");
                None
            }
            Some(n) if n > MAX_THREADS => {
                self.err("runtime.threads", format!("{n} is more than {MAX_THREADS}"));
                None
            }
            t => t,
        };
        let tls_handshake_threads = match raw.tls_handshake_threads {
            Some(n) if n > MAX_THREADS => {
                self.err("runtime.tls_handshake_threads", format!("{n} is more than {MAX_THREADS}"));
                0
            }
            n => n.unwrap_or(0),
        };
        Runtime { threads, work_stealing: raw.work_stealing.unwrap_or(false), tls_handshake_threads }
    }
}

/// Two listen addresses conflict when they would bind the same port on overlapping
/// interfaces. Port 0 never conflicts: the OS hands out distinct ports.
fn conflicts(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || b.port() == 0 || a.port() != b.port() {
        return false;
    }
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

/// `routes[3]`, formatted only when an error needs it: validating a large config
/// should not allocate a path string per field.
#[derive(Clone, Copy)]
struct RouteAt(usize);

impl Display for RouteAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "routes[{}]", self.0)
    }
}

/// `upstreams.NAME.endpoints[2]`, formatted lazily like [`RouteAt`].
#[derive(Clone, Copy)]
struct EndpointAt<'a>(&'a str, usize);

impl Display for EndpointAt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstreams.{}.endpoints[{}]", self.0, self.1)
    }
}

/// Why a route path could never equal a canonical request path, if it could not.
fn path_problem(p: &str) -> Option<&'static str> {
    if !p.starts_with('/') {
        return Some("must start with '/'");
    }
    if p.bytes().any(|b| !(0x21..0x7f).contains(&b) || matches!(b, b'?' | b'#' | b'\\')) {
        return Some("must be printable ASCII without spaces, '?', '#' or '\\'");
    }
    let segments: Vec<&str> = p[1..].split('/').collect();
    let inner_empty = segments.iter().rev().skip(1).any(|s| s.is_empty());
    if inner_empty || segments.iter().any(|s| *s == "." || *s == "..") {
        return Some("requests are matched on their canonical path, which has no '.' or '..' segments and no '//'");
    }
    let bytes = p.as_bytes();
    for (i, _) in p.match_indices('%') {
        let escape = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        let value =
            escape.filter(|h| !h.bytes().any(|b| b.is_ascii_lowercase())).and_then(|h| u8::from_str_radix(h, 16).ok());
        match value {
            None => return Some("a '%' must start an escape with two upper-case hex digits, as in canonical paths"),
            Some(v) if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                return Some("requests are matched on their canonical path, where unreserved characters are never escaped: write the character itself")
            }
            Some(v) if v < 0x20 || v == 0x7f => return Some("encoded control characters are refused in requests"),
            Some(_) => {}
        }
    }
    None
}

/// A URL's scheme, its `user:password@` if any, its host and port, and the rest.
fn url_parts(url: &str) -> (&str, Option<&str>, &str, &str) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rfind('@') {
        Some(at) => (scheme, Some(&authority[..=at]), &authority[at + 1..], tail),
        None => (scheme, None, authority, tail),
    }
}

/// Is the Redis a URL names on this machine's loopback (`127.0.0.0/8`, `::1`, `localhost`)?
/// Then the node is the trust boundary, as for an admin listener on loopback.
fn redis_is_loopback(url: &str) -> bool {
    let (_, _, host_port, _) = url_parts(url);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A URL (Redis's, a collector's) for a message or a log line: as written, but with any
/// `user:password@` shown as `…@`, so that a credential in it is never repeated.
pub fn url_for_message(url: &str) -> String {
    match url_parts(url) {
        (scheme, Some(_), host_port, tail) if url.contains("://") => format!("{scheme}://…@{host_port}{tail}"),
        _ => url.to_owned(),
    }
}
