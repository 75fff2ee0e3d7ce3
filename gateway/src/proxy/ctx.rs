//! The per-request context (`ProxyHttp::CTX`), grouped by concern so each step borrows
//! only its part: the request as received and canonicalised, the route, the identity, the
//! upstream attempts, the cache, and timing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use edgegate_filters::cache::FillGuard;
use edgegate_filters::normalise::CanonicalRequest;
use edgegate_filters::RequestId;
use http::HeaderValue;
use prometheus::IntGauge;

use crate::balancer::endpoint::Attempt;
use crate::balancer::Tried;
use crate::cache::fill::Capture;
use crate::router::RouteIdx;
use crate::snapshot::{RouteInfo, Snapshot};

/// Per-request state, created by `new_ctx` and dropped after `logging`.
pub struct RequestCtx {
    /// Loaded once per request; the request keeps this snapshot to the end.
    pub snapshot: Arc<Snapshot>,
    pub request: RequestPart,
    /// Index of the matched route in `snapshot.routes`.
    pub route: Option<RouteIdx>,
    pub identity: IdentityPart,
    pub upstream: UpstreamPart,
    pub cache: CachePart,
    pub timing: Timing,
    /// The request holds a place in its route's in-flight count (and `max_inflight`),
    /// given back when the context is dropped.
    pub route_slot: bool,
    _inflight: InflightGuard,
}

/// Takes a place among a route's in-flight requests if fewer than `max` are taken.
pub fn take_route_slot(counter: &std::sync::atomic::AtomicUsize, max: usize) -> bool {
    use std::sync::atomic::Ordering;
    let mut current = counter.load(Ordering::Acquire);
    loop {
        if current >= max {
            return false;
        }
        match counter.compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(actual) => current = actual,
        }
    }
}

/// The request as the client sent it, and its canonical form.
pub struct RequestPart {
    pub id: RequestId,
    /// `id` as a header value, built once and shared (refcounted) by the upstream request
    /// and the response.
    pub id_header: HeaderValue,
    /// The W3C trace this request belongs to: the client's, or a new one.
    pub trace: edgegate_filters::trace::TraceContext,
    /// Host and path as routed, authorised, cached, logged and sent upstream; empty until
    /// the normalise step ran (and for requests it refused).
    pub canonical: CanonicalRequest,
    /// The downstream connection is TLS.
    pub tls: bool,
    /// The request came over HTTP/2.
    pub h2: bool,
    /// Index of the listener that accepted the connection.
    pub listener: Option<usize>,
    /// The connection's peer.
    pub peer: Option<std::net::IpAddr>,
    /// The client by the trusted-proxy rule (`forwarded::client_ip`): what policy, limits
    /// and audit see.
    pub client_ip: Option<std::net::IpAddr>,
    /// The peer is one of `trusted_proxies`: its `X-Forwarded-For` is extended and the
    /// fields only a proxy may set reach the pod. Decided with `client_ip`.
    pub peer_trusted: bool,
    /// A WebSocket upgrade the matched route accepts: forwarded with its `Upgrade` and
    /// `Connection: upgrade`, and the 101 answer passed back with them.
    pub websocket: bool,
    /// The matched route's request body limit, and the body bytes seen so far.
    pub body_limit: u64,
    pub body_seen: u64,
    /// An HTTP/2 request's declared `content-length` (`None` over HTTP/1, or undeclared),
    /// and the body's last byte while it waits for the end of the stream (`request_body`).
    pub h2_length: Option<u64>,
    pub held_back: Option<bytes::Bytes>,
    /// What the framing checks noted of a request they let through (`None` before they ran,
    /// and for a request they refused): fields only a proxy may set
    /// (`framing::PROXY_CLAIMS`, removed on the way to the pod unless the peer is a trusted
    /// proxy), and whether the request id and trace fields are there to be looked up.
    pub checked: Option<edgegate_filters::framing::Checked>,
}

#[derive(Default)]
pub struct IdentityPart {
    /// The verified user's id, once the access step has run.
    pub user_id: Option<String>,
    /// How the access step ended (`AccessOutcome::name`); empty before it ran.
    pub outcome: &'static str,
}

#[derive(Default)]
pub struct UpstreamPart {
    /// The endpoint of the latest attempt.
    pub address: Option<SocketAddr>,
    /// The current attempt at an endpoint (counted in flight while it lives).
    pub attempt: Option<Attempt>,
    /// The endpoints tried so far.
    pub tried: Tried,
    pub retries: u32,
    /// When the first attempt started (its endpoint was picked).
    pub first_started: Option<tokio::time::Instant>,
    /// From the first attempt's start to the head of the response that was forwarded:
    /// connects, retries and the pods' time to answer (the access log's `upstream_us`).
    pub answered_after: Option<std::time::Duration>,
}

#[derive(Default)]
pub struct CachePart {
    /// Set on a miss: the key under which the answer may be stored.
    pub key: Option<String>,
    pub capture: Option<Capture>,
    /// This request is fetching its key for others waiting on it (coalescing).
    pub fill: Option<FillGuard>,
    /// What the lookup found: hit, coalesced, stale, miss, refresh, bypass; empty when
    /// no lookup ran.
    pub result: &'static str,
}

pub struct Timing {
    pub started: Instant,
}

impl RequestCtx {
    pub fn new(snapshot: Arc<Snapshot>, inflight: &IntGauge) -> RequestCtx {
        RequestCtx {
            snapshot,
            request: RequestPart {
                // Replaced in `request_filter`, the first hook that sees the request.
                id: RequestId::EMPTY,
                id_header: HeaderValue::from_static(""),
                trace: edgegate_filters::trace::TraceContext::EMPTY,
                canonical: CanonicalRequest::default(),
                tls: false,
                h2: false,
                listener: None,
                peer: None,
                client_ip: None,
                peer_trusted: false,
                websocket: false,
                body_limit: u64::MAX,
                body_seen: 0,
                h2_length: None,
                held_back: None,
                checked: None,
            },
            route: None,
            identity: IdentityPart::default(),
            upstream: UpstreamPart::default(),
            cache: CachePart::default(),
            timing: Timing { started: Instant::now() },
            route_slot: false,
            _inflight: InflightGuard::new(inflight),
        }
    }

    /// `Strict-Transport-Security` for this request's responses: set on a TLS listener
    /// with `tls.hsts`.
    pub fn hsts(&self) -> Option<&HeaderValue> {
        if !self.request.tls {
            return None;
        }
        self.snapshot.hsts.get(self.request.listener?)?.as_ref()
    }

    /// The matched route, once the route step found one.
    pub fn route(&self) -> Option<&RouteInfo> {
        self.route.and_then(|i| self.snapshot.route(i))
    }
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        if self.route_slot {
            if let Some(route) = self.route() {
                route.inflight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
    }
}

/// Counts a request as in flight for as long as its context lives, so graceful
/// shutdown knows when the last one is done, whatever path the request took.
struct InflightGuard(IntGauge);

impl InflightGuard {
    fn new(gauge: &IntGauge) -> InflightGuard {
        gauge.inc();
        InflightGuard(gauge.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
