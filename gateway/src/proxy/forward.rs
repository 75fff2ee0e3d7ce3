//! Request path step 8, the request the pod receives: the canonical request line in
//! origin-form, forwarding headers and the request id added. Hop-by-hop headers (the
//! standard ones and those `Connection` names) are removed before this step by Pingora's
//! upstream request policy, which every peer sets explicitly to the standard one
//! (`peer.rs`); `gateway/tests/e2e/headers.rs` checks the pod never sees them.

use http::header::{HeaderName, HeaderValue, HOST};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;

use super::ctx::RequestCtx;
use super::steps::{TRACEPARENT, X_REQUEST_ID};
use crate::forwarded::{forwarded_for, X_FORWARDED_FOR};

// Pre-built names: inserting by `&str` would parse the name on every request.
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `client` is the client connection's stream (HTTP/1), which keeps what is the same for
/// all its requests.
pub fn upstream_request(
    upstream_request: &mut RequestHeader,
    ctx: &RequestCtx,
    client: Option<&pingora_core::protocols::Stream>,
) -> Result<()> {
    // The pod receives the path that was routed and authorised, in origin-form.
    let canonical = &ctx.request.canonical;
    if canonical.path_changed() || upstream_request.raw_path().first() != Some(&b'/') {
        let target = canonical.target(upstream_request.uri.query());
        let uri = http::Uri::try_from(target)
            .map_err(|e| Error::because(ErrorType::InternalError, "canonical request target", e))?;
        upstream_request.set_uri(uri);
    }
    // The pod is told the host that was routed, authorised and cached: the canonical name
    // (`H.TEST.` arrives as `h.test`) with the port the client named, which the cache key
    // holds. Another spelling would reach the pod unkeyed: reflected in a page (links built
    // from `Host`), it would be cached for everyone under the canonical key.
    if !canonical.host().is_empty() && !canonical.host_as_sent() {
        let value = HeaderValue::from_str(&canonical.upstream_host())
            .map_err(|e| Error::because(ErrorType::InternalError, "canonical host", e))?;
        upstream_request.insert_header(HOST, value)?;
    }
    if ctx.request.websocket {
        // The handshake's hop-by-hop pair, restored for this hop.
        upstream_request.insert_header(http::header::UPGRADE, HeaderValue::from_static("websocket"))?;
        upstream_request.insert_header(http::header::CONNECTION, HeaderValue::from_static("upgrade"))?;
    }
    // Decided with the client's address in the request filter, by the same snapshot.
    let trusted = ctx.request.peer_trusted;
    match ctx.request.peer {
        Some(peer) => {
            // A trusted proxy's list is extended; anyone else's claim is dropped.
            let forwarded = if trusted {
                forwarded_for(upstream_request.headers.get(&X_FORWARDED_FOR), peer)?
            } else {
                crate::connection::peer_forwarded_for(client, peer)?
            };
            upstream_request.insert_header(X_FORWARDED_FOR, forwarded)?;
        }
        None => {
            upstream_request.remove_header(&X_FORWARDED_FOR);
        }
    }
    // A length written with leading zeros goes on as the number alone (`Checked`).
    if let Some(length) = ctx.request.checked.and_then(|c| c.canonical_length) {
        canonical_length(upstream_request, length)?;
    }
    // The client's address, host, scheme, port or prefix as a client claimed them
    // (`Forwarded`, `X-Real-IP`, `X-Forwarded-Host`, …): only a trusted proxy's reach the pod.
    if ctx.request.checked.is_some_and(|c| c.proxy_claims) && !trusted {
        for name in edgegate_filters::framing::PROXY_CLAIMS {
            upstream_request.remove_header(name);
        }
    }
    // The same claims, or the fields set below, spelled with `_` for `-`: from anyone.
    if ctx.request.checked.is_some_and(|c| c.underscored_claims) {
        remove_underscored_claims(upstream_request);
    }
    let proto = HeaderValue::from_static(if ctx.request.tls { "https" } else { "http" });
    upstream_request.insert_header(X_FORWARDED_PROTO, proto)?;
    upstream_request.insert_header(X_REQUEST_ID, ctx.request.id_header.clone())?;
    // The trace continues at the pod with edgegate as its parent; `tracestate` passes as sent.
    let parent = HeaderValue::from_bytes(&ctx.request.trace.child())
        .map_err(|e| Error::because(ErrorType::InternalError, "traceparent", e))?;
    upstream_request.insert_header(TRACEPARENT, parent)?;
    Ok(())
}

/// The client's `Content-Length` replaced by the number alone (rare: written with leading
/// zeros). Out of line, so that the common path's code stays as it was.
#[cold]
fn canonical_length(upstream_request: &mut RequestHeader, length: u64) -> Result<()> {
    upstream_request.insert_header(http::header::CONTENT_LENGTH, length)?;
    Ok(())
}

/// Removes every field [`edgegate_filters::framing::is_underscored_proxy_field`] names (rare:
/// a client that sent one). Out of line, as [`canonical_length`].
#[cold]
fn remove_underscored_claims(upstream_request: &mut RequestHeader) {
    let disguised: Vec<http::HeaderName> = upstream_request
        .headers
        .keys()
        .filter(|n| edgegate_filters::framing::is_underscored_proxy_field(n.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in &disguised {
        upstream_request.remove_header(name);
    }
}
