//! Prometheus metrics (request path step 10, "log"). Label handles are resolved once
//! per route when a snapshot is built, so recording a request is a few atomic adds:
//! no label lookup, no lock, no allocation.

pub mod family;

use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus::proto::MetricType;

use self::family::{AtomicHistogram, ScrapeCollector, Spec};

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Policy evaluation buckets in seconds: a decision takes microseconds.
static POLICY_BUCKETS: [f64; 10] = [1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 5e-4, 1e-3, 1e-2];

/// Status-class label values, indexed by `status / 100` (0: no status or out of range).
const CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Route label for requests that matched no route.
pub const NO_ROUTE: &str = "-";

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    decisions: IntCounterVec,
    remembered: IntCounterVec,
    rate_limited: IntCounterVec,
    cache_lookups: IntCounterVec,
    pub inflight: IntGauge,
    pub config_generation: IntGauge,
    pub config_reloads: IntCounterVec,
    pub config_last_known_good: IntGauge,
    pub config_restart_required: IntGauge,
    pub tls_handshakes: IntCounterVec,
    /// Of those, the handshakes that resumed a session (a ticket or a cached session id).
    pub tls_resumed: IntCounterVec,
    /// Open client connections by listener.
    pub client_connections: IntGaugeVec,
    /// Connections closed at accept because the listener was at `limits.max_connections`.
    pub connections_refused: IntCounterVec,
    /// Connections closed at accept because their client address had
    /// `limits.max_connections_per_client` open.
    pub connections_refused_per_client: IntCounter,
    /// Connections closed at accept because their client address opened more than
    /// `limits.new_connections_per_client`.
    pub connections_rate_limited: IntCounter,
    /// Connections closed because a request head took longer than `limits.head_timeout`.
    pub head_timeouts: IntCounter,
    /// TLS handshakes that failed, by reason: `timeout` (not done within
    /// `limits.head_timeout`) or `error`.
    pub tls_handshake_failures: IntCounterVec,
    /// Requests cut off because their body arrived slower than `limits.min_body_rate`.
    pub slow_bodies: IntCounter,
    /// Requests cut off because the client took none of the response for `limits.send_timeout`.
    pub slow_reads: IntCounter,
    /// Replies the gateway wrote itself, by status and error code.
    replies: IntCounterVec,
    /// 1 while the last-known-good copy could be written to the state directory.
    pub state_dir_writable: IntGauge,
    /// 1 while global rate limits run on their local `rate / nodes` fallback (Redis down).
    pub rate_limit_fallback: IntGauge,
    /// Times global rate limits went to their fallback: an episode shorter than the scrape
    /// interval leaves the gauge at 0 in every scrape, but not this.
    pub rate_limit_fallbacks: IntCounter,
    /// Requests that matched no route: one set of handles for the process's life.
    no_route: std::sync::OnceLock<RouteMetrics>,
}

/// Pre-resolved handles for one route.
#[derive(Clone)]
pub struct RouteMetrics {
    by_class: [IntCounter; 6],
    /// Duration by status class, each resolved on its first request (a route that never
    /// answers 1xx has no empty 1xx histogram in every scrape).
    /// Duration by status class, in atomics read at scrape time (a class the route never
    /// answered has no series). Shared by every snapshot the route lives in.
    pub duration: Arc<[AtomicHistogram; 6]>,
    pub policy: PolicyMetrics,
    pub cache_hit: IntCounter,
    pub cache_miss: IntCounter,
    /// Hits served after waiting for a concurrent miss of the same key.
    pub cache_coalesced: IntCounter,
    /// Expired answers served (stale-while-revalidate).
    pub cache_stale: IntCounter,
    pub rate_limited: IntCounter,
}

/// Policy decisions of one route, by result, and the evaluation time.
#[derive(Clone)]
pub struct PolicyMetrics {
    pub allow: IntCounter,
    pub deny: IntCounter,
    pub unauthenticated: IntCounter,
    /// 429s for a new token from a client with no signature checks left.
    pub token_checks_limited: IntCounter,
    /// 503s for a new token whose check waited `limits.token_check_wait` for its worker's
    /// turn.
    pub token_check_timeouts: IntCounter,
    pub errors: IntCounter,
    pub no_policy: IntCounter,
    /// Of the allows and denies, those the policy had decided before on the same input.
    pub remembered: IntCounter,
    pub evaluation: Arc<AtomicHistogram>,
}

impl RouteMetrics {
    pub fn record(&self, status: u16, elapsed: Duration) {
        // 0 (no response written) and anything outside 1xx–5xx land in slot 0.
        let class = match status {
            100..=599 => (status / 100) as usize,
            _ => 0,
        };
        self.by_class[class].inc();
        self.duration[class].observe(elapsed);
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("edgegate_requests_total", "Requests answered, by route and status class"),
            &["route", "status_class"],
        )
        .expect("static metric definition");
        let rate_limited = IntCounterVec::new(
            Opts::new("edgegate_rate_limited_total", "Requests refused with 429 by the route's rate limit"),
            &["route"],
        )
        .expect("static metric definition");
        let decisions = IntCounterVec::new(
            Opts::new(
                "edgegate_policy_decisions_total",
                "Access decisions by route and result: allow, deny, unauthenticated, token_checks_limited, token_check_timed_out, error, no_policy",
            ),
            &["route", "result"],
        )
        .expect("static metric definition");
        let remembered = IntCounterVec::new(
            Opts::new(
                "edgegate_policy_decisions_remembered_total",
                "Of the allow and deny decisions, those a request was given as the policy decided before on the \
                 same input (the same verified token's, or a worker's for requests without one), without \
                 evaluating it again",
            ),
            &["route"],
        )
        .expect("static metric definition");
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "edgegate_cache_lookups_total",
                "Response cache lookups by route and result: hit, miss, coalesced (a hit after waiting for a concurrent miss)",
            ),
            &["route", "result"],
        )
        .expect("static metric definition");
        let tls_handshakes = IntCounterVec::new(
            Opts::new("edgegate_tls_handshakes_total", "Completed TLS handshakes by listener and protocol version"),
            &["listener", "version"],
        )
        .expect("static metric definition");
        let tls_resumed = IntCounterVec::new(
            Opts::new(
                "edgegate_tls_resumed_handshakes_total",
                "Completed TLS handshakes that resumed a session, by listener and protocol version",
            ),
            &["listener", "version"],
        )
        .expect("static metric definition");
        let inflight =
            IntGauge::new("edgegate_inflight_requests", "Requests being processed").expect("static metric definition");
        let config_generation =
            IntGauge::new("edgegate_config_generation", "Generation of the config snapshot serving traffic")
                .expect("static metric definition");
        let build_info = IntGauge::with_opts(
            Opts::new("edgegate_build_info", "edgegate version, and the CPU level the running binary was built for")
                .const_label("version", env!("CARGO_PKG_VERSION"))
                .const_label("cpu_level", crate::cpu::level()),
        )
        .expect("static metric definition");
        build_info.set(1);
        let config_reloads = IntCounterVec::new(
            Opts::new("edgegate_config_reload_total", "Config reload attempts by result: applied, unchanged, error"),
            &["result"],
        )
        .expect("static metric definition");
        for result in ["applied", "unchanged", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        let config_last_known_good = IntGauge::new(
            "edgegate_config_last_known_good",
            "1 while serving the persisted last-known-good config because the configured file is unusable",
        )
        .expect("static metric definition");
        let config_restart_required = IntGauge::new(
            "edgegate_config_restart_required",
            "Settings changed in the applied config that only take effect after a restart",
        )
        .expect("static metric definition");
        let client_connections = IntGaugeVec::new(
            Opts::new("edgegate_client_connections", "Open client connections by listener"),
            &["listener"],
        )
        .expect("static metric definition");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "edgegate_connections_refused_total",
                "Client connections closed at accept because the listener was at limits.max_connections",
            ),
            &["listener"],
        )
        .expect("static metric definition");
        let connections_refused_per_client = IntCounter::new(
            "edgegate_connections_refused_per_client_total",
            "Client connections closed at accept because their address (IPv6: its /64) had limits.max_connections_per_client open",
        )
        .expect("static metric definition");
        let connections_rate_limited = IntCounter::new(
            "edgegate_connections_rate_limited_total",
            "Client connections closed at accept because their address (IPv6: its /64) opened more than limits.new_connections_per_client",
        )
        .expect("static metric definition");
        let head_timeouts = IntCounter::new(
            "edgegate_request_head_timeouts_total",
            "Client connections closed because a request head was not received within limits.head_timeout",
        )
        .expect("static metric definition");
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "edgegate_tls_handshake_failures_total",
                "Client connections closed because their TLS handshake failed: reason timeout (not done within limits.head_timeout) or error (not TLS, no parameters in common, the client gone)",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let replies = IntCounterVec::new(
            Opts::new(
                "edgegate_gateway_replies_total",
                "Replies the gateway wrote itself (refusals, limits, upstream failures), by status and error code",
            ),
            &["status", "reason"],
        )
        .expect("static metric definition");
        let state_dir_writable = IntGauge::new(
            "edgegate_state_dir_writable",
            "1 while the last-known-good config could be written to the state directory (0: a bad config would have nothing to fall back to)",
        )
        .expect("static metric definition");
        let slow_bodies = IntCounter::new(
            "edgegate_slow_request_bodies_total",
            "Requests cut off because their body arrived slower than limits.min_body_rate",
        )
        .expect("static metric definition");
        let slow_reads = IntCounter::new(
            "edgegate_slow_response_reads_total",
            "Requests cut off because the client took none of the response for limits.send_timeout",
        )
        .expect("static metric definition");
        let rate_limit_fallback = IntGauge::new(
            "edgegate_rate_limit_fallback",
            "1 while global rate limits use their local rate / nodes fallback because Redis is unavailable",
        )
        .expect("static metric definition");
        let rate_limit_fallbacks = IntCounter::new(
            "edgegate_rate_limit_fallbacks_total",
            "Times global rate limits went to their local rate / nodes fallback (Redis unreachable or slower than cache.redis.timeout)",
        )
        .expect("static metric definition");
        // The process's RSS, CPU seconds, open and maximum fds, threads and start time
        // (`process_*`), read from /proc at scrape time.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        for c in [
            Box::new(process) as Box<dyn prometheus::core::Collector>,
            Box::new(requests.clone()),
            Box::new(rate_limit_fallback.clone()),
            Box::new(rate_limit_fallbacks.clone()),
            Box::new(slow_bodies.clone()),
            Box::new(slow_reads.clone()),
            Box::new(replies.clone()),
            Box::new(state_dir_writable.clone()),
            Box::new(client_connections.clone()),
            Box::new(connections_refused.clone()),
            Box::new(connections_refused_per_client.clone()),
            Box::new(connections_rate_limited.clone()),
            Box::new(head_timeouts.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(inflight.clone()),
            Box::new(config_generation.clone()),
            Box::new(build_info),
            Box::new(config_reloads.clone()),
            Box::new(decisions.clone()),
            Box::new(remembered.clone()),
            Box::new(rate_limited.clone()),
            Box::new(config_last_known_good.clone()),
            Box::new(config_restart_required.clone()),
            Box::new(tls_handshakes.clone()),
            Box::new(tls_resumed.clone()),
            Box::new(cache_lookups.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            decisions,
            remembered,
            rate_limited,
            cache_lookups,
            inflight,
            config_generation,
            config_reloads,
            config_last_known_good,
            config_restart_required,
            tls_handshakes,
            tls_resumed,
            client_connections,
            connections_refused,
            connections_refused_per_client,
            connections_rate_limited,
            head_timeouts,
            tls_handshake_failures,
            slow_bodies,
            slow_reads,
            replies,
            state_dir_writable,
            rate_limit_fallback,
            rate_limit_fallbacks,
            no_route: std::sync::OnceLock::new(),
        }
    }

    /// Counts a reply the gateway wrote itself. Its codes are a fixed set of literals, so
    /// the label stays low-cardinality; looked up per refusal, never on a served request.
    pub fn gateway_reply(&self, status: u16, reason: &'static str) {
        count_reply(&self.replies, status, reason);
    }

    /// The replies counter itself, for a writer that has no access to the state.
    pub fn replies_vec(&self) -> IntCounterVec {
        self.replies.clone()
    }

    /// The registry, for modules that register their own families.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Handles for requests that matched no route (`route="-"`), kept across reloads.
    pub fn no_route(&self) -> RouteMetrics {
        self.no_route.get_or_init(|| self.route(NO_ROUTE)).clone()
    }

    /// Handles for one route; called when a snapshot is built, never per request.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            by_class: CLASSES.map(|class| self.requests.with_label_values(&[route, class])),
            duration: Arc::new(Default::default()),
            policy: PolicyMetrics {
                allow: self.decisions.with_label_values(&[route, "allow"]),
                deny: self.decisions.with_label_values(&[route, "deny"]),
                unauthenticated: self.decisions.with_label_values(&[route, "unauthenticated"]),
                token_checks_limited: self.decisions.with_label_values(&[route, "token_checks_limited"]),
                token_check_timeouts: self.decisions.with_label_values(&[route, "token_check_timed_out"]),
                errors: self.decisions.with_label_values(&[route, "error"]),
                no_policy: self.decisions.with_label_values(&[route, "no_policy"]),
                remembered: self.remembered.with_label_values(&[route]),
                evaluation: Arc::new(AtomicHistogram::new(&POLICY_BUCKETS)),
            },
            cache_hit: self.cache_lookups.with_label_values(&[route, "hit"]),
            cache_miss: self.cache_lookups.with_label_values(&[route, "miss"]),
            cache_coalesced: self.cache_lookups.with_label_values(&[route, "coalesced"]),
            cache_stale: self.cache_lookups.with_label_values(&[route, "stale"]),
            rate_limited: self.rate_limited.with_label_values(&[route]),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Counts one reply in `edgegate_gateway_replies_total` (`replies` is that family).
pub fn count_reply(replies: &IntCounterVec, status: u16, reason: &'static str) {
    let digits = itoa_status(status);
    let status = std::str::from_utf8(&digits).unwrap_or("other");
    replies.with_label_values(&[status, reason]).inc();
}

/// A status code's three digits, without allocating.
fn itoa_status(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [b'0' + (s / 100) as u8, b'0' + (s / 10 % 10) as u8, b'0' + (s % 10) as u8]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

static REQUEST_SPECS: [Spec; 2] = [
    Spec {
        name: "edgegate_request_duration_seconds",
        help: "Time from request start to the end of logging, by route and status class",
        kind: MetricType::HISTOGRAM,
        labels: &["route", "status_class"],
    },
    Spec {
        name: "edgegate_policy_evaluation_seconds",
        help: "Time to build the policy input and decide",
        kind: MetricType::HISTOGRAM,
        labels: &["route"],
    },
];

/// The per-route histograms of the serving snapshot, read at scrape time.
pub fn request_collector(state: Weak<crate::state::GatewayState>) -> ScrapeCollector {
    ScrapeCollector::new(&REQUEST_SPECS, move || {
        let Some(state) = state.upgrade() else { return Vec::new() };
        let snapshot = state.snapshot.load();
        let routes = snapshot
            .routes
            .iter()
            .map(|r| (r.name(), &r.metrics, matches!(r.spec.access, edgegate_config::Access::Policy { .. })));
        let mut duration = REQUEST_SPECS[0].family();
        let mut evaluation = REQUEST_SPECS[1].family();
        for (name, m, policy) in routes.chain([(NO_ROUTE, &snapshot.no_route_metrics, false)]) {
            for (class, h) in CLASSES.iter().zip(m.duration.iter()) {
                if h.count() > 0 {
                    duration.push_histogram(&[name, class], h);
                }
            }
            if policy || m.policy.evaluation.count() > 0 {
                evaluation.push_histogram(&[name], &m.policy.evaluation);
            }
        }
        vec![duration.finish(), evaluation.finish()]
    })
}

static STALLED_SPECS: [Spec; 2] = [
    Spec {
        name: "edgegate_stalled_responses",
        help: "Responses whose client has left a write waiting for over a second, now (at most limits.max_stalled_responses)",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Spec {
        name: "edgegate_stalled_responses_cut_total",
        help: "Stalled responses cut off because limits.max_stalled_responses others were stalled (the longest-stalled first)",
        kind: MetricType::COUNTER,
        labels: &[],
    },
];

static TOKEN_SPECS: [Spec; 5] = [
    Spec {
        name: "edgegate_jwt_signature_checks_total",
        help: "Bearer tokens whose signature was checked: those not remembered from the last minute, within their client's identity.jwt.new_tokens_per_client",
        kind: MetricType::COUNTER,
        labels: &[],
    },
    Spec {
        name: "edgegate_jwt_checks_waiting",
        help: "Requests whose token's signature check waits for the worker's turn now (one dear step, a check or a TLS handshake step, per scheduler round); a line that does not empty is a flood of unverifiable tokens",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Spec {
        name: "edgegate_jwt_check_waits_total",
        help: "Token signature checks that waited for their worker's turn behind another check or TLS handshake step",
        kind: MetricType::COUNTER,
        labels: &[],
    },
    Spec {
        name: "edgegate_jwt_checks_put_last_total",
        help: "Token signature checks put behind every other check and TLS handshake step: their client address sent a forged token in the last minute",
        kind: MetricType::COUNTER,
        labels: &[],
    },
    Spec {
        name: "edgegate_jwt_checks_put_first_total",
        help: "Token signature checks put before every other check and new TLS handshake: a token from their client address verified in the last hour, and it sent no forgery lately",
        kind: MetricType::COUNTER,
        labels: &[],
    },
];

/// The signature checks of every token verifier and their line on the workers, read at
/// scrape time (the line from Pingora's counts: checks take the handshakes' turns).
pub fn token_collector() -> ScrapeCollector {
    use pingora_core::listeners::tls;
    ScrapeCollector::values(&TOKEN_SPECS, || {
        [
            edgegate_filters::identity::signature_checks() as f64,
            tls::steps_waiting() as f64,
            tls::step_waits() as f64,
            edgegate_filters::identity::checks_put_last() as f64,
            edgegate_filters::identity::checks_put_first() as f64,
        ]
    })
}

static HANDSHAKE_SPECS: [Spec; 2] = [
    Spec {
        name: "edgegate_tls_handshakes_waiting",
        help: "TLS handshakes waiting for their worker's turn now (one handshake step per scheduler round beside the worker's requests); a line that does not empty is a flood of new connections",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Spec {
        name: "edgegate_tls_handshake_waits_total",
        help: "TLS handshake steps that waited for their worker's turn behind another handshake's",
        kind: MetricType::COUNTER,
        labels: &[],
    },
];

/// The TLS handshakes' line on the workers, read at scrape time from Pingora's counts.
pub fn handshake_collector() -> ScrapeCollector {
    use pingora_core::listeners::tls;
    ScrapeCollector::values(&HANDSHAKE_SPECS, || [tls::handshakes_waiting() as f64, tls::handshake_waits() as f64])
}

/// The stalled-response gauge and cut counter, read at scrape time from Pingora's
/// process-wide queue of stalled writes.
pub fn stalled_collector() -> ScrapeCollector {
    use pingora_core::protocols::http::stalled;
    ScrapeCollector::values(&STALLED_SPECS, || [stalled::stalled_writes() as f64, stalled::stalled_writes_cut() as f64])
}
