//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and must not
//! be forwarded across the proxy in either direction.

use http::header::{HeaderMap, HeaderName, CONNECTION, PROXY_AUTHORIZATION, TE, TRAILER, UPGRADE};

/// Header names listed in `Connection` (other than the framing tokens), which the
/// sender marked as meant for this hop only. Returns them in `out` to avoid allocating
/// in the common case of no such header.
pub fn connection_tokens(headers: &HeaderMap, out: &mut Vec<HeaderName>) {
    for value in headers.get_all(CONNECTION) {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',') {
            let token = token.trim();
            if token.is_empty() || token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("keep-alive") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.to_ascii_lowercase().as_bytes()) {
                out.push(name);
            }
        }
    }
}

/// Names to strip from a message before forwarding it: the always-hop-by-hop ones
/// plus whatever `Connection` names. `Transfer-Encoding` is hop-by-hop too, but
/// Pingora owns message framing on both sides and rewrites it itself.
///
/// One pass over the message's header names (a handful on a typical request) rather
/// than a hash lookup per hop-by-hop name; a clean message returns an empty,
/// non-allocating list.
pub fn names_to_strip(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names = Vec::new();
    let mut connection = false;
    for name in headers.keys() {
        if *name == CONNECTION {
            connection = true;
            names.push(CONNECTION);
        } else if *name == TE
            || *name == TRAILER
            || *name == UPGRADE
            || *name == PROXY_AUTHORIZATION
            || matches!(name.as_str(), "keep-alive" | "proxy-connection")
        {
            names.push(name.clone());
        }
    }
    if connection {
        connection_tokens(headers, &mut names);
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
    fn nothing_to_strip_on_a_clean_message() {
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("*/*"));
        assert!(names_to_strip(&h).is_empty());
    }
}
