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

/// The client an address belongs to, as per-client limits count it: an IPv4 address as
/// itself (also when written IPv4-mapped, `::ffff:a.b.c.d`); an IPv6 address as its /64
/// (low half zero), which is what one host or subscriber is given — a client holding a /64
/// can send from any of its 2^64 addresses, so counting them apart would let it rotate
/// past every limit.
pub fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// [`client_of`] as text: `198.51.100.9`, or `2001:db8:7:9::/64`.
pub fn client_str(ip: IpAddr, buf: &mut [u8; 64]) -> &str {
    let client = client_of(ip);
    let len = format_ip(client, buf).len();
    let len = if client.is_ipv6() {
        buf[len..len + 3].copy_from_slice(b"/64");
        len + 3
    } else {
        len
    };
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

fn format_ipv4(ip: Ipv4Addr, buf: &mut [u8; 64]) -> &[u8] {
    let mut len = 0;
    ipv4_digits(ip, |b| {
        buf[len] = b;
        len += 1;
    });
    &buf[..len]
}

/// Appends `ip` to `out` as `Display` writes it: what [`ip_str`] gives, without the UTF-8
/// check of text that is ASCII by construction.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => ipv4_digits(v4, |b| out.push(char::from(b))),
        IpAddr::V6(_) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{ip}");
        }
    }
}

/// The bytes of an IPv4 address in dotted decimal, one by one.
fn ipv4_digits(ip: Ipv4Addr, mut push: impl FnMut(u8)) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            push(b'.');
        }
        if octet >= 100 {
            push(b'0' + octet / 100);
        }
        if octet >= 10 {
            push(b'0' + (octet / 10) % 10);
        }
        push(b'0' + octet % 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_an_ipv4_address_or_an_ipv6_slash_64() {
        let mut buf = [0u8; 64];
        for (ip, client) in [
            ("198.51.100.9", "198.51.100.9"),
            ("::ffff:198.51.100.9", "198.51.100.9"),
            ("2001:db8:7:9::1", "2001:db8:7:9::/64"),
            ("2001:db8:7:9:ffff:ffff:ffff:ffff", "2001:db8:7:9::/64"),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff::/64"),
            ("::1", "::/64"),
        ] {
            let parsed: IpAddr = ip.parse().expect("ip");
            assert_eq!(client_str(parsed, &mut buf), client, "{ip}");
        }
    }

    #[test]
    fn ipv4_formatting_matches_display() {
        let mut buf = [0u8; 64];
        for ip in ["0.0.0.0", "1.2.3.4", "10.42.0.15", "99.100.101.255", "255.255.255.255"] {
            let parsed: Ipv4Addr = ip.parse().expect("ip");
            assert_eq!(format_ipv4(parsed, &mut buf), ip.as_bytes());
            let mut out = String::from("client=");
            push_ip(&mut out, IpAddr::V4(parsed));
            assert_eq!(out, format!("client={ip}"));
        }
    }

    #[test]
    fn every_ipv4_octet_in_every_position_is_pushed_as_display_writes_it() {
        let mut out = String::new();
        for a in 0..=255u8 {
            for ip in [[a, 0, 9, 10], [99, a, 100, 255], [1, 10, a, 199], [255, 250, 100, a]] {
                let ip = IpAddr::from(ip);
                out.clear();
                push_ip(&mut out, ip);
                assert_eq!(out, ip.to_string());
            }
        }
    }

    #[test]
    fn ipv6_formatting_matches_display() {
        let mut buf = [0u8; 64];
        for ip in ["::", "2001:db8::1", "::ffff:10.0.0.1", "fe80::1:2:3:4", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"] {
            let parsed: IpAddr = ip.parse().expect("ip");
            assert_eq!(format_ip(parsed, &mut buf), parsed.to_string().as_bytes());
            assert_eq!(ip_str(parsed, &mut buf), parsed.to_string());
            let mut out = String::new();
            push_ip(&mut out, parsed);
            assert_eq!(out, parsed.to_string());
        }
    }
}
