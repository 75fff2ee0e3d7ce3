//! Request path step 10, "log": route metrics and the access log line, one per request.

use pingora_error::Error;
use pingora_proxy::Session;

use super::ctx::RequestCtx;

pub fn request_done(session: &Session, e: Option<&Error>, ctx: &RequestCtx) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let elapsed = ctx.timing.started.elapsed();
    match ctx.route() {
        Some(r) => r.metrics.record(status, elapsed),
        None => ctx.snapshot.no_route_metrics.record(status, elapsed),
    }
    if ctx.snapshot.config.logging.access_log {
        let req = session.req_header();
        // Requests refused before canonicalisation are logged as received.
        let (host, path) = if ctx.request.canonical.path().is_empty() {
            (
                req.uri
                    .host()
                    .or_else(|| req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
                    .unwrap_or("-"),
                req.uri.path(),
            )
        } else {
            (ctx.request.canonical.host(), ctx.request.canonical.path())
        };
        tracing::info!(
            target: "edgegate::access",
            request_id = %ctx.request.id,
            method = %req.method,
            host,
            path,
            route = ctx.route().map_or(crate::metrics::NO_ROUTE, |r| r.name()),
            upstream = ctx.upstream.address.map(tracing::field::display),
            status,
            duration_us = elapsed.as_micros() as u64,
            client = session.client_addr().map(tracing::field::display),
            error = e.map(tracing::field::display),
        );
    }
}
