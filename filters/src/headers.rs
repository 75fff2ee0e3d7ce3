//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and must not
//! be forwarded across the proxy in either direction.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, PROXY_AUTHORIZATION, TE, TRAILER, UPGRADE};
use smallvec::SmallVec;

/// Header names listed in `Connection` (other than the framing tokens), which the
/// sender marked as meant for this hop only. Returns them in `out` to avoid allocating
/// in the common case of no such header.
pub fn connection_tokens(headers: &HeaderMap, out: &mut Vec<HeaderName>) {
    for value in headers.get_all(CONNECTION) {
        tokens_of(value, out);
    }
}

/// The names one `Connection` value lists, without `close` and `keep-alive`.
fn tokens_of(value: &HeaderValue, out: &mut impl Extend<HeaderName>) {
    let Ok(text) = value.to_str() else { return };
    for token in text.split(',') {
        let token = token.trim();
        if token.is_empty() || token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("keep-alive") {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.to_ascii_lowercase().as_bytes()) {
            out.extend([name]);
        }
    }
}

/// Names to strip from a message before forwarding it: the always-hop-by-hop ones
/// plus whatever `Connection` names. `Transfer-Encoding` is hop-by-hop too, but
/// Pingora owns message framing on both sides and rewrites it itself.
///
/// One pass over the message's fields (a handful on a typical message), reading each
/// `Connection` value as it is met, rather than a hash lookup per hop-by-hop name; the
/// usual few names are kept inline, so a typical message (`Connection: keep-alive`)
/// allocates nothing.
pub fn names_to_strip(headers: &HeaderMap) -> SmallVec<[HeaderName; 4]> {
    let mut names = SmallVec::new();
    let mut connection = false;
    for (name, value) in headers {
        if *name == CONNECTION {
            if !connection {
                connection = true;
                names.push(CONNECTION);
            }
            tokens_of(value, &mut names);
        } else if *name == TE
            || *name == TRAILER
            || *name == UPGRADE
            || *name == PROXY_AUTHORIZATION
            || matches!(name.as_str(), "keep-alive" | "proxy-connection")
        {
            names.push(name.clone());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, X-Secret, close"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-normal", HeaderValue::from_static("1"));
        let names = names_to_strip(&h);
        let names: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
        assert!(names.contains(&"x-secret"));
        assert!(names.contains(&"connection"));
        assert!(names.contains(&"keep-alive"));
        assert!(!names.contains(&"x-normal"));
        assert!(!names.contains(&"close"));
    }

    #[test]
    fn every_connection_field_and_repeated_names_are_read() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(CONNECTION, HeaderValue::from_static("X-One"));
        h.append(CONNECTION, HeaderValue::from_static("x-two, close"));
        h.append("keep-alive", HeaderValue::from_static("timeout=5"));
        h.append("keep-alive", HeaderValue::from_static("max=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(PROXY_AUTHORIZATION, HeaderValue::from_static("Basic eA=="));
        let names = names_to_strip(&h);
        let mut names: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names, ["connection", "keep-alive", "proxy-authorization", "te", "x-one", "x-two"]);
    }

    #[test]
    fn nothing_to_strip_on_a_clean_message() {
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("*/*"));
        assert!(names_to_strip(&h).is_empty());
    }
}
