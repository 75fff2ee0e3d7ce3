//! `X-Forwarded-For` (request path, upstream request headers): the client's address
//! appended to what earlier proxies recorded, formatted without the `fmt` machinery.

use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use http::HeaderValue;
use pingora_error::{Error, ErrorType, Result};

/// `X-Forwarded-For` with the client's address appended to what earlier proxies
/// recorded. Formats into a stack buffer: `IpAddr`'s `Display` goes through the
/// formatting machinery, which costs more than the rest of this hook.
pub fn forwarded_for(earlier: Option<&HeaderValue>, ip: IpAddr) -> Result<HeaderValue> {
    let mut buf = [0u8; 64];
    let addr = match ip {
        IpAddr::V4(v4) => format_ipv4(v4, &mut buf),
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{v6}");
            let len = cursor.position() as usize;
            &buf[..len]
        }
    };
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

fn format_ipv4(ip: Ipv4Addr, buf: &mut [u8; 64]) -> &[u8] {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + (octet / 10) % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn ipv4_formatting_matches_display() {
        let mut buf = [0u8; 64];
        for ip in ["0.0.0.0", "1.2.3.4", "10.42.0.15", "99.100.101.255", "255.255.255.255"] {
            let parsed: Ipv4Addr = ip.parse().expect("ip");
            assert_eq!(format_ipv4(parsed, &mut buf), ip.as_bytes());
        }
    }
}
