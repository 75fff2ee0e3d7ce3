//! The response cache on the request path: lookup (step 6) runs after identity and
//! policy allowed the request, so a cached answer never bypasses authorization; a
//! cacheable upstream answer is captured as it streams to the client and stored when
//! complete (step 9). Hits carry `Age` and `X-Cache: HIT`, misses `X-Cache: MISS`.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use edgegate_config::RouteCache;
use edgegate_filters::cache::{Cached, ResponseCache, MAX_ENTRY_BYTES};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

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
    /// Starts capturing; the response headers are taken as they go to the client (after
    /// hop-by-hop removal), minus the per-request id.
    pub fn new(
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
    pub fn finish(self, cache: &ResponseCache, l2: Option<&std::sync::Arc<crate::l2::L2>>) {
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

pub const HIT: &str = "HIT";

/// The response head shared by every hit of an entry: the stored headers, its
/// `Content-Length`, `X-Cache: HIT`, and placeholders for `Age` and `X-Request-Id`.
fn head(hit: &Cached, status_header: &HeaderName) -> Result<ResponseHeader> {
    let mut header = ResponseHeader::build(hit.status, Some(hit.headers.len() + 4))?;
    for (name, value) in &hit.headers {
        header.append_header(name.clone(), value.clone())?;
    }
    header.insert_header(CONTENT_LENGTH, hit.body.len())?;
    header.insert_header(status_header.clone(), HeaderValue::from_static(HIT))?;
    header.insert_header(AGE, HeaderValue::from_static("0"))?;
    header.insert_header(X_REQUEST_ID, HeaderValue::from_static("-"))?;
    Ok(header)
}

/// Writes a cached answer to the client; `state` is `HIT`, or `STALE` when serving past
/// freshness because the upstream failed.
pub async fn serve(
    session: &mut Session,
    hit: &Cached,
    request_id: &HeaderValue,
    status_header: &HeaderName,
    state: &'static str,
) -> Result<()> {
    let head = match hit.head.get() {
        Some(head) => head,
        None => {
            let built = head(hit, status_header)?;
            hit.head.get_or_init(|| built)
        }
    };
    // Every header this answer carries is already in the clone; the per-hit ones replace
    // their placeholders in place.
    let mut header = head.clone();
    header.insert_header(AGE, hit.age().as_secs())?;
    header.insert_header(X_REQUEST_ID, request_id.clone())?;
    if state != HIT {
        header.insert_header(status_header.clone(), HeaderValue::from_static(state))?;
    }
    session.write_response_header(Box::new(header), false).await?;
    session.write_response_body(Some(hit.body.clone()), true).await
}
