//! Request path step 1, before the canonical request: message framing that two parsers
//! could read two ways — the shapes of request smuggling — refused before routing and
//! never forwarded (RFC 9112 §6.3: such a message "ought to be handled as an error").
//!
//! The HTTP/1 parser already refuses what it cannot parse (obs-fold, CR/LF/NUL in
//! headers, whitespace before the colon, differing `Content-Length`s, a non-chunked final
//! `Transfer-Encoding`, `Transfer-Encoding` on HTTP/1.0). It also quietly accepts some
//! shapes, and drops `Content-Length` when `Transfer-Encoding` is present, so these checks
//! read the raw head as the client sent it.

use http::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};

/// Why a request's framing was refused (400, connection closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingRefusal {
    /// `Content-Length` and `Transfer-Encoding` together.
    LengthAndChunked,
    /// `Content-Length` more than once, or a comma list.
    DuplicateLength,
    /// `Transfer-Encoding` other than one `chunked`.
    TransferEncoding,
    /// `Host` more than once.
    DuplicateHost,
    /// `Authorization` more than once: identity would verify one credential and the pod
    /// could read the other (RFC 9110 §11.6.2 allows one).
    DuplicateAuthorization,
    /// The URI authority (absolute-form target, HTTP/2 `:authority`) names another host
    /// than `Host`.
    HostMismatch,
    /// Bytes outside printable ASCII in the query.
    BadQuery,
    /// A request line that is not `METHOD SP target SP version`, or a target with bytes
    /// outside printable ASCII (the parser would escape them and carry on).
    BadRequestLine,
    /// The head is larger than `limits.header_bytes` or has more than `limits.headers`
    /// header lines (431).
    HeadTooLarge,
    /// A method with lower-case letters: methods are case-sensitive, and a policy or route
    /// that names `DELETE` does not match `delete`, which frameworks that upper-case the
    /// method would still run as `DELETE`.
    BadMethod,
    /// A field asking the pod to run another method than the request line's
    /// (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`): routing and policy
    /// decided on the request line's.
    MethodOverride,
    /// A field asking the pod to serve another target than the request line's
    /// (`X-Original-URL`, `X-Rewrite-URL`): routing and policy decided on the request line's.
    TargetOverride,
    /// A `Content-Length` that is not digits alone (`+3`). Pingora's HTTP/1 parser and the
    /// HTTP/2 layer refuse one already; refused here too, so that what reaches a pod does
    /// not rest on what a later version of either lets through.
    BadLength,
}

impl FramingRefusal {
    /// The HTTP status of the refusal.
    pub fn status(self) -> u16 {
        match self {
            FramingRefusal::HeadTooLarge => 431,
            _ => 400,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            FramingRefusal::LengthAndChunked => "content_length_and_chunked",
            FramingRefusal::DuplicateLength => "duplicate_content_length",
            FramingRefusal::TransferEncoding => "bad_transfer_encoding",
            FramingRefusal::DuplicateHost => "duplicate_host",
            FramingRefusal::DuplicateAuthorization => "duplicate_authorization",
            FramingRefusal::HostMismatch => "host_mismatch",
            FramingRefusal::BadQuery => "bad_query",
            FramingRefusal::BadRequestLine => "bad_request_line",
            FramingRefusal::HeadTooLarge => "request_header_too_large",
            FramingRefusal::BadMethod => "bad_method",
            FramingRefusal::MethodOverride => "method_override",
            FramingRefusal::TargetOverride => "target_override",
            FramingRefusal::BadLength => "bad_content_length",
        }
    }
}

/// What the framing checks found in a request they let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checked {
    /// The request has a field only a proxy may set ([`PROXY_CLAIMS`]); the pod must not
    /// see it unless the peer is a trusted proxy.
    pub proxy_claims: bool,
    /// The request has an `X-Request-ID` field.
    pub request_id: bool,
    /// The request has a `traceparent` field.
    pub traceparent: bool,
    /// The request's `Content-Length` as the number alone, where the client wrote it with
    /// leading zeros (`010`, which RFC 9110 allows): the pod is sent this instead, so that
    /// a pod whose parser reads the client's spelling another way (`010` as octal 8) cannot
    /// take the body's last bytes for a request of its own. `None` when the length was
    /// written as its number (nearly always), or not at all.
    pub canonical_length: Option<u64>,
    /// The request has a field whose name spells, with `_` for a `-`, a field only a proxy
    /// may set ([`PROXY_CLAIMS`]) or one edgegate sets itself (`X-Forwarded-For`, …): see
    /// [`is_underscored_proxy_field`]. Such fields never reach the pod.
    pub underscored_claims: bool,
}

/// Fields that state something only a proxy in front can know — the client's address, the
/// host, scheme, port or path prefix the client used — and that pods and their frameworks
/// believe (to log or rate-limit by address, to build absolute links: a client that sets
/// `X-Forwarded-Host` poisons password-reset links). From a client they are claims, and
/// edgegate removes them; `X-Forwarded-For` and `X-Forwarded-Proto` edgegate sets itself.
pub const PROXY_CLAIMS: [&str; 11] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-prefix",
    "x-forwarded-server",
];

/// The fields edgegate sets on the request to the pod itself, beside [`PROXY_CLAIMS`], whose
/// names have a `-` a client could spell as `_`.
const SET_BY_EDGEGATE: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-request-id"];

/// Whether the lower-case field name `name` spells, with `_` for one or more of its `-`, a
/// field only a proxy may set ([`PROXY_CLAIMS`]) or one edgegate sets
/// (`X-Forwarded-For`, `X-Forwarded-Proto`, `X-Request-ID`). Servers that hand fields to an
/// application as CGI-style variables (WAGI for WebAssembly, WSGI, PHP's FastCGI) turn both
/// `-` and `_` into `_`: `X_Forwarded_For` and `X-Forwarded-For` become the one
/// `HTTP_X_FORWARDED_FOR`, and which of the two the application sees is the server's
/// choice, so the underscore spelling is the claim in disguise (nginx drops every field with
/// an underscore by default for this reason; edgegate drops these).
#[inline]
pub fn is_underscored_proxy_field(name: &[u8]) -> bool {
    matches!(underscored_role(name), Some(Role::UnderscoredClaim))
}

/// The role of a lower-case name that spells, with `_` for one or more of its `-`, a field
/// the checks refuse (refused alike) or one [`is_underscored_proxy_field`] names. Every such
/// name starts with `x` or `t` and is 9 to 22 bytes long: most fields are told apart by
/// that alone, inline, without a call.
#[inline]
fn underscored_role(name: &[u8]) -> Option<Role> {
    if (9..=22).contains(&name.len()) && matches!(name[0], b'x' | b't') {
        spelled_role(name)
    } else {
        None
    }
}

/// [`underscored_role`] past its first look: the name with `-` for every `_`, asked of
/// [`field_role`], the one list of the names the checks know.
#[inline(never)]
fn spelled_role(name: &[u8]) -> Option<Role> {
    if !name.contains(&b'_') {
        return None;
    }
    let mut dashed = [0u8; 22];
    let dashed = &mut dashed[..name.len()];
    for (d, &n) in dashed.iter_mut().zip(name) {
        *d = if n == b'_' { b'-' } else { n };
    }
    let dashed = std::str::from_utf8(dashed).ok()?;
    match field_role(dashed) {
        refused @ Some(Role::Refused(_)) => refused,
        Some(Role::ProxyClaim) => Some(Role::UnderscoredClaim),
        _ if SET_BY_EDGEGATE.contains(&dashed) => Some(Role::UnderscoredClaim),
        _ => None,
    }
}

/// What a request field is to the checks, by its lower-case name.
enum Role {
    Refused(FramingRefusal),
    /// One of [`PROXY_CLAIMS`].
    ProxyClaim,
    /// A field the gateway reads on every request when present: noted as the walk passes
    /// it, so that a request without it (nearly all) is spared the lookup.
    RequestId,
    TraceParent,
    ContentLength,
    Authorization,
    /// See [`is_underscored_proxy_field`].
    UnderscoredClaim,
}

/// The role of a field by its lower-case name, or none. The names are spelled out so that
/// the compiler dispatches on length: a few instructions per field.
fn field_role(name: &str) -> Option<Role> {
    match name {
        "x-http-method-override" | "x-http-method" | "x-method-override" => {
            Some(Role::Refused(FramingRefusal::MethodOverride))
        }
        "x-original-url" | "x-rewrite-url" => Some(Role::Refused(FramingRefusal::TargetOverride)),
        "forwarded"
        | "x-real-ip"
        | "x-client-ip"
        | "true-client-ip"
        | "x-cluster-client-ip"
        | "x-forwarded-host"
        | "x-forwarded-port"
        | "x-forwarded-scheme"
        | "x-forwarded-ssl"
        | "x-forwarded-prefix"
        | "x-forwarded-server" => Some(Role::ProxyClaim),
        "x-request-id" => Some(Role::RequestId),
        "content-length" => Some(Role::ContentLength),
        "authorization" => Some(Role::Authorization),
        "traceparent" => Some(Role::TraceParent),
        _ => underscored_role(name.as_bytes()),
    }
}

/// What the framing checks need to know of a request.
pub struct Head<'a> {
    /// The request line and header lines exactly as received (HTTP/1), if there are any.
    pub raw: Option<&'a [u8]>,
    /// The method as parsed (HTTP/1 request line or HTTP/2 `:method`).
    pub method: &'a str,
    /// The parsed headers.
    pub headers: &'a HeaderMap,
    /// The authority the target or `:authority` named, if any.
    pub authority: Option<&'a str>,
    pub query: Option<&'a str>,
    /// Most bytes and header lines a head may have.
    pub max_bytes: usize,
    pub max_headers: usize,
}

/// Whether a request that passed [`check`] declares a body: `Transfer-Encoding`, or a
/// `Content-Length` other than zero however written (`0` and `000` declare none). The one
/// rule for every step that asks — whether a refused request's connection can be reused,
/// whether a GET is cacheable.
pub fn declares_body(headers: &HeaderMap) -> bool {
    headers.contains_key(TRANSFER_ENCODING)
        || headers.get(CONTENT_LENGTH).is_some_and(|v| v.as_bytes().iter().any(|&b| b != b'0'))
}

pub fn check(head: &Head<'_>) -> Result<Checked, FramingRefusal> {
    let size = head.raw.map_or(0, <[u8]>::len);
    if size > head.max_bytes || head.headers.len() > head.max_headers {
        return Err(FramingRefusal::HeadTooLarge);
    }
    if head.method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(FramingRefusal::BadMethod);
    }
    match head.raw {
        // The raw head counts `Host` lines itself.
        Some(raw) => check_raw(raw)?,
        None if head.headers.get_all(HOST).iter().count() > 1 => return Err(FramingRefusal::DuplicateHost),
        None => {}
    }
    // `Host` is looked up only for an absolute-form target (the usual origin-form has no
    // authority to compare it with).
    if let Some(authority) = head.authority {
        if let Some(host) = head.headers.get(HOST) {
            if !same_host(authority.as_bytes(), host.as_bytes()) {
                return Err(FramingRefusal::HostMismatch);
            }
        }
    }
    if let Some(q) = head.query {
        if !visible_ascii(q.as_bytes()) {
            return Err(FramingRefusal::BadQuery);
        }
    }
    let mut checked = Checked::default();
    for name in head.headers.keys() {
        match field_role(name.as_str()) {
            Some(Role::Refused(refusal)) => return Err(refusal),
            Some(Role::ProxyClaim) => checked.proxy_claims = true,
            Some(Role::RequestId) => checked.request_id = true,
            Some(Role::TraceParent) => checked.traceparent = true,
            Some(Role::UnderscoredClaim) => checked.underscored_claims = true,
            // The walk sees each name once: a second value is looked for where there is one.
            Some(Role::Authorization) if head.headers.get_all(AUTHORIZATION).iter().nth(1).is_some() => {
                return Err(FramingRefusal::DuplicateAuthorization);
            }
            Some(Role::Authorization) => {}
            Some(Role::ContentLength) => {
                // One value: two were refused before (HTTP/1: the parser or the raw head's
                // walk; HTTP/2: its own layer).
                let value = head.headers.get(CONTENT_LENGTH).map_or(&b""[..], |v| trim(v.as_bytes()));
                checked.canonical_length = canonical_length(value)?;
            }
            None => {}
        }
    }
    Ok(checked)
}

/// The framing headers as the client wrote them.
fn check_raw(raw: &[u8]) -> Result<(), FramingRefusal> {
    let (mut lengths, mut encodings, mut hosts) = (0, 0, 0);
    // Lines end in LF (the parser accepts a bare LF too); the first is the request line.
    let mut start = 0;
    let mut lines = memchr::memchr_iter(b'\n', raw).chain(std::iter::once(raw.len())).map(|end| {
        let line = &raw[start.min(end)..end];
        start = end + 1;
        line
    });
    let request_line = lines.next().unwrap_or_default();
    let request_line = request_line.strip_suffix(b"\r").unwrap_or(request_line);
    // Three parts, two single spaces: method, target, version. The first space ends the
    // method and the last begins the version, each found from its end of the line (a few
    // bytes each); the target between them, which can be most of a 16 KiB head, is read once,
    // by the check that refuses any space (or other byte but visible ASCII) in it.
    let first = request_line.iter().position(|&b| b == b' ');
    let last = request_line.iter().rposition(|&b| b == b' ');
    let (Some(first), Some(last)) = (first, last) else { return Err(FramingRefusal::BadRequestLine) };
    let target = request_line.get(first + 1..last).unwrap_or_default();
    if target.is_empty() || !visible_ascii(target) {
        return Err(FramingRefusal::BadRequestLine);
    }
    // Origin-form (`/path`), absolute-form (`http://host/path`) or `*` (which the canonical
    // request refuses); `path` alone is none of them.
    let scheme = |s: &[u8]| target.len() >= s.len() && target[..s.len()].eq_ignore_ascii_case(s);
    if !(target[0] == b'/' || target == b"*" || scheme(b"http://") || scheme(b"https://")) {
        return Err(FramingRefusal::BadRequestLine);
    }
    for line in lines {
        // Most header names are none of the three: tell by the first letter before looking
        // for the colon, and by length and first letter before comparing.
        if !matches!(line.first().map_or(0, |b| b | 0x20), b'c' | b't' | b'h') {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else { continue };
        let name = &line[..colon];
        let value = || trim(&line[colon + 1..]);
        match (name.len(), name.first().map_or(0, |b| b | 0x20)) {
            (14, b'c') if name.eq_ignore_ascii_case(b"content-length") => {
                lengths += 1;
                if value().contains(&b',') {
                    return Err(FramingRefusal::DuplicateLength);
                }
            }
            (17, b't') if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                encodings += 1;
                if !value().eq_ignore_ascii_case(b"chunked") {
                    return Err(FramingRefusal::TransferEncoding);
                }
            }
            (4, b'h') if name.eq_ignore_ascii_case(b"host") => hosts += 1,
            _ => {}
        }
    }
    match (lengths, encodings) {
        (0 | 1, 0) | (0, 1) => {}
        (_, 0) => return Err(FramingRefusal::DuplicateLength),
        (0, _) => return Err(FramingRefusal::TransferEncoding),
        _ => return Err(FramingRefusal::LengthAndChunked),
    }
    if hosts > 1 {
        return Err(FramingRefusal::DuplicateHost);
    }
    Ok(())
}

/// Whether every byte is visible ASCII (`0x21..=0x7e`). From 64 bytes on, a fold without an
/// early exit, which the compiler makes a vector loop of 16 bytes a step: a request target or
/// query can be most of a 16 KiB head, and a byte-at-a-time check with an exit at each byte
/// cost ~4 instructions a byte.
fn visible_ascii(bytes: &[u8]) -> bool {
    let visible = |b: u8| b.wrapping_sub(0x21) < 0x5e;
    // The usual target, a few dozen bytes, is checked as quickly a byte at a time.
    if bytes.len() < 64 {
        return bytes.iter().all(|&b| visible(b));
    }
    bytes.iter().fold(true, |ok, &b| ok & visible(b))
}

/// The length to send the pod in place of `value`, if the client wrote it otherwise than as
/// the number alone (see [`Checked::canonical_length`]); refused unless digits alone.
fn canonical_length(value: &[u8]) -> Result<Option<u64>, FramingRefusal> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(FramingRefusal::BadLength);
    }
    if value.len() == 1 || value[0] != b'0' {
        return Ok(None);
    }
    let mut n: u64 = 0;
    for &d in value {
        n = n.checked_mul(10).and_then(|n| n.checked_add(u64::from(d - b'0'))).ok_or(FramingRefusal::BadLength)?;
    }
    Ok(Some(n))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end]
}

/// Same host name, case-insensitively, ignoring a port and a trailing dot on either side.
fn same_host(a: &[u8], b: &[u8]) -> bool {
    fn name(h: &[u8]) -> &[u8] {
        let h = if h.first() == Some(&b'[') {
            h.iter().position(|&b| b == b']').map_or(h, |end| &h[..=end])
        } else {
            h.iter().position(|&b| b == b':').map_or(h, |colon| &h[..colon])
        };
        h.strip_suffix(b".").unwrap_or(h)
    }
    name(a).eq_ignore_ascii_case(name(b))
}

/// The framing checks on arbitrary bytes as a raw head: they never panic, and a head they
/// accept has no two framing headers and a printable request target. Used by the fuzz
/// target (`fuzz/fuzz_targets/framing.rs`) and, over its corpus, by `cargo test`.
#[doc(hidden)]
pub fn assert_invariants(raw: &[u8]) {
    let headers = HeaderMap::new();
    let head = Head {
        raw: Some(raw),
        method: "GET",
        headers: &headers,
        authority: None,
        query: None,
        max_bytes: usize::MAX,
        max_headers: 100,
    };
    if check(&head).is_err() {
        return;
    }
    let lines: Vec<&[u8]> = raw.split(|&b| b == b'\n').collect();
    let named = |name: &[u8]| {
        lines
            .iter()
            .skip(1)
            .filter(|l| {
                l.split(|&b| b == b':').next().is_some_and(|n| n.eq_ignore_ascii_case(name)) && l.contains(&b':')
            })
            .count()
    };
    assert!(named(b"content-length") + named(b"transfer-encoding") <= 1, "two framing headers accepted");
    assert!(named(b"host") <= 1, "two Host headers accepted");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn raw(head: &str) -> Result<(), FramingRefusal> {
        check_raw(head.as_bytes())
    }

    #[test]
    fn a_body_is_declared_by_chunking_or_a_non_zero_length_however_written() {
        let declares = |fields: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in fields {
                h.append(*name, HeaderValue::from_static(value));
            }
            declares_body(&h)
        };
        for body in
            [&[("content-length", "5")][..], &[("content-length", "00010")], &[("transfer-encoding", "chunked")]]
        {
            assert!(declares(body), "{body:?}");
        }
        for none in [&[][..], &[("content-length", "0")], &[("content-length", "00")], &[("content-length", "000")]] {
            assert!(!declares(none), "{none:?}");
        }
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let line = "POST /x HTTP/1.1\r\nHost: h\r\n";
        for (headers, want) in [
            ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", FramingRefusal::LengthAndChunked),
            ("transfer-encoding: chunked\r\ncontent-length: 0\r\n", FramingRefusal::LengthAndChunked),
            ("Content-Length: 5\r\nContent-Length: 5\r\n", FramingRefusal::DuplicateLength),
            ("Content-Length: 5, 5\r\n", FramingRefusal::DuplicateLength),
            ("Transfer-Encoding: gzip, chunked\r\n", FramingRefusal::TransferEncoding),
            ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", FramingRefusal::TransferEncoding),
            ("Transfer-Encoding: xchunked\r\n", FramingRefusal::TransferEncoding),
            ("Transfer-Encoding: identity\r\n", FramingRefusal::TransferEncoding),
            ("Host: other\r\n", FramingRefusal::DuplicateHost),
        ] {
            assert_eq!(raw(&format!("{line}{headers}\r\n")), Err(want), "{headers:?}");
        }
        for headers in
            ["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n", "Transfer-Encoding:  Chunked \r\n", ""]
        {
            assert_eq!(raw(&format!("{line}{headers}\r\n")), Ok(()), "{headers:?}");
        }
        // A bare LF ends a line too.
        assert_eq!(
            raw("POST / HTTP/1.1\nHost: h\nContent-Length: 1\nTransfer-Encoding: chunked\n\n"),
            Err(FramingRefusal::LengthAndChunked)
        );
    }

    #[test]
    fn request_lines_with_raw_spaces_or_bytes_are_refused() {
        for line in ["GET /a b HTTP/1.1", "GET /caf\u{e9} HTTP/1.1", "GET  /a HTTP/1.1", "GET /a\tb HTTP/1.1", "GET /a"]
        {
            assert_eq!(raw(&format!("{line}\r\nHost: h\r\n\r\n")), Err(FramingRefusal::BadRequestLine), "{line:?}");
        }
        assert_eq!(raw("GET /a?b=c HTTP/1.1\r\nHost: h\r\n\r\n"), Ok(()));
        for line in ["GET /a HTTP/1.1 ", "GET /a HTTP/1.1 x", " GET /a HTTP/1.1", "GET /a  HTTP/1.1", "GET"] {
            assert_eq!(raw(&format!("{line}\r\nHost: h\r\n\r\n")), Err(FramingRefusal::BadRequestLine), "{line:?}");
        }
    }

    /// Every byte value, at each place of a long target (where the vector loop's steps and its
    /// tail fall): only visible ASCII is a target's, in the request line and in the query.
    #[test]
    fn a_target_holds_visible_ascii_only_at_any_place() {
        let visible = |b: u8| (0x21..=0x7e).contains(&b);
        for len in [1usize, 15, 16, 17, 31, 33, 100] {
            for at in [0, len / 2, len - 1] {
                for b in 0..=255u8 {
                    let mut target = vec![b'a'; len];
                    target[at] = b;
                    assert_eq!(visible_ascii(&target), visible(b), "{b:#04x} at {at} of {len}");
                }
            }
        }
        assert!(visible_ascii(b""));
        let long = format!("/x?{}", "a=b&".repeat(3000));
        assert_eq!(raw(&format!("GET {long} HTTP/1.1\r\nHost: h\r\n\r\n")), Ok(()));
        let mut bad = long.into_bytes();
        let last = bad.len() - 1;
        bad[last] = 0x7f;
        let mut head = b"GET ".to_vec();
        head.extend_from_slice(&bad);
        head.extend_from_slice(b" HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(check_raw(&head), Err(FramingRefusal::BadRequestLine), "DEL as the last byte of 12 KB");
    }

    #[test]
    fn targets_that_are_no_request_form_are_refused() {
        for target in ["public/x", "x", "?a=b", "ftp://h/x", "http:/x", "HTTP:x"] {
            let head = format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n");
            assert_eq!(raw(&head), Err(FramingRefusal::BadRequestLine), "{target:?}");
        }
        for target in ["/", "/x?y", "*", "http://h/x", "HTTPS://h/x"] {
            assert_eq!(raw(&format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n")), Ok(()), "{target:?}");
        }
    }

    fn head_with<'a>(method: &'a str, headers: &'a HeaderMap) -> Head<'a> {
        Head { raw: None, method, headers, authority: None, query: None, max_bytes: 16384, max_headers: 100 }
    }

    #[test]
    fn methods_with_lower_case_letters_are_refused() {
        let headers = HeaderMap::new();
        for method in ["get", "Delete", "dELETE", "pOST", "m-search"] {
            assert_eq!(check(&head_with(method, &headers)), Err(FramingRefusal::BadMethod), "{method}");
        }
        for method in ["GET", "DELETE", "M-SEARCH", "PROPFIND", "X_1"] {
            assert_eq!(check(&head_with(method, &headers)), Ok(Checked::default()), "{method}");
        }
    }

    #[test]
    fn fields_overriding_the_method_or_target_are_refused_and_proxy_claims_noted() {
        let with = |name: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(HOST, HeaderValue::from_static("h"));
            headers.insert(http::HeaderName::from_static("accept"), HeaderValue::from_static("*/*"));
            headers.insert(http::HeaderName::from_static(name), HeaderValue::from_static("x"));
            check(&head_with("POST", &headers))
        };
        for name in ["x-http-method-override", "x-http-method", "x-method-override"] {
            assert_eq!(with(name), Err(FramingRefusal::MethodOverride), "{name}");
        }
        for name in ["x-original-url", "x-rewrite-url"] {
            assert_eq!(with(name), Err(FramingRefusal::TargetOverride), "{name}");
        }
        // Spelled with `_` for `-`: the same fields to a CGI-style server.
        for name in ["x_http_method_override", "x-http_method", "x_method-override"] {
            assert_eq!(with(name), Err(FramingRefusal::MethodOverride), "{name}");
        }
        for name in ["x_original_url", "x_rewrite-url"] {
            assert_eq!(with(name), Err(FramingRefusal::TargetOverride), "{name}");
        }
        // Every name of the list the gateway removes is noted, and only those.
        for name in PROXY_CLAIMS {
            assert_eq!(with(name), Ok(Checked { proxy_claims: true, ..Checked::default() }), "{name}");
        }
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded",
            "forwarded-for",
            "x-real-ips",
            "x-request-ids",
            "x-request-i",
            "xrequest-id",
            "traceparents",
            "tracestate",
            "trace-parent",
        ] {
            assert_eq!(with(name), Ok(Checked::default()), "{name}");
        }
    }

    /// The fields read on every request when present are noted as the walk passes them, in
    /// whatever case they came (a parsed name is lower case), beside any other finding.
    #[test]
    fn the_request_id_and_trace_fields_are_noted() {
        let with = |names: &[&'static str]| {
            let mut headers = HeaderMap::new();
            headers.insert(HOST, HeaderValue::from_static("h"));
            for name in names {
                let name = http::HeaderName::from_bytes(name.as_bytes()).expect("name");
                headers.append(name, HeaderValue::from_static("x"));
            }
            check(&head_with("GET", &headers))
        };
        let request_id = Checked { request_id: true, ..Checked::default() };
        let traceparent = Checked { traceparent: true, ..Checked::default() };
        assert_eq!(with(&["x-request-id"]), Ok(request_id));
        assert_eq!(with(&["X-Request-ID"]), Ok(request_id));
        assert_eq!(with(&["traceparent"]), Ok(traceparent));
        assert_eq!(with(&["TraceParent", "TRACEPARENT"]), Ok(traceparent));
        assert_eq!(
            with(&["x-real-ip", "traceparent", "accept", "x-request-id"]),
            Ok(Checked { proxy_claims: true, request_id: true, traceparent: true, ..Checked::default() })
        );
        assert_eq!(with(&["accept", "user-agent"]), Ok(Checked::default()));
    }

    #[test]
    fn a_second_authorization_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("h"));
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        assert_eq!(check(&head_with("GET", &headers)), Ok(Checked::default()));
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(check(&head_with("GET", &headers)), Err(FramingRefusal::DuplicateAuthorization));
        assert_eq!(FramingRefusal::DuplicateAuthorization.code(), "duplicate_authorization");
    }

    #[test]
    fn underscore_spellings_of_proxy_fields_are_told_from_other_fields() {
        for name in [
            "x_forwarded_for",
            "x-forwarded_for",
            "x_forwarded-proto",
            "x_request_id",
            "x_real_ip",
            "x_client_ip",
            "true_client_ip",
            "x_cluster_client_ip",
            "x_forwarded_host",
            "x_forwarded_prefix",
        ] {
            assert!(is_underscored_proxy_field(name.as_bytes()), "{name}");
        }
        for name in [
            "x-forwarded-for",
            "x-request-id",
            "forwarded",
            "x_custom_thing",
            "x_forwarded_fo",
            "x_forwarded_fors",
            "x__forwarded_for",
            "y_forwarded_for",
            "traceparent",
            "user_agent",
            "",
        ] {
            assert!(!is_underscored_proxy_field(name.as_bytes()), "{name}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("h"));
        headers.insert("x_forwarded_host", HeaderValue::from_static("evil"));
        assert_eq!(check(&head_with("GET", &headers)).map(|c| c.underscored_claims), Ok(true));
        headers.remove("x_forwarded_host");
        headers.insert("x_other", HeaderValue::from_static("v"));
        assert_eq!(check(&head_with("GET", &headers)).map(|c| c.underscored_claims), Ok(false));
    }

    #[test]
    fn a_length_with_leading_zeros_is_noted_as_its_number_and_one_not_digits_alone_refused() {
        let length = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(HOST, HeaderValue::from_static("h"));
            headers.insert(CONTENT_LENGTH, HeaderValue::from_static(value));
            check(&head_with("POST", &headers)).map(|c| c.canonical_length)
        };
        // Written as the number: sent as it is.
        for value in ["0", "3", "10", "18446744073709551615"] {
            assert_eq!(length(value), Ok(None), "{value}");
        }
        assert_eq!(length("010"), Ok(Some(10)));
        assert_eq!(length("0000"), Ok(Some(0)));
        assert_eq!(length(" 007 "), Ok(Some(7)));
        assert_eq!(length("00000000000000000000003"), Ok(Some(3)));
        for value in ["+3", "-1", "0x3", "3a", "", "1 2", "018446744073709551616"] {
            assert_eq!(length(value), Err(FramingRefusal::BadLength), "{value:?}");
        }
        // Over HTTP/1 the same, with the raw head walked too.
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("00010"));
        let raw = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 00010\r\n\r\n";
        let head = Head { raw: Some(raw), ..head_with("POST", &headers) };
        assert_eq!(check(&head).map(|c| c.canonical_length), Ok(Some(10)));
    }

    /// The fuzz target's corpus, replayed on every test run.
    #[test]
    fn fuzz_corpus_holds_the_invariants() {
        for input in crate::testing::fuzz_corpus("framing", 10) {
            assert_invariants(&input);
        }
    }

    #[test]
    fn heads_over_the_limits_get_431() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("h"));
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let head = |max_bytes, max_headers| Head {
            raw: Some(raw),
            method: "GET",
            headers: &headers,
            authority: None,
            query: None,
            max_bytes,
            max_headers,
        };
        assert_eq!(check(&head(1024, 10)), Ok(Checked::default()));
        assert_eq!(check(&head(10, 10)).map_err(FramingRefusal::status), Err(431));
        assert_eq!(check(&head(1024, 0)).map_err(FramingRefusal::code), Err("request_header_too_large"));
    }

    #[test]
    fn authority_and_host_must_name_the_same_host() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("zwfw.example.gov.cn:8080"));
        let head = |authority| Head {
            raw: None,
            method: "GET",
            headers: &headers,
            authority,
            query: None,
            max_bytes: 16384,
            max_headers: 100,
        };
        assert_eq!(check(&head(Some("ZWFW.example.gov.cn."))), Ok(Checked::default()));
        assert_eq!(check(&head(Some("admin.internal"))), Err(FramingRefusal::HostMismatch));
        assert_eq!(check(&head(None)), Ok(Checked::default()));
        let q = Head {
            raw: None,
            method: "GET",
            headers: &headers,
            authority: None,
            query: Some("a=caf\u{e9}"),
            max_bytes: 16384,
            max_headers: 100,
        };
        assert_eq!(check(&q), Err(FramingRefusal::BadQuery));
    }
}
