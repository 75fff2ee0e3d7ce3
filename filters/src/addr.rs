//! Addresses as text without the formatting machinery: `IpAddr`'s `Display` goes through
//! the formatter's padding support (~1k instructions a call), and the request path writes a
//! client's address several times (`X-Forwarded-For`, the access log, the audit record, the
//! policy's `input.source.ip`).

use std::net::{IpAddr, Ipv4Addr};

/// `ip` as its `Display` writes it, into `buf`; IPv4 (nearly every client) by hand.
pub fn format_ip(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => format_ipv4(v4, buf),
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{v6}");
            let len = cursor.position() as usize;
            &buf[..len]
        }
    }
}

/// [`format_ip`] as text.
pub fn ip_str(ip: IpAddr, buf: &mut [u8; 64]) -> &str {
    std::str::from_utf8(format_ip(ip, buf)).unwrap_or_default()
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
    fn ipv4_formatting_matches_display() {
        let mut buf = [0u8; 64];
        for ip in ["0.0.0.0", "1.2.3.4", "10.42.0.15", "99.100.101.255", "255.255.255.255"] {
            let parsed: Ipv4Addr = ip.parse().expect("ip");
            assert_eq!(format_ipv4(parsed, &mut buf), ip.as_bytes());
        }
    }

    #[test]
    fn ipv6_formatting_matches_display() {
        let mut buf = [0u8; 64];
        for ip in ["::", "2001:db8::1", "::ffff:10.0.0.1", "fe80::1:2:3:4", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"] {
            let parsed: IpAddr = ip.parse().expect("ip");
            assert_eq!(format_ip(parsed, &mut buf), parsed.to_string().as_bytes());
            assert_eq!(ip_str(parsed, &mut buf), parsed.to_string());
        }
    }
}
