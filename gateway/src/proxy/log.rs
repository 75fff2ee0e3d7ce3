//! Request path step 10, "log": route metrics and the access log line, one per request.

use pingora_error::Error;
use pingora_proxy::Session;

use super::ctx::RequestCtx;

pub fn request_done(session: &Session, e: Option<&Error>, ctx: &RequestCtx, elapsed: std::time::Duration) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    match ctx.route() {
        Some(r) => r.metrics.record(status, elapsed),
        None => ctx.snapshot.no_route_metrics.record(status, elapsed),
    }
    if ctx.snapshot.config.logging.access_log && tracing::enabled!(target: "edgegate::access", tracing::Level::INFO) {
        access_line(session, e, ctx, status, elapsed);
    }
}

/// The access-log line: written straight into the log writer's queue when logs are JSON
/// lines, through `tracing` otherwise (a terminal's human-readable lines). Both give the
/// same fields; the JSON line has the shape `tracing`'s JSON formatter gives.
fn access_line(session: &Session, e: Option<&Error>, ctx: &RequestCtx, status: u16, elapsed: std::time::Duration) {
    let req = session.req_header();
    // Requests refused before canonicalisation are logged as received.
    let (host, path) = if ctx.request.canonical.path().is_empty() {
        (
            req.uri.host().or_else(|| req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok())).unwrap_or("-"),
            req.uri.path(),
        )
    } else {
        (ctx.request.canonical.host(), ctx.request.canonical.path())
    };
    let route = ctx.route().map_or(crate::metrics::NO_ROUTE, |r| r.name());
    let duration_us = elapsed.as_micros() as u64;
    let upstream_us = ctx.upstream.answered_after.map(|d| d.as_micros() as u64);
    let Some(queue) = crate::logging::json_lines() else {
        tracing::info!(
            target: "edgegate::access",
            request_id = %ctx.request.id,
            trace_id = ctx.request.trace.trace_id(),
            method = %req.method,
            host,
            path,
            route,
            upstream = ctx.upstream.address.map(tracing::field::display),
            status,
            duration_us,
            upstream_us,
            client = session.client_addr().map(tracing::field::display),
            error = e.map(tracing::field::display),
        );
        return;
    };
    let mut line = crate::logging::JsonLine::info();
    line.str("request_id", ctx.request.id.as_str());
    line.str("trace_id", ctx.request.trace.trace_id());
    line.str("method", req.method.as_str());
    line.str("host", host);
    line.str("path", path);
    line.str("route", route);
    if let Some(upstream) = ctx.upstream.address {
        line.socket("upstream", upstream);
    }
    line.u64("status", u64::from(status));
    line.u64("duration_us", duration_us);
    if let Some(upstream_us) = upstream_us {
        line.u64("upstream_us", upstream_us);
    }
    if let Some(client) = session.client_addr() {
        match client.as_inet() {
            Some(inet) => line.socket("client", *inet),
            None => line.display("client", client),
        }
    }
    if let Some(e) = e {
        line.display("error", e);
    }
    queue.push_line(line.finish("edgegate::access"));
}

/// The request's audit record, handed to the sink's queue. Requests refused before
/// they had a canonical form (framing, malformed targets) have no route to audit and
/// are counted by the metrics above only.
pub fn audit(sink: &crate::audit::AuditSink, session: &Session, ctx: &RequestCtx, elapsed: std::time::Duration) {
    if ctx.request.canonical.path().is_empty() {
        return;
    }
    let req = session.req_header();
    let route = ctx.route();
    let rule = match route.map(|r| &r.spec.access) {
        Some(edgegate_config::Access::Policy { decision, .. }) => decision.as_str(),
        _ => "",
    };
    sink.push(crate::audit::record(&crate::audit::RecordParts {
        request_id: ctx.request.id.as_str(),
        route: route.map_or("", |r| r.name()),
        client_ip: ctx.request.client_ip,
        user: ctx.identity.user_id.as_deref(),
        method: req.method.as_str(),
        host: ctx.request.canonical.host(),
        path: ctx.request.canonical.path(),
        query: req.uri.query(),
        keep_query: sink.keep_query,
        outcome: ctx.identity.outcome,
        rule,
        config: &ctx.snapshot.fingerprint,
        status: session.response_written().map_or(0, |r| r.status.as_u16()),
        bytes: session.body_bytes_sent() as u64,
        duration_us: elapsed.as_micros() as u64,
        upstream: ctx.upstream.address,
        cache: ctx.cache.result,
        trace: ctx.request.trace,
    }));
}

/// The request's span, for a sampled trace, handed to the exporter's queue. Requests
/// refused before their trace was known (framing, malformed targets) have none.
pub fn span(queue: &crate::otlp::SpanQueue, session: &Session, ctx: &RequestCtx, elapsed: std::time::Duration) {
    if !ctx.request.trace.is_known() {
        return;
    }
    let req = session.req_header();
    let elapsed = elapsed.as_nanos() as u64;
    let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    queue.push(crate::otlp::Span {
        trace: ctx.request.trace,
        start_unix_ns: end.saturating_sub(elapsed),
        end_unix_ns: end,
        method: req.method.as_str().to_owned(),
        route: ctx.route().map_or_else(String::new, |r| r.name().to_owned()),
        host: ctx.request.canonical.host().to_owned(),
        path: ctx.request.canonical.path().to_owned(),
        status: session.response_written().map_or(0, |r| r.status.as_u16()),
        request_id: ctx.request.id.as_str().to_owned(),
        upstream: ctx.upstream.address,
        cache: ctx.cache.result,
        access: ctx.identity.outcome,
    });
}
