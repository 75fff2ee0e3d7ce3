//! stale-while-revalidate: a route may answer from an expired entry (within its window)
//! while one background request — outside any client request — refreshes the entry.
//! The refresh holds the key's coalescing guard, so there is at most one per key. It
//! connects through the same peer builder and connector as traffic: TLS groups are
//! refreshed over TLS with their SNI and CA, within the route's timeouts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use edgegate_config::{RouteCache, RouteTimeouts};
use edgegate_filters::cache::{freshness, Cached, FillGuard, ResponseCache, MAX_ENTRY_BYTES};
use edgegate_filters::headers::names_to_strip;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::HeaderMap;
use pingora_core::connectors::http::Connector;
use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;

use crate::balancer::clock::now_ms;
use crate::balancer::endpoint::Attempt;
use crate::balancer::{Pool, Tried};
use crate::snapshot::RouteInfo;
use crate::tls::PeerTls;

/// What the refresh asks the upstream: the original request's target and the headers
/// that are part of the cache key.
pub struct Refresh {
    pub key: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub route: RouteCache,
    pub timeout: Duration,
    pub timeouts: RouteTimeouts,
    pub tls: Option<Arc<PeerTls>>,
}

impl Refresh {
    /// The refresh of `req`'s entry: its canonical target and the headers its key is made of.
    pub fn new(
        key: String,
        req: &pingora_http::RequestHeader,
        canonical: &edgegate_filters::normalise::CanonicalRequest,
        route: &RouteCache,
        info: &RouteInfo,
    ) -> Refresh {
        let mut headers = HeaderMap::new();
        for name in std::iter::once("accept-encoding").chain(route.vary.iter().map(String::as_str)) {
            for v in req.headers.get_all(name) {
                if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                    headers.append(name, v.clone());
                }
            }
        }
        // The host the entry is keyed by, as a proxied request sends it (`proxy/forward.rs`),
        // not the spelling of whichever request found the entry stale.
        if !canonical.host().is_empty() {
            if let Ok(host) = http::HeaderValue::from_str(&canonical.upstream_host()) {
                headers.insert(http::header::HOST, host);
            }
        }
        Refresh {
            key,
            path_and_query: canonical.target(req.uri.query()),
            headers,
            route: route.clone(),
            timeout: info.spec.timeouts.read,
            timeouts: info.spec.timeouts,
            tls: info.upstream_tls.clone(),
        }
    }
}

/// Starts the refresh on the current runtime.
pub fn spawn(
    cache: Arc<ResponseCache>,
    pool: Arc<Pool>,
    connector: Arc<Connector>,
    guard: FillGuard,
    refresh: Refresh,
) {
    tokio::spawn(async move {
        // Released when the refresh ends, so waiting requests look again.
        let _guard = guard;
        let Some(index) = pool.pick(now_ms(), Tried::default()) else { return };
        let attempt = Attempt::start(Arc::clone(&pool.endpoints[index]), index);
        let started = Instant::now();
        match tokio::time::timeout(refresh.timeout, fetch(&connector, &attempt, &refresh)).await {
            Ok(Ok((status, mut headers, body))) => {
                attempt.endpoint.ewma.observe(started.elapsed(), now_ms(), pool.config.balancer.decay);
                for name in names_to_strip(&headers) {
                    headers.remove(&name);
                }
                for name in [CONTENT_LENGTH, TRANSFER_ENCODING] {
                    headers.remove(name);
                }
                let Some(fresh_for) = freshness(status, &headers, &refresh.route) else { return };
                if body.len() > MAX_ENTRY_BYTES {
                    return;
                }
                // Not stored when a purge of the key came after the refresh was sent.
                let _ = cache.insert_fetched(
                    refresh.key,
                    Cached {
                        status,
                        headers: headers.iter().filter_map(|(n, v)| super::fill::owned_header(n, v)).collect(),
                        body,
                        stored: Instant::now(),
                        fresh_for,
                        stale_for: refresh.route.stale_if_error,
                        revalidate_for: refresh.route.stale_while_revalidate,
                        head: Default::default(),
                    },
                    started,
                );
            }
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %attempt.endpoint.address, error = %e, "background refresh failed")
            }
            Err(_) => tracing::debug!(endpoint = %attempt.endpoint.address, "background refresh timed out"),
        }
    });
}

async fn fetch(
    connector: &Connector,
    attempt: &Attempt,
    refresh: &Refresh,
) -> pingora_error::Result<(u16, HeaderMap, Bytes)> {
    let peer = crate::peer::http_peer(attempt.endpoint.address, refresh.tls.as_deref(), &refresh.timeouts);
    let (mut session, _) = connector.get_http_session(&peer).await?;
    let mut request = RequestHeader::build("GET", refresh.path_and_query.as_bytes(), Some(refresh.headers.len()))?;
    for (name, value) in &refresh.headers {
        request.append_header(name.clone(), value.clone())?;
    }
    session.write_request_header(Box::new(request)).await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    let (status, headers) = match session.response_header() {
        Some(r) => (r.status.as_u16(), r.headers.clone()),
        None => return Err(Error::explain(ErrorType::InvalidHTTPHeader, "no response header")),
    };
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_response_body().await? {
        if body.len() + chunk.len() > MAX_ENTRY_BYTES {
            return Err(Error::explain(ErrorType::InternalError, "answer too large to cache"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, headers, Bytes::copy_from_slice(&body)))
}
