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
    // The usual value names no field: told without splitting it.
    let bytes = value.as_bytes();
    if bytes.eq_ignore_ascii_case(b"keep-alive") || bytes.eq_ignore_ascii_case(b"close") {
        return;
    }
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
/// One pass over the message's fields (a handful on a typical message), each `Connection`
/// value read as it is met. A name is compared as a name: a standard one (`Connection`,
/// `TE`, …) by its number, a custom one (`Keep-Alive`, `Proxy-Connection`) by its bytes, and
/// the two kinds never equal, so most fields are told apart without reading their text. The
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
        } else if always_hop_by_hop(name) {
            names.push(name.clone());
        }
    }
    names
}

/// The fields that are hop-by-hop whatever `Connection` says, besides `Connection` itself:
/// `TE`, `Trailer`, `Upgrade`, `Proxy-Authorization`, `Keep-Alive`, `Proxy-Connection`.
#[inline]
pub fn always_hop_by_hop(name: &HeaderName) -> bool {
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    *name == TE
        || *name == TRAILER
        || *name == UPGRADE
        || *name == PROXY_AUTHORIZATION
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{PROXY_AUTHORIZATION, TE};
    use http::HeaderValue;

    /// The names [`names_to_strip`] returns for `h`, once each, in order.
    fn stripped_set(h: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = names_to_strip(h).iter().map(|n| n.as_str().to_owned()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

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
        assert_eq!(stripped_set(&h), ["connection", "keep-alive", "proxy-authorization", "te", "x-one", "x-two"]);
    }

    #[test]
    fn every_hop_by_hop_name_and_no_other_of_the_same_length() {
        let mut h = HeaderMap::new();
        for name in ["te", "trailer", "upgrade", "keep-alive", "proxy-connection", "proxy-authorization"] {
            h.append(name, HeaderValue::from_static("1"));
        }
        // Names as long as a hop-by-hop one, or a prefix of one, are forwarded.
        for name in
            ["tf", "trailes", "upgrades", "keep-alivf", "proxy-connectiom", "proxy-authorizatio", "connectiom", "t"]
        {
            h.append(name, HeaderValue::from_static("1"));
        }
        h.append("Proxy-Connection", HeaderValue::from_static("2"));
        assert_eq!(
            stripped_set(&h),
            ["keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer", "upgrade"]
        );
    }

    #[test]
    fn a_connection_value_of_keep_alive_or_close_names_nothing_in_any_case() {
        for value in ["keep-alive", "Keep-Alive", "CLOSE", "close", " close ", "keep-alive, close"] {
            let mut h = HeaderMap::new();
            h.insert(CONNECTION, HeaderValue::from_static(value));
            assert_eq!(names_to_strip(&h).as_slice(), [CONNECTION], "{value}");
        }
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alivex"));
        assert_eq!(names_to_strip(&h).as_slice(), [CONNECTION, HeaderName::from_static("keep-alivex")]);
    }

    #[test]
    fn nothing_to_strip_on_a_clean_message() {
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("*/*"));
        assert!(names_to_strip(&h).is_empty());
    }
}
