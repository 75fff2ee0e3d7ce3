//! The `ProxyHttp` implementation: each Pingora hook is one step of the request path
//! in DESIGN.md and only dispatches — routing is in `router`, endpoint choice in
//! `balancer`, header rules and replies in `edgegate_filters`.
//!
//! Hook contracts, in the order Pingora calls them:
//! - `new_ctx`: one snapshot load per request; the request keeps that snapshot to the end.
//! - `request_filter`: request id, host, route. Returns `true` when it answered the client
//!   itself (404/405/400); such requests never reach an upstream.
//! - `upstream_peer`: the endpoint and per-route timeouts.
//! - `upstream_request_filter` / `response_filter`: hop-by-hop removal, forwarding headers.
//! - `fail_to_proxy`: upstream failures become 502/504 JSON replies.
//! - `logging`: metrics and the access log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use edgegate_config::Access;
use edgegate_filters::headers::names_to_strip;
use edgegate_filters::normalise::{CanonicalRequest, Refusal};
use edgegate_filters::{Decision, Reply, RequestId};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST, STRICT_TRANSPORT_SECURITY};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use prometheus::IntGauge;

use crate::access::{self, Subject};
use crate::balancer::clock::now_ms;
use crate::balancer::endpoint::Attempt;
use crate::balancer::Tried;
use crate::caching::Capture;
use crate::forwarded::forwarded_for;
use crate::retry;
use crate::router::{RouteIdx, RouteMatch};
use crate::snapshot::{GatewayState, Snapshot};
use edgegate_filters::cache::{self, freshness, Fill, FillGuard};

// Pre-built names: inserting by `&str` would parse the name on every request.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// How long an idle upstream connection stays in the keep-alive pool.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct EdgeProxy {
    state: Arc<GatewayState>,
}

impl EdgeProxy {
    pub fn new(state: Arc<GatewayState>) -> EdgeProxy {
        EdgeProxy { state }
    }

    /// Request path step 6: answer from the cache when the route caches and a fresh
    /// entry exists. Returns `true` when the client was answered.
    async fn cache_lookup(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(idx) = ctx.route else { return Ok(false) };
        let (Some(route), Some(info)) = (ctx.snapshot.config.routes.get(idx as usize), ctx.snapshot.route(idx)) else {
            return Ok(false);
        };
        let Some(rc) = &route.cache else { return Ok(false) };
        let req = session.req_header();
        let (host, path) = (ctx.canonical.host(), ctx.canonical.path());
        let user = ctx.user_id.as_deref();
        let Some(key) = cache::request_key(req.method.as_str(), host, path, req.uri.query(), &req.headers, rc, user)
        else {
            return Ok(false);
        };
        if cache::client_wants_fresh(&req.headers, rc) {
            // Fetch a fresh answer, and store it for the others.
            ctx.cache_key = Some(key);
            return Ok(false);
        }
        if let Some(hit) = self.state.cache.get(&key) {
            info.metrics.cache_hit.inc();
            crate::caching::serve(session, &hit, &ctx.request_id_header, &self.state.cache_header, crate::caching::HIT)
                .await?;
            return Ok(true);
        }
        // L1 miss: another gateway sharing the Redis may have it.
        if let Some(l2) = &self.state.l2 {
            if let Some(entry) = l2.get(&key).await {
                info.metrics.cache_hit.inc();
                crate::caching::serve(
                    session,
                    &entry,
                    &ctx.request_id_header,
                    &self.state.cache_header,
                    crate::caching::HIT,
                )
                .await?;
                self.state.cache.insert(key, entry);
                return Ok(true);
            }
        }
        let req = session.req_header();
        if !rc.stale_while_revalidate.is_zero() && info.upstream_tls.is_none() {
            if let Some(stale) = self.state.cache.get_revalidatable(&key) {
                // Serve the expired answer now; one background request refreshes it.
                if let Fill::Leader(guard) = self.state.cache.begin_fill(&key) {
                    let mut headers = http::HeaderMap::new();
                    for name in
                        std::iter::once("accept-encoding").chain(rc.vary.iter().map(String::as_str)).chain(["host"])
                    {
                        for v in req.headers.get_all(name) {
                            if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                                headers.append(name, v.clone());
                            }
                        }
                    }
                    let refresh = crate::revalidate::Refresh {
                        key: key.clone(),
                        path_and_query: canonical_target(&ctx.canonical, req.uri.query()),
                        headers,
                        route: rc.clone(),
                        timeout: info.timeouts.read,
                    };
                    crate::revalidate::spawn(Arc::clone(&self.state.cache), Arc::clone(&info.pool), guard, refresh);
                }
                info.metrics.cache_stale.inc();
                crate::caching::serve(session, &stale, &ctx.request_id_header, &self.state.cache_header, "STALE")
                    .await?;
                return Ok(true);
            }
        }
        match self.state.cache.begin_fill(&key) {
            Fill::Leader(guard) => ctx.fill = Some(guard),
            Fill::Follower(mut done) => {
                // Another request is fetching this key: wait for it (at most the route's
                // read timeout), then look again; go upstream ourselves if still nothing.
                let _ = tokio::time::timeout(info.timeouts.read, done.changed()).await;
                if let Some(hit) = self.state.cache.get(&key) {
                    info.metrics.cache_coalesced.inc();
                    crate::caching::serve(
                        session,
                        &hit,
                        &ctx.request_id_header,
                        &self.state.cache_header,
                        crate::caching::HIT,
                    )
                    .await?;
                    return Ok(true);
                }
            }
        }
        info.metrics.cache_miss.inc();
        ctx.cache_key = Some(key);
        Ok(false)
    }

    /// Request path steps 4–5: identity and policy for the matched route.
    fn authorize(&self, session: &Session, ctx: &RequestCtx) -> (Decision, Option<String>) {
        let Some(idx) = ctx.route else { return (Decision::Continue, None) };
        let (Some(route), Some(info)) = (ctx.snapshot.config.routes.get(idx as usize), ctx.snapshot.route(idx)) else {
            return (Decision::Continue, None);
        };
        if route.access == Access::Public {
            return (Decision::Continue, None);
        }
        let req = session.req_header();
        let encrypted = ctx.tls || ctx.listener.is_some_and(|i| self.state.behind_tls(i));
        let subject = Subject {
            route: &info.name,
            method: req.method.as_str(),
            host: ctx.canonical.host(),
            path: ctx.canonical.path(),
            query: req.uri.query(),
            headers: &req.headers,
            encrypted,
            client_ip: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
        };
        let mut user_id = None;
        let decision = access::decide(
            &ctx.snapshot.guards,
            &route.access,
            ctx.snapshot.config.audit.enabled,
            &subject,
            &info.metrics.policy,
            &mut user_id,
        );
        (decision, user_id)
    }
}

/// Counts a request as in flight for as long as its context lives, so graceful
/// shutdown knows when the last one is done, whatever path the request took.
pub struct InflightGuard(IntGauge);

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

/// Per-request state, created by `new_ctx` and dropped after `logging`.
pub struct RequestCtx {
    snapshot: Arc<Snapshot>,
    started: Instant,
    request_id: RequestId,
    /// `request_id` as a header value, built once and shared (refcounted) by the
    /// upstream request and the response.
    request_id_header: HeaderValue,
    route: Option<RouteIdx>,
    upstream: Option<SocketAddr>,
    /// The current attempt at an endpoint (counted in flight while it lives), the
    /// endpoints tried so far and the retries made.
    attempt: Option<Attempt>,
    tried: Tried,
    retries: u32,
    tls: bool,
    /// Index of the listener that accepted the connection.
    listener: Option<usize>,
    /// Set on a cache miss: the key under which the answer may be stored.
    cache_key: Option<String>,
    capture: Option<Capture>,
    /// This request is fetching its key for others waiting on it (coalescing).
    fill: Option<FillGuard>,
    /// The verified user's id, once the policy step has run.
    user_id: Option<String>,
    /// Host and path as routed, authorised, cached, logged and sent upstream; empty until
    /// `request_filter` computed it (and for requests refused before).
    canonical: CanonicalRequest,
    _inflight: InflightGuard,
}

impl RequestCtx {
    fn route(&self) -> Option<&crate::snapshot::RouteInfo> {
        self.route.and_then(|i| self.snapshot.route(i))
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snapshot: self.state.snapshot.load_full(),
            started: Instant::now(),
            // Replaced in `request_filter`, the first hook that sees the request.
            request_id: RequestId::EMPTY,
            request_id_header: HeaderValue::from_static(""),
            route: None,
            upstream: None,
            attempt: None,
            tried: Tried::default(),
            retries: 0,
            tls: false,
            listener: None,
            cache_key: None,
            capture: None,
            fill: None,
            user_id: None,
            canonical: CanonicalRequest::default(),
            _inflight: InflightGuard::new(&self.state.metrics.inflight),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let incoming = session.get_header(&X_REQUEST_ID);
        match incoming.and_then(|v| RequestId::parse(v.as_bytes()).map(|id| (id, v.clone()))) {
            // A valid id from the client is forwarded as the very same value: no copy.
            Some((id, value)) => (ctx.request_id, ctx.request_id_header) = (id, value),
            None => {
                ctx.request_id = RequestId::generate();
                ctx.request_id_header = HeaderValue::from_bytes(ctx.request_id.as_bytes()).map_err(|_| {
                    Error::explain(ErrorType::InternalError, "generated request id is not a header value")
                })?;
            }
        }
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.listener = session.server_addr().and_then(|a| a.as_inet()).and_then(|a| self.state.listener_of(*a));
        match normalise(session.req_header()) {
            Ok(canonical) => ctx.canonical = canonical,
            Err(refusal) => {
                respond(session, ctx, &Reply::new(400, refusal.code())).await?;
                return Ok(true);
            }
        }
        let redirect = ctx.listener.and_then(|i| ctx.snapshot.config.listeners.get(i)).and_then(|l| l.redirect_https);
        let decision = match redirect {
            Some(port) => https_redirect(&ctx.canonical, session.req_header().uri.query(), port),
            None => match route(session.req_header(), ctx) {
                Decision::Continue => {
                    let (decision, user_id) = self.authorize(session, ctx);
                    ctx.user_id = user_id;
                    decision
                }
                refused => refused,
            },
        };
        match decision {
            Decision::Continue => self.cache_lookup(session, ctx).await,
            Decision::Respond(reply) => {
                respond(session, ctx, &reply).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let (peer, attempt) = {
            let route =
                ctx.route().ok_or_else(|| Error::explain(ErrorType::InternalError, "no route in upstream_peer"))?;
            let now = now_ms();
            let pool = &route.pool;
            if ctx.tried == Tried::default() {
                retry::on_request(pool, now);
            }
            let index = pool.pick(now, ctx.tried).ok_or_else(|| {
                Error::explain(ErrorType::ConnectNoRoute, format!("upstream group {} has no endpoint", pool.name()))
            })?;
            let endpoint = Arc::clone(&pool.endpoints[index]);
            let mut peer = match &route.upstream_tls {
                None => HttpPeer::new(endpoint.address, false, String::new()),
                Some(tls) => {
                    let mut peer = HttpPeer::new(endpoint.address, true, tls.sni.clone());
                    peer.options.verify_cert = tls.verify;
                    peer.options.verify_hostname = tls.verify;
                    peer.options.ca = tls.ca.clone();
                    peer
                }
            };
            peer.options.connection_timeout = Some(route.timeouts.connect);
            peer.options.read_timeout = Some(route.timeouts.read);
            peer.options.write_timeout = Some(route.timeouts.write);
            peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
            (peer, Attempt::start(endpoint, index))
        };
        ctx.upstream = Some(attempt.endpoint.address);
        ctx.tried.add(attempt.index);
        // Replacing a failed attempt ends it: it no longer counts as in flight.
        ctx.attempt = Some(attempt);
        Ok(Box::new(peer))
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(attempt), Some(idx)) = (&ctx.attempt, ctx.route) else { return Ok(()) };
        let Some(route) = ctx.snapshot.route(idx) else { return Ok(()) };
        let status = upstream_response.status.as_u16();
        if retry::on_response(&route.pool, attempt, status, idempotent(session), &mut ctx.retries) {
            // Discard this answer and ask Pingora for another attempt (`upstream_peer`
            // picks an endpoint not tried yet).
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "retrying on upstream status");
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent: any method may be retried, within the budget.
        let retry = match (ctx.attempt.take(), ctx.route.and_then(|i| ctx.snapshot.route(i))) {
            (Some(attempt), Some(route)) => retry::on_connect_failure(&route.pool, &attempt, &mut ctx.retries),
            _ => false,
        };
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if matches!(e.etype(), ErrorType::HTTPStatus(_)) && e.retry() {
            // Our own status-based retry from `upstream_response_filter`, already booked.
            return e;
        }
        let replayable =
            idempotent(session) && !session.as_ref().retry_buffer_truncated() && session.response_written().is_none();
        let route = ctx.route.and_then(|i| ctx.snapshot.route(i));
        let retry = match (ctx.attempt.take(), route) {
            (Some(attempt), Some(route)) => {
                retry::on_proxy_error(&route.pool, &attempt, &e, client_reused, replayable, &mut ctx.retries)
            }
            _ => false,
        };
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The pod receives the path that was routed and authorised, in origin-form.
        if ctx.canonical.path_changed() || upstream_request.raw_path().first() != Some(&b'/') {
            let target = canonical_target(&ctx.canonical, upstream_request.uri.query());
            let uri = http::Uri::try_from(target)
                .map_err(|e| Error::because(ErrorType::InternalError, "canonical request target", e))?;
            upstream_request.set_uri(uri);
        }
        for name in names_to_strip(&upstream_request.headers) {
            upstream_request.remove_header(&name);
        }
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            let forwarded = forwarded_for(upstream_request.headers.get(&X_FORWARDED_FOR), ip)?;
            upstream_request.insert_header(X_FORWARDED_FOR, forwarded)?;
        }
        let proto = HeaderValue::from_static(if ctx.tls { "https" } else { "http" });
        upstream_request.insert_header(X_FORWARDED_PROTO, proto)?;
        upstream_request.insert_header(X_REQUEST_ID, ctx.request_id_header.clone())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        for name in names_to_strip(&upstream_response.headers) {
            upstream_response.remove_header(&name);
        }
        upstream_response.insert_header(X_REQUEST_ID, ctx.request_id_header.clone())?;
        if let Some(key) = ctx.cache_key.take() {
            let route_cache =
                ctx.route.and_then(|i| ctx.snapshot.config.routes.get(i as usize)).and_then(|r| r.cache.as_ref());
            if let Some(fresh) =
                route_cache.and_then(|c| freshness(upstream_response.status.as_u16(), &upstream_response.headers, c))
            {
                if let Some(rc) = route_cache {
                    ctx.capture = Some(Capture::new(key, upstream_response, fresh, rc, &self.state.cache_header));
                }
            }
            upstream_response.insert_header(self.state.cache_header.clone(), HeaderValue::from_static("MISS"))?;
        }
        if ctx.tls {
            let hsts =
                ctx.listener.and_then(|i| ctx.snapshot.config.listeners.get(i)).and_then(|l| l.tls.as_ref()?.hsts);
            if let Some(max_age) = hsts {
                upstream_response.insert_header(STRICT_TRANSPORT_SECURITY, format!("max-age={}", max_age.as_secs()))?;
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(capture) = ctx.capture.as_mut() {
            if let Some(chunk) = body {
                capture.push(chunk);
            }
            if end_of_stream {
                if let Some(capture) = ctx.capture.take() {
                    capture.finish(&self.state.cache, self.state.l2.as_ref());
                }
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        // stale-if-error: the upstream could not answer, an expired copy may.
        if e.esource() != &ErrorSource::Downstream && session.response_written().is_none() {
            if let Some(stale) = ctx.cache_key.as_deref().and_then(|k| self.state.cache.get_stale(k)) {
                let served =
                    crate::caching::serve(session, &stale, &ctx.request_id_header, &self.state.cache_header, "STALE")
                        .await;
                if served.is_ok() {
                    return FailToProxy { error_code: stale.status, can_reuse_downstream: false };
                }
            }
        }
        let reply = upstream_failure(e);
        let mut code = reply.as_ref().map_or(0, |r| r.status);
        if let Some(reply) = reply {
            if session.response_written().is_some() {
                // Headers already went out: nothing to do but cut the response short.
                code = session.response_written().map_or(code, |r| r.status.as_u16());
            } else if let Err(write_err) = respond(session, ctx, &reply).await {
                tracing::debug!(request_id = %ctx.request_id, error = %write_err, "could not send error reply");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        match ctx.route() {
            Some(r) => r.metrics.record(status, elapsed),
            None => ctx.snapshot.no_route_metrics.record(status, elapsed),
        }
        if ctx.snapshot.config.logging.access_log {
            let req = session.req_header();
            // Requests refused before canonicalisation are logged as received.
            let (host, path) = if ctx.canonical.path().is_empty() {
                (host_of(req).unwrap_or("-"), req.uri.path())
            } else {
                (ctx.canonical.host(), ctx.canonical.path())
            };
            tracing::info!(
                target: "edgegate::access",
                request_id = %ctx.request_id,
                method = %req.method,
                host,
                path,
                route = ctx.route().map_or(crate::metrics::NO_ROUTE, |r| r.name.as_str()),
                upstream = ctx.upstream.map(tracing::field::display),
                status,
                duration_us = elapsed.as_micros() as u64,
                client = session.client_addr().map(tracing::field::display),
                error = e.map(tracing::field::display),
            );
        }
    }
}

/// Requests that may be sent twice without changing the outcome (RFC 9110 §9.2.2).
fn idempotent(session: &Session) -> bool {
    session.req_header().method.is_idempotent()
}

/// The host a request is for: the URI authority (HTTP/2, absolute-form) or `Host`.
fn host_of(req: &RequestHeader) -> Option<&str> {
    req.uri.host().or_else(|| req.headers.get(HOST).and_then(|h| h.to_str().ok()))
}

/// Request path step 1: the canonical host and path, or why the request is refused.
/// A target that is not valid UTF-8 is refused before its bytes are looked at.
fn normalise(req: &RequestHeader) -> std::result::Result<CanonicalRequest, Refusal> {
    if !req.raw_path_is_utf8() {
        return Err(Refusal::BadPath);
    }
    let raw_host =
        req.uri.authority().map(|a| a.as_str().as_bytes()).or_else(|| req.headers.get(HOST).map(HeaderValue::as_bytes));
    // HTTP/1.0 may leave Host out: only routes without a host can match it.
    // HTTP/1.1 must send one (RFC 9112 §3.2).
    if raw_host.is_none() && req.version != http::Version::HTTP_10 {
        return Err(Refusal::BadHost);
    }
    CanonicalRequest::new(raw_host, req.uri.path().as_bytes())
}

/// Request path step 2: match the canonical host and path and the method against the
/// snapshot's table; the matched route then rules on encoded slashes.
fn route(req: &RequestHeader, ctx: &mut RequestCtx) -> Decision {
    match ctx.snapshot.table.find(ctx.canonical.host(), ctx.canonical.path(), req.method.as_str()) {
        RouteMatch::Found(idx) => {
            let allow = ctx.snapshot.config.routes.get(idx as usize).is_some_and(|r| r.allow_encoded_slash);
            if let Err(refusal) = ctx.canonical.check_route(allow) {
                return Decision::Respond(Reply::new(400, refusal.code()));
            }
            ctx.route = Some(idx);
            Decision::Continue
        }
        RouteMatch::NotFound => Decision::Respond(Reply::new(404, "no_route")),
        RouteMatch::MethodNotAllowed(allowed) => Decision::Respond(
            Reply::new(405, "method_not_allowed").with_header("allow", allowed.names().collect::<Vec<_>>().join(", ")),
        ),
    }
}

/// The canonical path with the query as received, byte for byte.
fn canonical_target(canonical: &CanonicalRequest, query: Option<&str>) -> String {
    let path = canonical.path();
    match query {
        Some(q) => {
            let mut target = String::with_capacity(path.len() + 1 + q.len());
            target.push_str(path);
            target.push('?');
            target.push_str(q);
            target
        }
        None => path.to_owned(),
    }
}

/// `308` to the same canonical host and path over HTTPS (`port` 443 is left out of the URL).
fn https_redirect(canonical: &CanonicalRequest, query: Option<&str>, port: u16) -> Decision {
    let host = canonical.host();
    if host.is_empty() {
        return Decision::Respond(Reply::new(400, "bad_host"));
    }
    let target = canonical_target(canonical, query);
    let location =
        if port == 443 { format!("https://{host}{target}") } else { format!("https://{host}:{port}{target}") };
    Decision::Respond(Reply::new(308, "https_required").with_header("location", location))
}

/// Maps a proxying error to the reply the client gets; `None` when the client is gone.
fn upstream_failure(e: &Error) -> Option<Reply> {
    use ErrorType::*;
    match (e.esource(), e.etype()) {
        (_, HTTPStatus(code)) => Some(Reply::new(*code, "error")),
        (ErrorSource::Upstream, ConnectTimedout | ReadTimedout | WriteTimedout) => {
            Some(Reply::new(504, "upstream_timeout"))
        }
        (ErrorSource::Upstream, _) => Some(Reply::new(502, "upstream_unavailable")),
        (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => None,
        (ErrorSource::Downstream, ReadTimedout) => Some(Reply::new(408, "request_timeout")),
        (ErrorSource::Downstream, _) => Some(Reply::new(400, "bad_request")),
        // Connect errors raised before a connection exists are tagged as internal by
        // Pingora's connector on some paths; they are still the upstream's fault.
        (_, ConnectTimedout) => Some(Reply::new(504, "upstream_timeout")),
        (_, ConnectRefused | ConnectNoRoute | ConnectError | ConnectionClosed) => {
            Some(Reply::new(502, "upstream_unavailable"))
        }
        _ => Some(Reply::new(500, "internal_error")),
    }
}

/// Writes a gateway-generated JSON reply. A request body the client may still be
/// sending is not read, so the connection is not reused after such a reply.
async fn respond(session: &mut Session, ctx: &RequestCtx, reply: &Reply) -> Result<()> {
    let body = reply.body(&ctx.request_id);
    let mut header = ResponseHeader::build(reply.status, Some(4 + reply.headers.len()))?;
    header.insert_header(CONTENT_TYPE, "application/json")?;
    header.insert_header(CONTENT_LENGTH, body.len())?;
    header.insert_header(X_REQUEST_ID, ctx.request_id_header.clone())?;
    for (name, value) in &reply.headers {
        header.insert_header(*name, value.as_str())?;
    }
    let has_body = {
        let h = &session.req_header().headers;
        h.contains_key(http::header::TRANSFER_ENCODING) || h.get(CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0")
    };
    if has_body {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(header), false).await?;
    session.write_response_body(Some(Bytes::from(body)), true).await
}
