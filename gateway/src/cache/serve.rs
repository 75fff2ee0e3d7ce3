//! Writing a cached answer to the client (a hit, or a stale answer): one shared response
//! head per entry, cloned per hit with its own `Age` and request id.

use edgegate_filters::cache::Cached;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

const AGE: HeaderName = HeaderName::from_static("age");
const X_REQUEST_ID: &str = "x-request-id";

pub const HIT: &str = "HIT";

/// The response head shared by every hit of an entry: the stored headers, its
/// `Content-Length`, `X-Cache: HIT`, and placeholders for `Age` and `X-Request-Id`.
/// Without a case map: names go out in lower case, and a hit clones one map, not two.
fn head(hit: &Cached, status_header: &HeaderName) -> Result<ResponseHeader> {
    let mut header = ResponseHeader::build_no_case(hit.status, Some(hit.headers.len() + 4))?;
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
    hsts: Option<&HeaderValue>,
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
    if let Some(hsts) = hsts {
        header.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
    }
    session.write_response_header(Box::new(header), false).await?;
    session.write_response_body(Some(hit.body.clone()), true).await
}
