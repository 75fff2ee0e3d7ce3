//! stale-while-revalidate: a route may answer from an expired entry (within its window)
//! while one background request — outside any client request — refreshes the entry.
//! The refresh holds the key's coalescing guard, so there is at most one per key.
//! Background refreshes speak plain HTTP/1.1; routes to TLS upstream groups do not
//! revalidate in the background (their stale entries are treated as misses).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgegate_config::RouteCache;
use edgegate_filters::cache::{freshness, Cached, FillGuard, ResponseCache, MAX_ENTRY_BYTES};
use edgegate_filters::headers::names_to_strip;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::balancer::clock::now_ms;
use crate::balancer::endpoint::Attempt;
use crate::balancer::{Pool, Tried};

/// What the refresh asks the upstream: the original request's target and the headers
/// that are part of the cache key.
pub struct Refresh {
    pub key: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub route: RouteCache,
    pub timeout: Duration,
}

impl Refresh {
    /// The refresh of `req`'s entry: its canonical target and the headers its key is made of.
    pub fn new(
        key: String,
        req: &pingora_http::RequestHeader,
        canonical: &edgegate_filters::normalise::CanonicalRequest,
        route: &RouteCache,
        timeout: Duration,
    ) -> Refresh {
        let mut headers = HeaderMap::new();
        for name in std::iter::once("accept-encoding").chain(route.vary.iter().map(String::as_str)).chain(["host"]) {
            for v in req.headers.get_all(name) {
                if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                    headers.append(name, v.clone());
                }
            }
        }
        Refresh { key, path_and_query: canonical.target(req.uri.query()), headers, route: route.clone(), timeout }
    }
}

/// Starts the refresh on the current runtime.
pub fn spawn(cache: Arc<ResponseCache>, pool: Arc<Pool>, guard: FillGuard, refresh: Refresh) {
    tokio::spawn(async move {
        // Released when the refresh ends, so waiting requests look again.
        let _guard = guard;
        let Some(index) = pool.pick(now_ms(), Tried::default()) else { return };
        let attempt = Attempt::start(Arc::clone(&pool.endpoints[index]), index);
        let started = Instant::now();
        match tokio::time::timeout(refresh.timeout, fetch(&attempt, &refresh)).await {
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
                cache.insert(
                    refresh.key,
                    Cached {
                        status,
                        headers: headers.iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
                        body,
                        stored: Instant::now(),
                        fresh_for,
                        stale_for: refresh.route.stale_if_error,
                        revalidate_for: refresh.route.stale_while_revalidate,
                        head: Default::default(),
                    },
                );
            }
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %attempt.endpoint.address, error = %e, "background refresh failed")
            }
            Err(_) => tracing::debug!(endpoint = %attempt.endpoint.address, "background refresh timed out"),
        }
    });
}

async fn fetch(attempt: &Attempt, refresh: &Refresh) -> anyhow::Result<(u16, HeaderMap, Bytes)> {
    let stream = tokio::net::TcpStream::connect(attempt.endpoint.address).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = Request::get(refresh.path_and_query.as_str()).body(Empty::<Bytes>::new())?;
    *request.headers_mut() = refresh.headers.clone();
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts.status.as_u16(), parts.headers, body))
}
