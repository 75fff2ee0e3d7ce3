//! Request path step 9, "cache store": a cacheable upstream answer is captured as it
//! streams to the client and stored, in L1 and (in the background) in Redis, when
//! complete.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use edgegate_config::RouteCache;
use edgegate_filters::cache::{Cached, ResponseCache, MAX_ENTRY_BYTES};
use http::header::{HeaderName, HeaderValue};
use pingora_http::ResponseHeader;

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
    /// When the request that fetches the answer arrived: a purge after it may have been
    /// meant for this answer, which is then not stored.
    fetched: Instant,
}

impl Capture {
    /// Starts capturing `response` when it may be stored for the route (see
    /// `edgegate_filters::cache::freshness`).
    pub fn start(
        key: String,
        response: &ResponseHeader,
        route: &RouteCache,
        status_header: &HeaderName,
        fetched: Instant,
    ) -> Option<Capture> {
        let fresh = edgegate_filters::cache::freshness(response.status.as_u16(), &response.headers, route)?;
        Some(Capture::new(key, response, fresh, route, status_header, fetched))
    }

    /// Starts capturing; the response headers are taken as they go to the client (after
    /// hop-by-hop removal), minus the per-request id.
    fn new(
        key: String,
        response: &ResponseHeader,
        fresh_for: Duration,
        route: &RouteCache,
        status_header: &HeaderName,
        fetched: Instant,
    ) -> Capture {
        let headers = response
            .headers
            .iter()
            // Framing headers are rewritten when the entry is served.
            .filter(|(n, _)| *n != status_header && !edgegate_filters::cache::written_per_answer(n))
            // Own copies: the parsed values are slices of the upstream read buffer, and a
            // clone would keep that whole buffer alive for the entry's lifetime.
            .filter_map(|(n, v)| owned_header(n, v))
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
            fetched,
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

    /// Stores the complete answer in L1 and, in the background, in Redis — unless a purge
    /// of its key came after its request arrived (the answer may be what the purge was
    /// for). The body is kept in an allocation of exactly its size.
    pub fn finish(self, cache: &ResponseCache, l2: Option<&std::sync::Arc<super::l2::L2>>) {
        if self.too_big {
            return;
        }
        let body = if self.body.capacity() > self.body.len() {
            Bytes::copy_from_slice(&self.body)
        } else {
            self.body.freeze()
        };
        let entry = Cached {
            status: self.status,
            headers: self.headers,
            body,
            stored: Instant::now(),
            fresh_for: self.fresh_for,
            stale_for: self.stale_for,
            revalidate_for: self.revalidate_for,
            head: Default::default(),
        };
        let key = l2.map(|_| self.key.clone());
        if let (Ok(stored), Some(l2), Some(key)) = (cache.insert_fetched(self.key, entry, self.fetched), l2, key) {
            l2.put(key, &stored);
        }
    }
}

/// A header in its own exact-size allocations, sharing nothing with a read buffer.
pub(super) fn owned_header(n: &HeaderName, v: &HeaderValue) -> Option<(HeaderName, HeaderValue)> {
    let name = HeaderName::from_bytes(n.as_str().as_bytes()).ok()?;
    let mut value = HeaderValue::from_bytes(v.as_bytes()).ok()?;
    value.set_sensitive(v.is_sensitive());
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `inner` points into `outer`'s memory.
    fn within(inner: &[u8], outer: &Bytes) -> bool {
        let (start, end) = (outer.as_ptr() as usize, outer.as_ptr() as usize + outer.len());
        (start..end).contains(&(inner.as_ptr() as usize))
    }

    #[test]
    fn a_stored_entry_keeps_no_upstream_read_buffer_alive() {
        // The upstream's read buffer: parsed header values and body chunks are slices of it.
        let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut response = ResponseHeader::build(200, None).expect("header");
        let etag = HeaderValue::from_maybe_shared(buffer.slice(100..120)).expect("value");
        response.insert_header(http::header::ETAG, etag).expect("insert");
        let route = RouteCache::with_ttl(Duration::from_secs(60));
        let status_header = HeaderName::from_static("x-cache");
        let mut capture =
            Capture::start("k".into(), &response, &route, &status_header, Instant::now()).expect("cacheable");
        capture.push(&buffer.slice(1000..1300));
        let cache = ResponseCache::new(1 << 20);
        capture.finish(&cache, None);
        let entry = cache.get("k").expect("stored");
        let (_, etag) = entry.headers.iter().find(|(n, _)| n == http::header::ETAG).expect("etag kept");
        assert_eq!(etag.as_bytes(), &buffer[100..120]);
        assert!(!within(etag.as_bytes(), &buffer), "the header value must be a copy, not a slice of the buffer");
        assert_eq!(entry.body.len(), 300);
        assert!(!within(&entry.body, &buffer), "the body must be a copy, not a slice of the buffer");
    }
}
