//! The `ProxyHttp` implementation: each Pingora hook is one step of the request path and
//! only dispatches — the steps are in [`steps`] and `edgegate_filters`, the cache in
//! `cache`, endpoint choice in `balancer`, peers in `peer`.
//!
//! Hook contracts, in the order Pingora calls them:
//! - `new_ctx`: one snapshot load per request; the request keeps that snapshot to the end.
//! - `request_filter`: request id → framing → normalise → redirect → route → access →
//!   rate limit → in-flight cap → cache lookup.
//!   Returns `true` when it answered the client itself (a refusal, a redirect or a cache
//!   hit); such requests never reach an upstream.
//! - `upstream_peer`: the endpoint, through the one peer builder.
//! - `upstream_request_filter`: the canonical request line, hop-by-hop removal,
//!   forwarding headers.
//! - `upstream_response_filter` / `fail_to_connect` / `error_while_proxy`: retries.
//! - `response_filter` / `response_body_filter`: headers out, cache store.
//! - `fail_to_proxy`: stale-if-error, else upstream failures become 502/504 JSON replies.
//! - `logging`: metrics and the access log line.

pub mod ctx;
mod forward;
mod log;
mod ready;
pub mod reply;
pub mod steps;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use edgegate_filters::headers::names_to_strip;
use edgegate_filters::identity::{CheckLane, TokenCheck};
use edgegate_filters::Decision;
use http::header::{HeaderValue, STRICT_TRANSPORT_SECURITY};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::balancer::clock::ms_at;
use crate::balancer::endpoint::Attempt;
use crate::balancer::Tried;
use crate::cache::fill::Capture;
use crate::cache::lookup::{self, CacheLookup, HitSource};
use crate::cache::serve::{self, HIT};
use crate::retry;
use crate::state::GatewayState;
pub use ctx::RequestCtx;
use ready::ready_hook;
use reply::{respond, upstream_failure};
use steps::X_REQUEST_ID;

pub struct EdgeProxy {
    state: Arc<GatewayState>,
}

impl EdgeProxy {
    pub fn new(state: Arc<GatewayState>) -> EdgeProxy {
        EdgeProxy { state }
    }

    /// Request path steps 1–5 (everything before the cache): `Continue`, or the answer
    /// that ends the request here; `None` when a token's signature is to be checked, which
    /// waits for the worker's turn (see [`EdgeProxy::access_steps`]).
    fn request_steps(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Option<Decision>> {
        crate::connection::head_received(session.stream());
        let mut decision = steps::framing(session, ctx);
        steps::request_id(session.req_header(), ctx)?;
        steps::keepalive(session, &ctx.snapshot.config.limits);
        steps::send_timeout(session, &ctx.snapshot.config.limits);
        ctx.request.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.request.h2 = session.is_http2();
        ctx.request.listener =
            session.server_addr().and_then(|a| a.as_inet()).and_then(|a| self.state.listeners.of(*a));
        ctx.request.peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        if let Some(peer) = ctx.request.peer {
            let trusted = &ctx.snapshot.config.trusted_proxies;
            let (client, peer_trusted) = crate::forwarded::client_ip(peer, &session.req_header().headers, trusted);
            (ctx.request.client_ip, ctx.request.peer_trusted) = (Some(client), peer_trusted);
        }
        if decision == Decision::Continue {
            decision = steps::normalise(session.req_header(), ctx);
        }
        if decision == Decision::Continue {
            decision = steps::redirect(session.req_header(), ctx);
        }
        if decision == Decision::Continue {
            decision = steps::route(session.req_header(), ctx);
        }
        if decision == Decision::Continue {
            decision = steps::upgrade(session.req_header(), ctx);
        }
        if decision == Decision::Continue {
            return Ok(self.access_steps(session, ctx, TokenCheck::Later));
        }
        Ok(Some(decision))
    }

    /// Request path steps 4–5 and the route's limits; `None` when a token's signature is to
    /// be checked and `check` is `Later`. A check costs 18–40 µs of the worker's CPU: run
    /// as requests come, a flood of tokens that never verify (each checked anew) would run
    /// hundreds of them back to back while the worker's other requests wait; the request
    /// instead waits for the worker's turn for a dear step (which TLS handshakes' steps
    /// take too: one such step per scheduler round) and asks again with `Charged`.
    fn access_steps(&self, session: &mut Session, ctx: &mut RequestCtx, check: TokenCheck) -> Option<Decision> {
        let mut decision = steps::access(&self.state, session, ctx, check)?;
        if decision == Decision::Continue {
            decision = steps::rate_limit(session.req_header(), ctx);
        }
        if decision == Decision::Continue {
            decision = steps::inflight(ctx);
        }
        Some(decision)
    }

    /// The request after steps 1–5: answered from the cache or on to the upstream, or
    /// refused with `decision`'s reply. `true` when the client was answered here.
    async fn after_steps(&self, session: &mut Session, ctx: &mut RequestCtx, decision: Decision) -> Result<bool> {
        match decision {
            Decision::Continue => {
                if steps::awaits_end_of_stream(ctx) {
                    if let Some(reply) = steps::end_of_stream(session, ctx).await {
                        self.state.metrics.gateway_reply(reply.status, reply.error);
                        respond(session, ctx, &reply).await?;
                        return Ok(true);
                    }
                }
                self.cache_lookup(session, ctx).await
            }
            Decision::Respond(reply) => {
                self.state.metrics.gateway_reply(reply.status, reply.error);
                respond(session, ctx, &reply).await?;
                Ok(true)
            }
        }
    }

    /// Request path step 6; `true` when the client was answered from the cache.
    async fn cache_lookup(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(route) = ctx.route() else { return Ok(false) };
        let req = session.req_header();
        // Freshness and `Age` as of the request's arrival, the clock read it already made.
        let arrived = ctx.timing.started;
        let found =
            lookup::lookup(&self.state, route, req, &ctx.request.canonical, ctx.identity.user_id.as_deref(), arrived);
        let (entry, state) = match found.await {
            CacheLookup::Bypass => {
                if route.spec.cache.is_some() {
                    ctx.cache.result = "bypass";
                }
                return Ok(false);
            }
            CacheLookup::Refresh { key } => {
                ctx.cache.result = "refresh";
                ctx.cache.key = Some(key);
                return Ok(false);
            }
            CacheLookup::Miss { key, fill } => {
                route.metrics.cache_miss.inc();
                ctx.cache.result = "miss";
                (ctx.cache.key, ctx.cache.fill) = (Some(key), fill);
                return Ok(false);
            }
            CacheLookup::Hit(entry, source) => {
                route.metrics.cache_hit.inc();
                let coalesced = source == HitSource::Coalesced;
                if coalesced {
                    route.metrics.cache_coalesced.inc();
                }
                ctx.cache.result = if coalesced { "coalesced" } else { "hit" };
                (entry, HIT)
            }
            CacheLookup::Stale(entry) => {
                route.metrics.cache_stale.inc();
                ctx.cache.result = "stale";
                (entry, "STALE")
            }
        };
        serve::serve(
            session,
            &entry,
            &ctx.request.id_header,
            &self.state.cache.status_header,
            state,
            ctx.hsts(),
            arrived,
        )
        .await?;
        Ok(true)
    }

    /// `response_filter`: the response head as the client gets it.
    fn response_head(&self, session: &mut Session, response: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        // A WebSocket handshake's 101 keeps the headers that complete it.
        let upgraded = ctx.request.websocket && response.status == http::StatusCode::SWITCHING_PROTOCOLS;
        if upgraded {
            crate::connection::tunnel(session.stream());
        }
        // Iterated by reference: moving the inline list into its iterator copied it.
        let names = names_to_strip(&response.headers);
        for name in &names {
            if upgraded && (name == http::header::UPGRADE || name == http::header::CONNECTION) {
                continue;
            }
            response.remove_header(name);
        }
        response.insert_header(X_REQUEST_ID, ctx.request.id_header.clone())?;
        if let Some(key) = ctx.cache.key.take() {
            let route_cache = ctx.route().and_then(|r| r.spec.cache.as_ref());
            ctx.cache.capture = route_cache
                .and_then(|rc| Capture::start(key, response, rc, &self.state.cache.status_header, ctx.timing.started));
            response.insert_header(self.state.cache.status_header.clone(), HeaderValue::from_static("MISS"))?;
        }
        if let Some(hsts) = ctx.hsts() {
            response.insert_header(STRICT_TRANSPORT_SECURITY, hsts.clone())?;
        }
        Ok(())
    }

    /// `logging`: metrics, the access log line, the audit record and the span.
    fn request_done(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // One clock read for the request's duration: metrics, audit record and span agree.
        let elapsed = ctx.timing.started.elapsed();
        if e.is_some_and(|e| e.etype() == &ErrorType::WriteTimedout && e.esource() == &ErrorSource::Downstream) {
            self.state.metrics.slow_reads.inc();
        }
        log::request_done(session, e, ctx, elapsed);
        if let Some(sink) = &self.state.audit {
            log::audit(sink, session, ctx, elapsed);
        }
        if let Some(spans) = &self.state.spans {
            if ctx.request.trace.sampled() {
                log::span(spans, session, ctx, elapsed);
            }
        }
        crate::connection::request_done(session.stream());
    }
}

/// `Box::pin(make())` with the future written straight into its box (`Box::write`):
/// `make()` only stores the future's arguments, so no stack copy of the future is made
/// and moved.
#[inline(always)]
fn boxed_in_place<'a, F: Future<Output = Result<bool>> + Send + 'a>(
    make: impl FnOnce() -> F,
) -> Pin<Box<dyn Future<Output = Result<bool>> + Send + 'a>> {
    let boxed: Box<F> = Box::write(Box::new_uninit(), make());
    Box::into_pin(boxed)
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    // Boxed: Pingora moves the context by value from `new_ctx` into the request's future and
    // on through its steps, and a `RequestCtx` is ~660 bytes; a box moves as a pointer.
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::write(Box::new_uninit(), RequestCtx::new(self.state.snapshot.load_full(), &self.state.metrics.inflight))
    }

    // No downstream modules. Pingora's default registers its response-compression module
    // switched off (level 0), which still built a context and ran two filters, three
    // allocations, on every request; edgegate does not compress responses.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    // Written without `async`: the steps before the cache are synchronous and run here, and
    // only what waits (the cache lookup, or writing a refusal) becomes the returned future,
    // built directly in its box. `#[async_trait]`'s `Box::pin(async move { .. })` built the
    // whole hook's future on the stack and copied it into the box: 2.6 KiB per request.
    fn request_filter<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        ctx: &'life2 mut Box<RequestCtx>,
    ) -> Pin<Box<dyn Future<Output = Result<bool>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        match self.request_steps(session, ctx) {
            Err(e) => Box::pin(std::future::ready(Err(e))),
            Ok(Some(Decision::Continue)) if !steps::awaits_end_of_stream(ctx) => {
                boxed_in_place(move || self.cache_lookup(session, ctx))
            }
            Ok(Some(decision)) => boxed_in_place(move || self.after_steps(session, ctx, decision)),
            Ok(None) => {
                // A client that sent a forged token a moment ago waits behind everyone else; a
                // returning one (its token verified lately) goes before.
                let lane =
                    ctx.snapshot.guards.verifier.as_ref().map_or(CheckLane::Usual, |v| v.lane(ctx.request.client_ip));
                // A worker offered more checks than it makes (a flood of forgeries from many
                // addresses) serves its line newest first: those it passes over are asked to
                // come again after `limits.token_check_wait` rather than holding their
                // connections until the flood ends.
                let wait = ctx.snapshot.config.limits.token_check_wait;
                boxed_in_place(move || async move {
                    let decision = loop {
                        // Nothing awaited between the turn and the check: the check runs in
                        // the poll that holds the turn.
                        let turn = async {
                            match lane {
                                CheckLane::First => pingora_core::listeners::tls::take_turn_first().await,
                                CheckLane::Usual => pingora_core::listeners::tls::take_turn().await,
                                CheckLane::Last => pingora_core::listeners::tls::take_turn_last().await,
                            }
                        };
                        if pingora_timeout::timeout(wait, turn).await.is_err() {
                            break steps::token_check_timed_out(ctx);
                        }
                        if let Some(decision) = self.access_steps(session, ctx, TokenCheck::Charged) {
                            break decision;
                        }
                    };
                    self.after_steps(session, ctx, decision).await
                })
            }
        }
    }

    // The hooks from here on that never wait do their work when called and return a ready
    // future of no size (`ready`): `async fn` allocated each one's box on every request.
    ready_hook! {
        fn request_body_filter<'a, 'b, 'c>(
            self,
            _session: &'a mut Session,
            body: &'b mut Option<Bytes>,
            end_of_stream: bool,
            ctx: &'c mut Box<RequestCtx>,
        ) -> Result<()> {
            ready::done(steps::request_body(body, end_of_stream, ctx))
        }
    }

    // Pingora's defaults, answered without a box.
    ready_hook! {
        fn early_request_filter<'a, 'b>(
            self,
            _session: &'a mut Session,
            _ctx: &'b mut Box<RequestCtx>,
        ) -> Result<()> {
            ready::answer::<ready::Through>()
        }
    }

    ready_hook! {
        fn proxy_upstream_filter<'a, 'b>(
            self,
            _session: &'a mut Session,
            _ctx: &'b mut Box<RequestCtx>,
        ) -> Result<bool> {
            ready::answer::<ready::Proceed>()
        }
    }

    ready_hook! {
        fn connected_to_upstream<'a, 'b, 'c, 'd>(
            self,
            _session: &'a mut Session,
            _reused: bool,
            _peer: &'b HttpPeer,
            _fd: std::os::unix::io::RawFd,
            _digest: Option<&'c pingora_core::protocols::Digest>,
            _ctx: &'d mut Box<RequestCtx>,
        ) -> Result<()> {
            ready::answer::<ready::Through>()
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Box<RequestCtx>) -> Result<Box<HttpPeer>> {
        // Each attempt is sent the body from its start (a retry replays what was read), so
        // the body's count and a held-back last byte (`steps::request_body`) start again.
        ctx.request.body_seen = 0;
        ctx.request.held_back = None;
        let route = ctx.route().ok_or_else(|| Error::explain(ErrorType::InternalError, "no route in upstream_peer"))?;
        // One clock read for the pick and the attempt's start.
        let clock = tokio::time::Instant::now();
        let now = ms_at(clock);
        let pool = &route.pool;
        if ctx.upstream.tried == Tried::default() {
            retry::on_request(pool, now);
        }
        let index = pool.pick(now, ctx.upstream.tried).ok_or_else(|| {
            Error::explain(ErrorType::ConnectNoRoute, format!("upstream group {} has no endpoint", pool.name()))
        })?;
        let endpoint = Arc::clone(&pool.endpoints[index]);
        let peer = crate::peer::http_peer(endpoint.address, route.upstream_tls.as_deref(), &route.spec.timeouts);
        ctx.upstream.address = Some(endpoint.address);
        ctx.upstream.tried.add(index);
        ctx.upstream.first_started.get_or_insert(clock);
        // Replacing a failed attempt ends it: it no longer counts as in flight.
        ctx.upstream.attempt = Some(Attempt::start_at(endpoint, index, clock));
        Ok(Box::new(peer))
    }

    ready_hook! {
        fn upstream_response_filter<'a, 'b, 'c>(
            self,
            session: &'a mut Session,
            upstream_response: &'b mut ResponseHeader,
            ctx: &'c mut Box<RequestCtx>,
        ) -> Result<()> {
            ready::done(answered(session, upstream_response, ctx))
        }
    }

    fn fail_to_connect(
        &self,
        _: &mut Session,
        _: &HttpPeer,
        ctx: &mut Box<RequestCtx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent: any method may be retried, within the budget.
        let retry = match (ctx.upstream.attempt.take(), ctx.route.and_then(|i| ctx.snapshot.route(i))) {
            (Some(attempt), Some(route)) => retry::on_connect_failure(&route.pool, &attempt, &mut ctx.upstream.retries),
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
        ctx: &mut Box<RequestCtx>,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if matches!(e.etype(), ErrorType::HTTPStatus(_)) && e.retry() {
            // Our own status-based retry from `upstream_response_filter`, already booked.
            return e;
        }
        let replayable =
            idempotent(session) && !session.as_ref().retry_buffer_truncated() && session.response_written().is_none();
        let retry = match (ctx.upstream.attempt.take(), ctx.route.and_then(|i| ctx.snapshot.route(i))) {
            (Some(attempt), Some(route)) => {
                retry::on_proxy_error(&route.pool, &attempt, &e, client_reused, replayable, &mut ctx.upstream.retries)
            }
            _ => false,
        };
        e.set_retry(retry);
        e
    }

    ready_hook! {
        fn upstream_request_filter<'a, 'b, 'c>(
            self,
            session: &'a mut Session,
            upstream_request: &'b mut RequestHeader,
            ctx: &'c mut Box<RequestCtx>,
        ) -> Result<()> {
            ready::done(forward::upstream_request(upstream_request, ctx, session.stream()))
        }
    }

    ready_hook! {
        fn response_filter<'a, 'b, 'c>(
            self,
            session: &'a mut Session,
            response: &'b mut ResponseHeader,
            ctx: &'c mut Box<RequestCtx>,
        ) -> Result<()> {
            ready::done(self.response_head(session, response, ctx))
        }
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<Option<Duration>> {
        if let Some(capture) = ctx.cache.capture.as_mut() {
            if let Some(chunk) = body {
                capture.push(chunk);
            }
            if end_of_stream {
                if let Some(capture) = ctx.cache.capture.take() {
                    capture.finish(&self.state.cache.responses, self.state.cache.l2.as_ref());
                }
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Box<RequestCtx>) -> FailToProxy {
        // stale-if-error: the upstream could not answer, an expired copy may.
        if e.esource() != &ErrorSource::Downstream && session.response_written().is_none() {
            if let Some(stale) = ctx.cache.key.as_deref().and_then(|k| self.state.cache.responses.get_stale(k)) {
                let status_header = &self.state.cache.status_header;
                let served = serve::serve(
                    session,
                    &stale,
                    &ctx.request.id_header,
                    status_header,
                    "STALE",
                    ctx.hsts(),
                    Instant::now(),
                )
                .await;
                if served.is_ok() {
                    return FailToProxy { error_code: stale.status, can_reuse_downstream: false };
                }
            }
        }
        let reply = upstream_failure(e);
        let mut code = reply.as_ref().map_or(0, |r| r.status);
        if let Some(reply) = reply {
            if let Some(written) = session.response_written() {
                // Headers already went out: nothing to do but cut the response short.
                code = written.status.as_u16();
            } else {
                // The connection is not reused after a failure: say so, so the client does
                // not send its next request into a closing socket.
                session.set_keepalive(None);
                self.state.metrics.gateway_reply(reply.status, reply.error);
                if let Err(write_err) = respond(session, ctx, &reply).await {
                    tracing::debug!(request_id = %ctx.request.id, error = %write_err, "could not send error reply");
                }
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    ready_hook! {
        fn logging<'a, 'b, 'c>(
            self,
            session: &'a mut Session,
            e: Option<&'b Error>,
            ctx: &'c mut Box<RequestCtx>,
        ) -> () {
            self.request_done(session, e, ctx);
            ready::answer::<ready::Nothing>()
        }
    }
}

/// `upstream_response_filter`: the pod's answer books the attempt, and a status the route
/// retries on discards it for another attempt.
fn answered(session: &Session, upstream_response: &ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
    let (Some(attempt), Some(route)) = (&ctx.upstream.attempt, ctx.route.and_then(|i| ctx.snapshot.route(i))) else {
        return Ok(());
    };
    let status = upstream_response.status.as_u16();
    // One clock read for the estimate, the endpoint's histogram and the access log.
    let clock = tokio::time::Instant::now();
    ctx.upstream.answered_after = ctx.upstream.first_started.map(|first| clock.saturating_duration_since(first));
    if retry::on_response(&route.pool, attempt, status, idempotent(session), &mut ctx.upstream.retries, clock) {
        // Discard this answer and ask Pingora for another attempt (`upstream_peer`
        // picks an endpoint not tried yet).
        let mut e = Error::explain(ErrorType::HTTPStatus(status), "retrying on upstream status");
        e.set_retry(true);
        return Err(e);
    }
    Ok(())
}

/// Requests that may be sent twice without changing the outcome (RFC 9110 §9.2.2).
fn idempotent(session: &Session) -> bool {
    session.req_header().method.is_idempotent()
}
