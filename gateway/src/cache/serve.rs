//! Writing a cached answer to the client (a hit, or a stale answer). Each entry's head is
//! prepared once, on its first hit: an HTTP/1 hit writes the serialised head with its own
//! `Age` and request id appended (no header map per hit); an HTTP/2 hit or a stale answer
//! clones the shared header and updates it.

use std::time::Instant;

use bytes::Bytes;
use edgegate_filters::cache::{Cached, PreparedHead};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use pingora_core::protocols::http::ServerSession;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

const AGE: HeaderName = HeaderName::from_static("age");
const X_REQUEST_ID: &str = "x-request-id";

pub const HIT: &str = "HIT";

/// The head shared by every hit of an entry: the stored headers, its `Content-Length`,
/// `X-Cache: HIT` (as a header with placeholders for `Age` and `X-Request-Id`, and
/// serialised without them), and the status record. Without a case map: well-known names
/// go out in their usual capitalisation, others in lower case, as Pingora writes them.
fn prepare(hit: &Cached, status_header: &HeaderName) -> Result<PreparedHead> {
    let mut header = ResponseHeader::build_no_case(hit.status, Some(hit.headers.len() + 4))?;
    for (name, value) in &hit.headers {
        header.append_header(name.clone(), value.clone())?;
    }
    header.insert_header(CONTENT_LENGTH, hit.body.len())?;
    header.insert_header(status_header.clone(), HeaderValue::from_static(HIT))?;
    let mut wire =
        Vec::with_capacity(64 + hit.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>());
    wire.extend_from_slice(b"HTTP/1.1 ");
    wire.extend_from_slice(header.status.as_str().as_bytes());
    wire.push(b' ');
    wire.extend_from_slice(header.get_reason_phrase().unwrap_or_default().as_bytes());
    wire.extend_from_slice(b"\r\n");
    // `Date` and `Connection` are the session's to write, for this answer (as Pingora
    // replaces them in a header it writes): a stored `Date` would go out twice.
    let mut fields = header.clone();
    fields.remove_header(&http::header::DATE);
    fields.remove_header(&http::header::CONNECTION);
    fields.header_to_h1_wire(&mut wire);
    let status = ResponseHeader::build_no_case(hit.status, Some(0))?;
    header.insert_header(AGE, HeaderValue::from_static("0"))?;
    header.insert_header(X_REQUEST_ID, HeaderValue::from_static("-"))?;
    Ok(PreparedHead { header, wire: Bytes::from(wire), status })
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
    now: Instant,
) -> Result<()> {
    let prepared = match hit.head.get() {
        Some(prepared) => prepared,
        None => {
            let built = prepare(hit, status_header)?;
            hit.head.get_or_init(|| built)
        }
    };
    if state == HIT {
        if let ServerSession::H1(h1) = session.downstream_session.as_mut() {
            let head = h1_head(prepared, hit.age_at(now).as_secs(), request_id, hsts);
            let length = Some(hit.body.len());
            h1.write_response_head_bytes(Box::new(prepared.status.clone()), &head, length).await?;
            return session.write_response_body(Some(hit.body.clone()), true).await;
        }
    }
    // Every header this answer carries is already in the clone; the per-hit ones replace
    // their placeholders in place.
    let mut header = prepared.header.clone();
    header.insert_header(AGE, hit.age_at(now).as_secs())?;
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

/// An HTTP/1 hit's head: the entry's serialised head and this hit's fields (the session
/// adds `Date`, `Connection` and the empty line). Values come from `HeaderValue`s, which
/// hold no CR or LF.
fn h1_head(prepared: &PreparedHead, age: u64, request_id: &HeaderValue, hsts: Option<&HeaderValue>) -> Vec<u8> {
    let mut head = Vec::with_capacity(prepared.wire.len() + 128);
    head.extend_from_slice(&prepared.wire);
    head.extend_from_slice(b"Age: ");
    head.extend_from_slice(itoa::Buffer::new().format(age).as_bytes());
    head.extend_from_slice(b"\r\nx-request-id: ");
    head.extend_from_slice(request_id.as_bytes());
    head.extend_from_slice(b"\r\n");
    if let Some(hsts) = hsts {
        head.extend_from_slice(b"Strict-Transport-Security: ");
        head.extend_from_slice(hsts.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    fn cached() -> Cached {
        Cached {
            status: 200,
            headers: vec![
                (http::header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (HeaderName::from_static("x-permit"), HeaderValue::from_static("open")),
                (http::header::DATE, HeaderValue::from_static("Mon, 30 Nov 2026 09:00:00 GMT")),
            ],
            body: Bytes::from_static(b"{\"ok\":true}"),
            stored: Instant::now(),
            fresh_for: Duration::from_secs(60),
            stale_for: Duration::ZERO,
            revalidate_for: Duration::ZERO,
            head: OnceLock::new(),
        }
    }

    /// The serialised head says what the header says, field for field (but `Date`, which
    /// the session writes for each answer), and the per-hit fields follow it.
    #[test]
    fn the_serialised_head_matches_the_shared_header() {
        let hit = cached();
        let prepared = prepare(&hit, &HeaderName::from_static("x-cache")).expect("prepared");
        let id = HeaderValue::from_static("req-1");
        let hsts = HeaderValue::from_static("max-age=31536000");
        let head = String::from_utf8(h1_head(&prepared, 1234567, &id, Some(&hsts))).expect("text");
        let lines: Vec<&str> = head.split_terminator("\r\n").collect();
        assert_eq!(lines[0], "HTTP/1.1 200 OK");
        let mut stored: Vec<&str> = lines[1..lines.len() - 3].to_vec();
        stored.sort_unstable();
        assert_eq!(stored, ["Content-Length: 11", "Content-Type: application/json", "x-cache: HIT", "x-permit: open"]);
        assert_eq!(
            lines[lines.len() - 3..],
            ["Age: 1234567", "x-request-id: req-1", "Strict-Transport-Security: max-age=31536000"]
        );
        assert!(head.ends_with("\r\n"), "every line ends in CRLF; the session ends the head");
        let mut from_header = Vec::new();
        prepared.header.header_to_h1_wire(&mut from_header);
        let from_header = String::from_utf8(from_header).expect("text");
        for line in head.lines().skip(1).filter(|l| !l.starts_with("Age") && !l.starts_with("x-request-id")) {
            if !line.starts_with("Strict") {
                assert!(from_header.contains(line), "{line} not in {from_header}");
            }
        }
        assert!(from_header.contains("Date: Mon, 30 Nov 2026 09:00:00 GMT"), "{from_header}");
        assert_eq!(prepared.status.status, 200);
        assert!(prepared.status.headers.is_empty());
    }
}
