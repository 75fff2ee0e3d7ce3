//! The request filter's steps before the cache, in order: framing, request id,
//! normalise, redirect, route, access. Each returns what happened ([`Decision`]); the hook in
//! `proxy` only sequences them and writes a refusal.

use std::time::Duration;

use edgegate_filters::access::{self, Subject};
use edgegate_filters::framing;
use edgegate_filters::identity::TokenCheck;
use edgegate_filters::normalise::{CanonicalRequest, Refusal};
use edgegate_filters::ratelimit::LimitOutcome;
use edgegate_filters::{Decision, Reply, RequestId};
use http::header::{HeaderName, HeaderValue, HOST};
use pingora_core::protocols::http::ServerSession;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use crate::router::RouteMatch;
use crate::snapshot::RouteInfo;
use crate::state::GatewayState;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The client's request id when it is a valid one (forwarded as the very same value, no
/// copy), else a new one; and the request's trace (the client's `traceparent`, else new).
/// A field the framing walk did not note is not looked up (a head refused before the walk
/// noted nothing: both are).
pub fn request_id(req: &RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
    let checked = ctx.request.checked;
    let traceparent = if checked.is_none_or(|c| c.traceparent) { req.headers.get(&TRACEPARENT) } else { None };
    ctx.request.trace = edgegate_filters::trace::TraceContext::from_header_sampling(
        traceparent.map(HeaderValue::as_bytes),
        ctx.snapshot.config.tracing.sample_ppm,
    );
    let incoming = if checked.is_none_or(|c| c.request_id) { req.headers.get(&X_REQUEST_ID) } else { None };
    match incoming.and_then(|v| RequestId::parse(v.as_bytes()).map(|id| (id, v.clone()))) {
        Some((id, value)) => (ctx.request.id, ctx.request.id_header) = (id, value),
        None => {
            ctx.request.id = RequestId::generate();
            // The value owns a copy of the id in one allocation that its clones (the request
            // to the pod, the response) share; a copied slice would be moved to shared storage,
            // a second allocation, at its first clone.
            ctx.request.id_header = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(ctx.request.id))
                .map_err(|_| Error::explain(ErrorType::InternalError, "generated request id is not a header value"))?;
        }
    }
    Ok(())
}

/// An HTTP/2 request that declares no body (`content-length: 0`): the pod would be sent a
/// whole request at once, before the gateway has seen whether the client keeps its word —
/// DATA after it makes the request malformed, and an intermediary must not forward one
/// (RFC 9113 §8.1.1) — so it is held until its stream ends (see [`end_of_stream`]). The
/// bytes themselves never reach the pod either way: the HTTP/2 layer drops what overruns a
/// declared length.
/// HTTP/1 needs no such wait: there the bytes after a `Content-Length: 0` head are the next
/// request, read and checked as one. Read from the length the body-limit step parsed.
pub fn awaits_end_of_stream(ctx: &RequestCtx) -> bool {
    ctx.request.h2_length == Some(0)
}

/// Waits, at most `limits.head_timeout`, for the end of a stream [`awaits_end_of_stream`]
/// holds (a stream its HEADERS frame ended is done at once). DATA with bytes in it makes
/// the request malformed (RFC 9113 §8.1.1: an intermediary must not forward it): 400
/// `content_length_mismatch` — the HTTP/2 layer usually resets the stream first, and then
/// nothing is written. No end in time: 408.
pub async fn end_of_stream(session: &mut Session, ctx: &RequestCtx) -> Option<Reply> {
    // Read from the stream itself: Pingora takes `content-length: 0` for a body already
    // done and would not look.
    let ServerSession::H2(stream) = session.as_downstream_mut() else { return None };
    let body = async {
        loop {
            match stream.read_body_bytes().await {
                Ok(None) => return true,
                Ok(Some(data)) if data.is_empty() => {}
                Ok(Some(_)) | Err(_) => return false,
            }
        }
    };
    match tokio::time::timeout(ctx.snapshot.config.limits.head_timeout, body).await {
        Ok(true) => None,
        Ok(false) => Some(Reply::new(400, "content_length_mismatch")),
        Err(_) => Some(Reply::new(408, "request_head_timeout")),
    }
}

/// An idle keep-alive client connection is closed after `limits.keepalive_timeout`
/// (Pingora's default keeps it forever). A connection the client or the request already
/// ruled out of reuse stays that way.
pub fn keepalive(session: &mut Session, limits: &edgegate_config::Limits) {
    let limit = limits.keepalive_timeout.as_secs().max(1);
    if let Some(current) = session.as_downstream().get_keepalive() {
        if current == 0 || current > limit {
            session.as_downstream_mut().set_keepalive(Some(limit));
        }
    }
}

/// A client that takes none of a response for `limits.send_timeout` is cut off (nginx's
/// `send_timeout`): Pingora's downstream write timeout, per write — so a slow client is
/// served at its pace, one that stopped reading is not. Without it a client that never
/// reads (or an HTTP/2 client that never opens its flow-control window) held each
/// request's response buffers (up to ~0.4 MiB as read from the pod) and its pod connection
/// for as long as it kept the connection open.
pub fn send_timeout(session: &mut Session, limits: &edgegate_config::Limits) {
    session.as_downstream_mut().set_write_timeout(Some(limits.send_timeout));
}

/// `send_timeout` bounds how long one stalled response is held; this bounds how many are
/// held at once (`limits.max_stalled_responses`): a response write that has waited
/// [`STALLED_AFTER`](edgegate_config::STALLED_AFTER) on its client counts as stalled, and
/// past the limit the one stalled longest is cut off (Pingora patch 48). Process-wide: set at
/// start and on every reload.
pub fn apply_stalled_limit(limits: &edgegate_config::Limits) {
    pingora_core::protocols::http::stalled::set_stalled_write_limit(
        limits.max_stalled_responses,
        edgegate_config::STALLED_AFTER,
    );
}

/// Request path step 1, first half: framing a second parser could read another way
/// (request smuggling shapes), a lower-case method and fields that would make the pod run
/// another method or target are refused before anything else looks at the request; fields
/// only a proxy may set are noted for removal. It runs first: the request id and trace
/// steps read what its walk over the fields noted (the refusal it returns carries the id).
pub fn framing(session: &Session, ctx: &mut RequestCtx) -> Decision {
    let limits = &ctx.snapshot.config.limits;
    let req = session.req_header();
    let raw = match session.as_downstream() {
        ServerSession::H1(h1) => Some(h1.get_headers_raw_bytes()),
        _ => None,
    };
    let target = req.raw_path();
    // An absolute-form target's authority is kept off the URI; read it from the target.
    let absolute = ["http://", "https://"].iter().find_map(|scheme| {
        let rest = target.strip_prefix(scheme.as_bytes())?;
        let end = rest.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).ok()
    });
    let head = framing::Head {
        raw: raw.as_deref(),
        method: req.method.as_str(),
        headers: &req.headers,
        authority: req.uri.authority().map(|a| a.as_str()).or(absolute),
        query: req.uri.query(),
        max_bytes: limits.header_bytes,
        max_headers: limits.headers,
    };
    match framing::check(&head) {
        Ok(checked) => {
            ctx.request.checked = Some(checked);
            Decision::Continue
        }
        Err(refusal) => Decision::Respond(Reply::new(refusal.status(), refusal.code())),
    }
}

/// Request path step 1: the canonical host and path, or why the request is refused.
/// A target that is not valid UTF-8 is refused before its bytes are looked at.
pub fn normalise(req: &RequestHeader, ctx: &mut RequestCtx) -> Decision {
    match canonical(req) {
        Ok(mut c) => {
            c.drop_default_port(if ctx.request.tls { 443 } else { 80 });
            ctx.request.canonical = c;
            Decision::Continue
        }
        Err(refusal) => Decision::Respond(Reply::new(400, refusal.code())),
    }
}

fn canonical(req: &RequestHeader) -> std::result::Result<CanonicalRequest, Refusal> {
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

/// A plain listener that only redirects: `308` to the same canonical host and path over
/// HTTPS (`port` 443 is left out of the URL).
pub fn redirect(req: &RequestHeader, ctx: &RequestCtx) -> Decision {
    let listener = ctx.request.listener.and_then(|i| ctx.snapshot.config.listeners.get(i));
    let Some(port) = listener.and_then(|l| l.redirect_https) else { return Decision::Continue };
    let host = ctx.request.canonical.host();
    if host.is_empty() {
        return Decision::Respond(Reply::new(400, "bad_host"));
    }
    let target = ctx.request.canonical.target(req.uri.query());
    let location =
        if port == 443 { format!("https://{host}{target}") } else { format!("https://{host}:{port}{target}") };
    Decision::Respond(Reply::new(308, "https_required").with_header("location", location))
}

/// Request path step 2: match the canonical host and path and the method against the
/// snapshot's table; the matched route then rules on encoded slashes.
pub fn route(req: &RequestHeader, ctx: &mut RequestCtx) -> Decision {
    let canonical = &ctx.request.canonical;
    match ctx.snapshot.table.find(canonical.host(), canonical.path(), req.method.as_str()) {
        RouteMatch::Found(idx) => {
            let allow = ctx.snapshot.route(idx).is_some_and(|r| r.spec.allow_encoded_slash);
            if let Err(refusal) = canonical.check_route(allow) {
                return Decision::Respond(Reply::new(400, refusal.code()));
            }
            ctx.route = Some(idx);
            body_limit(req, ctx)
        }
        RouteMatch::NotFound => Decision::Respond(Reply::new(404, "no_route")),
        RouteMatch::MethodNotAllowed(allowed) => Decision::Respond(
            Reply::new(405, "method_not_allowed").with_header("allow", allowed.names().collect::<Vec<_>>().join(", ")),
        ),
    }
}

/// `Upgrade` is honoured only on routes that declare `websocket: true`, and there only as
/// a WebSocket handshake (GET, HTTP/1.1, `Connection: upgrade`); anywhere else it is
/// refused, so no other protocol is tunnelled past the gateway's checks. `Upgrade: h2c` is
/// the exception: clients such as `curl --http2` offer it on every plain request, and a
/// server may decline it by ignoring it (RFC 9110 §7.8), which the gateway does.
pub fn upgrade(req: &RequestHeader, ctx: &mut RequestCtx) -> Decision {
    let Some(value) = req.headers.get(http::header::UPGRADE) else { return Decision::Continue };
    let websocket_route = ctx.route().is_some_and(|r| r.spec.websocket);
    if value.as_bytes().eq_ignore_ascii_case(b"h2c") && !websocket_route {
        return Decision::Continue;
    }
    if !websocket_route {
        return Decision::Respond(Reply::new(400, "upgrade_not_allowed"));
    }
    // `Connection: upgrade`, read as the hop-by-hop step reads Connection's tokens.
    let mut tokens = Vec::new();
    edgegate_filters::headers::connection_tokens(&req.headers, &mut tokens);
    let connection_upgrade = tokens.contains(&http::header::UPGRADE);
    let handshake = req.method == http::Method::GET
        && req.version == http::Version::HTTP_11
        && value.as_bytes().eq_ignore_ascii_case(b"websocket")
        && connection_upgrade;
    if !handshake {
        return Decision::Respond(Reply::new(400, "bad_upgrade"));
    }
    ctx.request.websocket = true;
    Decision::Continue
}

/// The route's body limit: a declared `Content-Length` above it is refused at once, before
/// anything reaches the pod; a chunked body is counted as it streams (`request_body`).
fn body_limit(req: &RequestHeader, ctx: &mut RequestCtx) -> Decision {
    let limit = ctx.route().and_then(|r| r.spec.body_limit).unwrap_or(ctx.snapshot.config.limits.body);
    ctx.request.body_limit = limit;
    let declared =
        req.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Decision::Respond(Reply::new(413, "payload_too_large")),
        _ => {
            ctx.request.h2_length = declared.filter(|_| ctx.request.h2);
            Decision::Continue
        }
    }
}

/// A chunk of the request body on its way upstream: past the limit, the request fails with
/// 413 (the pod sees the request cut short, never a completed oversized one).
///
/// Over HTTP/2 with a declared length, the body's last byte is held back until the stream
/// ends: DATA beyond the length makes the request malformed (RFC 9113 §8.1.1), and the pod
/// must not have a whole request by then. The HTTP/2 layer resets such a stream before
/// passing the extra bytes on, so the held byte is never sent and the pod's request stays
/// incomplete. A stream whose last DATA frame ends it (the usual case) holds nothing back.
pub fn request_body(body: &mut Option<bytes::Bytes>, end: bool, ctx: &mut RequestCtx) -> Result<()> {
    ctx.request.body_seen += body.as_ref().map_or(0, |c| c.len() as u64);
    if ctx.request.body_seen > ctx.request.body_limit {
        return Err(Error::explain(ErrorType::HTTPStatus(413), "request body over the route's limit"));
    }
    let Some(declared) = ctx.request.h2_length else { return Ok(()) };
    if let Some(held) = ctx.request.held_back.take() {
        *body = Some(match body.take() {
            Some(more) if !more.is_empty() => [held, more].concat().into(),
            _ => held,
        });
    }
    if !end && ctx.request.body_seen == declared {
        if let Some(chunk) = body.as_mut().filter(|c| !c.is_empty()) {
            ctx.request.held_back = Some(chunk.split_off(chunk.len() - 1));
        }
    }
    Ok(())
}

/// The route's in-flight count (`edgegate_route_inflight_requests`) and cap: a request
/// over `max_inflight` gets 503 rather than queueing behind the ones the pods are already
/// slow to answer.
pub fn inflight(ctx: &mut RequestCtx) -> Decision {
    let Some(route) = ctx.route() else { return Decision::Continue };
    let taken = match route.spec.max_inflight {
        Some(max) => super::ctx::take_route_slot(&route.inflight, max),
        None => {
            route.inflight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            true
        }
    };
    if !taken {
        return Decision::Respond(Reply::new(503, "route_overloaded"));
    }
    ctx.route_slot = true;
    Decision::Continue
}

/// Request path step 3 on a public route: its rate limit, per client address or header
/// value, after routing. 429 with `Retry-After`. A route with identity and policy is limited
/// in `access`, between the two.
pub fn rate_limit(req: &RequestHeader, ctx: &RequestCtx) -> Decision {
    let Some(route) = ctx.route() else { return Decision::Continue };
    // A route with identity and policy had its limit checked between the two (`access`).
    if route.spec.access != edgegate_config::Access::Public {
        return Decision::Continue;
    }
    match over_limit(req, ctx, route, None) {
        None => Decision::Continue,
        Some(retry_after) => Decision::Respond(Reply::too_many_requests("rate_limited", retry_after)),
    }
}

/// Whether this request is over `route`'s rate limit (and how long to wait), keyed as the
/// route says: by the client's address, the verified user (`user`), or a field. Counted in
/// `edgegate_rate_limited_total` when it is.
fn over_limit(req: &RequestHeader, ctx: &RequestCtx, route: &RouteInfo, user: Option<&str>) -> Option<Duration> {
    let limiter = route.limiter.as_ref()?;
    // The client's address, or its IPv6 /64 (which it can rotate through), as text.
    let ip = || {
        ctx.request
            .client_ip
            .map_or_else(String::new, |ip| edgegate_filters::addr::client_str(ip, &mut [0u8; 64]).to_owned())
    };
    let key = match &limiter.config().key {
        edgegate_config::RateLimitKey::ClientIp => ip(),
        edgegate_config::RateLimitKey::User => match user {
            Some(user) => format!("user:{user}"),
            None => format!("ip:{}", ip()),
        },
        edgegate_config::RateLimitKey::Header(name) => req
            .headers
            .get(name.as_str())
            .map_or_else(String::new, |v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
    };
    match limiter.check(&key) {
        LimitOutcome::Allowed => None,
        LimitOutcome::Limited { retry_after } => {
            route.metrics.rate_limited.inc();
            Some(retry_after)
        }
    }
}

/// A request whose token's check waited `limits.token_check_wait` for its worker's turn:
/// 503 `try_again` with `Retry-After: 1`, its access outcome `token_check_timed_out`,
/// counted on the route's decisions.
pub fn token_check_timed_out(ctx: &mut RequestCtx) -> Decision {
    if let Some(route) = ctx.route() {
        route.metrics.policy.token_check_timeouts.inc();
    }
    ctx.identity.outcome = "token_check_timed_out";
    Decision::Respond(access::try_again())
}

/// Request path steps 4, 3 and 5: identity, the route's rate limit and policy for the
/// matched route, decided in `edgegate_filters::access` on the canonical request and
/// counted here. `None` when a token's signature is to be checked and `check` is
/// [`TokenCheck::Later`]: nothing is decided or counted, and the caller asks again with
/// [`TokenCheck::Charged`] once it holds the worker's turn for a dear step.
pub fn access(state: &GatewayState, session: &Session, ctx: &mut RequestCtx, check: TokenCheck) -> Option<Decision> {
    let Some(route) = ctx.route() else { return Some(Decision::Continue) };
    if route.spec.access == edgegate_config::Access::Public {
        // Nothing to decide or count: skip building the subject.
        ctx.identity.outcome = "public";
        return Some(Decision::Continue);
    }
    let req = session.req_header();
    let encrypted = ctx.request.tls || ctx.request.listener.is_some_and(|i| state.listeners.behind_tls(i));
    let subject = Subject {
        route: route.name(),
        method: req.method.as_str(),
        host: ctx.request.canonical.host(),
        path: ctx.request.canonical.path(),
        query: req.uri.query(),
        headers: &req.headers,
        encrypted,
        client_ip: ctx.request.client_ip,
        audit_enabled: state.audit.as_ref().is_some_and(|a| a.policy_input()),
    };
    let verdict = access::decide_limited(&ctx.snapshot.guards, &route.spec.access, &subject, check, |user| {
        over_limit(req, ctx, route, user)
    });
    if verdict.outcome == access::AccessOutcome::AwaitsTurn {
        return None;
    }
    crate::access::count(route.name(), &verdict, &route.metrics.policy);
    let decision = match verdict.outcome.reply() {
        Some(reply) => Decision::Respond(reply),
        None => Decision::Continue,
    };
    ctx.identity.user_id = verdict.user_id;
    ctx.identity.outcome = verdict.outcome.name();
    Some(decision)
}
