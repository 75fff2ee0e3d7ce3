//! Replies the gateway writes itself: refusals from the request steps and upstream
//! failures, as JSON with the request id.

use bytes::Bytes;
use edgegate_filters::Reply;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use super::steps::X_REQUEST_ID;

/// Writes a gateway-generated JSON reply. A request body the client may still be
/// sending is not read, so the connection is not reused after such a reply.
pub async fn respond(session: &mut Session, ctx: &RequestCtx, reply: &Reply) -> Result<()> {
    let body = reply.body(&ctx.request.id);
    let mut header = head(reply, ctx.request.id_header.clone(), body.len())?;
    if let Some(hsts) = ctx.hsts() {
        header.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
    }
    let has_body = edgegate_filters::framing::declares_body(&session.req_header().headers);
    // A refused request's body is never read, so the connection cannot carry another
    // request; a 400 means the request itself was malformed: close after both.
    if has_body || reply.status == 400 {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(header), false).await?;
    session.write_response_body(Some(Bytes::from(body)), true).await
}

/// The head of a gateway-written reply whose JSON body is `body_len` bytes: its status,
/// `Content-Type`, `Content-Length`, the request id and the reply's own headers.
pub fn head(reply: &Reply, request_id: HeaderValue, body_len: usize) -> Result<ResponseHeader> {
    let mut header = ResponseHeader::build_no_case(reply.status, Some(4 + reply.headers.len()))?;
    header.insert_header(CONTENT_TYPE, "application/json")?;
    header.insert_header(CONTENT_LENGTH, body_len)?;
    header.insert_header(X_REQUEST_ID, request_id)?;
    for (name, value) in &reply.headers {
        header.insert_header(*name, value.as_str())?;
    }
    Ok(header)
}

/// Maps a proxying error to the reply the client gets; `None` when the client is gone.
pub fn upstream_failure(e: &Error) -> Option<Reply> {
    use ErrorType::*;
    match (e.esource(), e.etype()) {
        (_, HTTPStatus(413)) => Some(Reply::new(413, "payload_too_large")),
        (_, HTTPStatus(code)) => Some(Reply::new(*code, "error")),
        // Raised by the balancer itself: the group has no endpoint at all (a discovered
        // group before the cluster named any).
        (_, ConnectNoRoute) => Some(Reply::new(503, "no_endpoints")),
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
        (_, ConnectRefused | ConnectError | ConnectionClosed) => Some(Reply::new(502, "upstream_unavailable")),
        _ => Some(Reply::new(500, "internal_error")),
    }
}
