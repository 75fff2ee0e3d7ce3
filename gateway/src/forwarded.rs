//! `X-Forwarded-For` (request path, upstream request headers) and the client address
//! rule: a peer in `trusted_proxies` is a proxy, whose `X-Forwarded-For` is believed and
//! extended; any other peer is the client, and whatever `X-Forwarded-For` it sent is
//! replaced. Formatted without the `fmt` machinery.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use pingora_error::{Error, ErrorType, Result};

use edgegate_filters::addr::format_ip;

/// Built once: looking a header up by `&str` parses the name on every request.
pub const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// Whether `ip` is one of the `trusted_proxies`, whose `X-Forwarded-For` is believed.
fn is_trusted_proxy(ip: IpAddr, trusted: &[edgegate_config::Cidr]) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// The client's address, and whether the peer is a trusted proxy: the peer, unless it is
/// a trusted proxy — then the right-most address in its `X-Forwarded-For` that is not
/// itself a trusted proxy (the left-most one when all are). `X-Forwarded-For` is looked up
/// in `headers` only for a trusted peer: from anyone else (nearly every request at the
/// edge) it is not read.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[edgegate_config::Cidr]) -> (IpAddr, bool) {
    let is_trusted = |ip: IpAddr| is_trusted_proxy(ip, trusted);
    if !is_trusted(peer) {
        return (peer, false);
    }
    (client_behind(peer, headers, is_trusted), true)
}

/// The client behind the trusted proxy `peer`, by its `X-Forwarded-For`.
fn client_behind(peer: IpAddr, headers: &HeaderMap, is_trusted: impl Fn(IpAddr) -> bool) -> IpAddr {
    let Some(chain) = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) else { return peer };
    let mut client = peer;
    for hop in chain.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// `X-Forwarded-For` for the upstream request: the peer's address appended to what
/// `earlier` proxies recorded (pass `None` to drop an untrusted client's own list), the
/// address formatted into a stack buffer ([`format_ip`]).
pub fn forwarded_for(earlier: Option<&HeaderValue>, ip: IpAddr) -> Result<HeaderValue> {
    let mut buf = [0u8; 64];
    let addr = format_ip(ip, &mut buf);
    let value = match earlier {
        None => Bytes::copy_from_slice(addr),
        Some(earlier) => {
            let mut joined = Vec::with_capacity(earlier.len() + 2 + addr.len());
            joined.extend_from_slice(earlier.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(addr);
            Bytes::from(joined)
        }
    };
    HeaderValue::from_maybe_shared(value)
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "bad X-Forwarded-For"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let trusted: Vec<edgegate_config::Cidr> =
            ["10.0.0.0/8", "192.168.1.7"].iter().filter_map(|t| edgegate_config::Cidr::parse(t)).collect();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let xff = |s: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(X_FORWARDED_FOR, HeaderValue::from_static(s));
            headers
        };
        // An untrusted peer's list is its own claim: ignored.
        assert_eq!(client_ip(ip("203.0.113.9"), &xff("1.2.3.4"), &trusted), (ip("203.0.113.9"), false));
        // A trusted proxy: the right-most hop it did not add itself.
        assert_eq!(client_ip(ip("10.1.2.3"), &xff("1.2.3.4, 198.51.100.7"), &trusted), (ip("198.51.100.7"), true));
        assert_eq!(
            client_ip(ip("10.1.2.3"), &xff("1.2.3.4, 198.51.100.7, 10.9.9.9, 192.168.1.7"), &trusted),
            (ip("198.51.100.7"), true)
        );
        // Garbage stops the walk: the last believable hop stands.
        assert_eq!(client_ip(ip("10.1.2.3"), &xff("evil, 10.2.2.2"), &trusted), (ip("10.2.2.2"), true));
        // A trusted proxy that names no one is the client itself, still a trusted peer.
        assert_eq!(client_ip(ip("10.1.2.3"), &HeaderMap::new(), &trusted), (ip("10.1.2.3"), true));
        assert_eq!(
            client_ip(ip("192.168.1.8"), &xff("1.2.3.4"), &trusted),
            (ip("192.168.1.8"), false),
            "a /32 is one address"
        );
    }

    #[test]
    fn forwarded_for_appends_the_client_address() {
        let v = forwarded_for(None, "10.0.0.7".parse().expect("ip")).expect("value");
        assert_eq!(v, "10.0.0.7");
        let earlier = HeaderValue::from_static("203.0.113.7");
        let v = forwarded_for(Some(&earlier), "192.168.100.255".parse().expect("ip")).expect("value");
        assert_eq!(v, "203.0.113.7, 192.168.100.255");
        let v = forwarded_for(None, "2001:db8::1".parse().expect("ip")).expect("value");
        assert_eq!(v, "2001:db8::1");
    }
}
