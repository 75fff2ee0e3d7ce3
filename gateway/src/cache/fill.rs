//! Request path step 9, "cache store": a cacheable upstream answer is captured as it
//! streams to the client and stored, in L1 and (in the background) in Redis, when
//! complete.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use edgegate_config::RouteCache;
use edgegate_filters::cache::{Cached, ResponseCache, MAX_ENTRY_BYTES};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora_http::ResponseHeader;

const AGE: HeaderName = HeaderName::from_static("age");
const X_REQUEST_ID: &str = "x-request-id";

/// An upstream answer on its way into the cache.
pub struct Capture {
    key: String,
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    fresh_for: Duration,
    stale_for: Duration,
    revalidate_for: Duration,
    body: BytesMut,
    too_big: bool,
}

impl Capture {
    /// Starts capturing `response` when it may be stored for the route (see
    /// `edgegate_filters::cache::freshness`).
    pub fn start(
        key: String,
        response: &ResponseHeader,
        route: &RouteCache,
        status_header: &HeaderName,
    ) -> Option<Capture> {
        let fresh = edgegate_filters::cache::freshness(response.status.as_u16(), &response.headers, route)?;
        Some(Capture::new(key, response, fresh, route, status_header))
    }

    /// Starts capturing; the response headers are taken as they go to the client (after
    /// hop-by-hop removal), minus the per-request id.
    fn new(
        key: String,
        response: &ResponseHeader,
        fresh_for: Duration,
        route: &RouteCache,
        status_header: &HeaderName,
    ) -> Capture {
        let headers = response
            .headers
            .iter()
            // Framing headers are rewritten when the entry is served.
            .filter(|(n, _)| {
                n.as_str() != X_REQUEST_ID
                    && *n != status_header
                    && *n != AGE
                    && *n != CONTENT_LENGTH
                    && *n != TRANSFER_ENCODING
            })
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        Capture {
            key,
            status: response.status.as_u16(),
            headers,
            fresh_for,
            stale_for: route.stale_if_error,
            revalidate_for: route.stale_while_revalidate,
            body: BytesMut::new(),
            too_big: false,
        }
    }

    pub fn push(&mut self, chunk: &Bytes) {
        if self.too_big || self.body.len() + chunk.len() > MAX_ENTRY_BYTES {
            self.too_big = true;
            self.body = BytesMut::new();
            return;
        }
        self.body.extend_from_slice(chunk);
    }

    /// Stores the complete answer in L1 and, in the background, in Redis.
    pub fn finish(self, cache: &ResponseCache, l2: Option<&std::sync::Arc<super::l2::L2>>) {
        if self.too_big {
            return;
        }
        let entry = Cached {
            status: self.status,
            headers: self.headers,
            body: self.body.freeze(),
            stored: Instant::now(),
            fresh_for: self.fresh_for,
            stale_for: self.stale_for,
            revalidate_for: self.revalidate_for,
            head: Default::default(),
        };
        if let Some(l2) = l2 {
            l2.put(self.key.clone(), &entry);
        }
        cache.insert(self.key, entry);
    }
}
