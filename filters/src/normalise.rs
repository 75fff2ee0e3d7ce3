//! Request path step 1, "normalise": the one canonical form of a request's host and path,
//! computed before routing. Routing, identity, the policy input, the cache key, the
//! access log and the upstream request line all read this form, so edgegate decides on
//! exactly the request the pod receives: `/public/%2e%2e/secret/x` is `/secret/x` to the
//! router and the policy, and `/secret/x` is what the pod is sent.
//!
//! Path rules (RFC 3986 §6.2.2, plus what traversal attacks use):
//! - percent-encoded unreserved characters are decoded (`%7e` → `~`, `%2e` → `.`), every
//!   other escape is kept with upper-case hex digits;
//! - `.` and `..` segments are resolved (also when written `%2e`); a path that climbs
//!   above `/` is refused, as is a `.`/`..` segment with `;` parameters (`..;/`, which
//!   Java servlet containers resolve, also with the `;` escaped: `..%3B/`);
//! - empty segments collapse (`//` → `/`);
//! - refused outright: raw `\`, encoded control characters (`%00`, `%0a`, …), a `%25`
//!   escape of `.`, `/` or `\` (decoded twice by some servers), a malformed escape, and
//!   any byte outside printable ASCII;
//! - `%2F` and `%5C` stay encoded (they are not separators) and are flagged, so the
//!   route — known only after routing — decides whether it accepts them
//!   (`path: {allow_encoded_slash: true}`); a dot segment hidden beside one (`..%2F`) is
//!   refused whatever the route says;
//! - escaped UTF-8 passes, except where a pod that applies Unicode compatibility
//!   normalisation (NFKC) would read a dot segment: `%EF%BC%8E%EF%BC%8E` (fullwidth `．．`)
//!   and the other characters NFKC maps to `.`, `/`, `\` or `;`.

use std::fmt;

/// Why a request's host or path was refused (400, before routing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Empty, too long, or bytes no DNS name or IP literal has (`%`, UTF-8, spaces).
    BadHost,
    /// Not `/`-rooted, or bytes outside printable ASCII.
    BadPath,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `..` above the root, or a dot segment in disguise.
    Traversal,
    /// A raw backslash: some servers treat it as `/`.
    Backslash,
    /// `%00` or another encoded control character.
    EncodedControl,
    /// `%25` encoding `.`, `/` or `\`: a second decode would turn it into one.
    DoubleEncoding,
    /// `%2F` or `%5C` on a route that does not allow them.
    EncodedSlash,
    /// An overlong UTF-8 encoding of `.`, `/` or `\` (`%C0%AE`, `%E0%80%AF`): decoders
    /// that accept overlong forms read a dot segment or a separator there.
    OverlongEncoding,
    /// Escaped characters that Unicode compatibility normalisation (NFKC) turns into a dot
    /// segment, or into a separator beside one: fullwidth `．．` (`%EF%BC%8E%EF%BC%8E`), the
    /// two-dot leader `‥`, `..／` with a fullwidth solidus.
    LookalikeDotSegment,
}

impl Refusal {
    /// The machine-readable error code of the 400 reply.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::BadHost => "bad_host",
            Refusal::BadPath => "bad_path",
            Refusal::BadEscape => "bad_path_escape",
            Refusal::Traversal => "path_traversal",
            Refusal::Backslash => "path_backslash",
            Refusal::EncodedControl => "path_encoded_control",
            Refusal::DoubleEncoding => "path_double_encoding",
            Refusal::EncodedSlash => "path_encoded_slash",
            Refusal::OverlongEncoding => "path_overlong_encoding",
            Refusal::LookalikeDotSegment => "path_lookalike_dot_segment",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A request's canonical host and path, in one buffer (one allocation per request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanonicalRequest {
    text: String,
    host_end: usize,
    /// The port the client named with the host (`Host: a.gov.cn:8443`), if any: not part of
    /// the canonical host, but sent on to the pod and part of the cache key.
    port: Option<u16>,
    /// The host arrived exactly as [`CanonicalRequest::upstream_host`] spells it (the usual
    /// case): the pod's `Host` needs no rewriting.
    host_as_sent: bool,
    /// The path holds `%2F` or `%5C`.
    encoded_slash: bool,
    /// The canonical path differs from the one received: the upstream request line must
    /// be rewritten.
    path_changed: bool,
}

impl CanonicalRequest {
    /// Canonicalises `raw_host` (a `Host` value or URI authority; `None` for an HTTP/1.0
    /// request without one, which only host-less routes can match) and `raw_path` (the
    /// path component of the request target, without the query).
    pub fn new(raw_host: Option<&[u8]>, raw_path: &[u8]) -> Result<CanonicalRequest, Refusal> {
        let mut text = String::with_capacity(raw_host.map_or(0, <[u8]>::len) + raw_path.len() + 1);
        let (port, host_as_sent) = match raw_host {
            Some(h) => {
                let port = push_host(h, &mut text)?;
                // The name is canonical as sent, and so is the port unless written with a
                // leading zero (its digits were checked) or left empty (`host:`).
                let name_len = text.len();
                let as_sent = h.len() >= name_len
                    && h[..name_len] == *text.as_bytes()
                    && match port {
                        None => h.len() == name_len,
                        Some(p) => {
                            h.get(name_len) == Some(&b':')
                                && (h.get(name_len + 1) != Some(&b'0') || (p == 0 && h.len() == name_len + 2))
                        }
                    };
                (port, as_sent)
            }
            None => (None, true),
        };
        let host_end = text.len();
        let (encoded_slash, path_changed) = push_path(raw_path, &mut text)?;
        Ok(CanonicalRequest { text, host_end, port, host_as_sent, encoded_slash, path_changed })
    }

    /// Lower-case, without port or trailing dot; empty when the request named no host.
    pub fn host(&self) -> &str {
        &self.text[..self.host_end]
    }

    /// The port named with the host, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Forgets a named port that is the scheme's default (`h:443` over TLS is `h`).
    pub fn drop_default_port(&mut self, default: u16) {
        if self.port == Some(default) {
            self.port = None;
            self.host_as_sent = false;
        }
    }

    /// Whether the host arrived spelled as [`CanonicalRequest::upstream_host`] spells it,
    /// so that the pod's `Host` needs no rewriting.
    pub fn host_as_sent(&self) -> bool {
        self.host_as_sent
    }

    /// The `Host` field for the pod: the canonical host, and `:port` when one was named.
    pub fn upstream_host(&self) -> String {
        let mut host = self.host().to_owned();
        if let Some(port) = self.port {
            host.push(':');
            PortText::new(port).push_to(&mut host);
        }
        host
    }

    /// `/`-rooted, dot segments resolved, empty segments collapsed.
    pub fn path(&self) -> &str {
        &self.text[self.host_end..]
    }

    pub fn has_encoded_slash(&self) -> bool {
        self.encoded_slash
    }

    pub fn path_changed(&self) -> bool {
        self.path_changed
    }

    /// The origin-form request target for the upstream: the canonical path and the query
    /// as received, byte for byte.
    pub fn target(&self, query: Option<&str>) -> String {
        let path = self.path();
        let mut target = String::with_capacity(path.len() + 1 + query.map_or(0, str::len));
        target.push_str(path);
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        target
    }

    /// The route's verdict on `%2F`/`%5C`, once the route is known.
    pub fn check_route(&self, allow_encoded_slash: bool) -> Result<(), Refusal> {
        if self.encoded_slash && !allow_encoded_slash {
            return Err(Refusal::EncodedSlash);
        }
        Ok(())
    }
}

/// Longest host accepted (a DNS name is at most 253 bytes; room for an IPv6 literal).
const MAX_HOST: usize = 255;

/// A port number's decimal digits, on the stack.
pub struct PortText {
    digits: [u8; 5],
    start: usize,
}

impl PortText {
    pub fn new(port: u16) -> PortText {
        let (mut digits, mut start, mut n) = ([0u8; 5], 5, port);
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        PortText { digits, start }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }

    /// Appends the digits to `out` (as characters: no UTF-8 check of what are digits).
    pub fn push_to(&self, out: &mut String) {
        for &d in self.as_bytes() {
            out.push(char::from(d));
        }
    }
}

/// Appends the canonical form of `host`: lower-case, `:port` and one trailing dot dropped.
/// The port must be digits; IDNA (raw UTF-8) and `%` are refused — clients send
/// `xn--` names. Returns the port named with the host, if any (`host:` names none).
fn push_host(host: &[u8], out: &mut String) -> Result<Option<u16>, Refusal> {
    let (name, port) = if host.first() == Some(&b'[') {
        let end = host.iter().position(|&b| b == b']').ok_or(Refusal::BadHost)?;
        let rest = &host[end + 1..];
        let port = match rest {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return Err(Refusal::BadHost),
        };
        if !host[1..end].iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return Err(Refusal::BadHost);
        }
        (&host[..=end], port)
    } else {
        match host.iter().position(|&b| b == b':') {
            Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        // Empty (`host:`) is allowed by RFC 3986; anything else must be a port number.
        if port.len() > 5 || !port.iter().all(u8::is_ascii_digit) || port_value(port) > 65535 {
            return Err(Refusal::BadHost);
        }
    }
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > MAX_HOST {
        return Err(Refusal::BadHost);
    }
    if name[0] != b'[' {
        // One pass: label bytes only, and labels are never empty (`a..b`, `.a` and a second
        // trailing dot are refused).
        let mut previous = b'.';
        for &b in name {
            let ok = if b == b'.' { previous != b'.' } else { BYTE_CLASS[usize::from(b)] & HOST_LABEL != 0 };
            if !ok {
                return Err(Refusal::BadHost);
            }
            previous = b;
        }
        if previous == b'.' {
            return Err(Refusal::BadHost);
        }
    }
    // Checked above: ASCII only, so this is one copy and an in-place lower-casing.
    let start = out.len();
    out.push_str(std::str::from_utf8(name).map_err(|_| Refusal::BadHost)?);
    out[start..].make_ascii_lowercase();
    // In range: checked above.
    Ok(port.filter(|p| !p.is_empty()).and_then(|p| u16::try_from(port_value(p)).ok()))
}

/// Byte classes, one table lookup per byte on the hot path.
const HOST_LABEL: u8 = 1;
/// May stand raw in a canonical path and needs no look: printable ASCII except `%`, `\`,
/// `?`, `#`, `/` and `.` (the last two are looked at for `//` and dot segments).
const PATH_PLAIN: u8 = 2;

const BYTE_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' {
            t[b] |= HOST_LABEL;
        }
        if c > 0x20 && c < 0x7f && !matches!(c, b'%' | b'\\' | b'?' | b'#' | b'/' | b'.') {
            t[b] |= PATH_PLAIN;
        }
        b += 1;
    }
    t
};

fn port_value(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'))
}

/// RFC 3986 §2.3.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes a path may hold raw: printable ASCII except space, `\`, `?` and `#` (the query
/// and fragment are cut off before this runs).
fn raw_path_byte(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !matches!(b, b'\\' | b'?' | b'#')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Appends the canonical form of `raw`; returns whether it holds an encoded `/` or `\`,
/// and whether it differs from `raw`.
fn push_path(raw: &[u8], out: &mut String) -> Result<(bool, bool), Refusal> {
    let Some(rest) = raw.strip_prefix(b"/") else {
        return Err(Refusal::BadPath);
    };
    if let Some(text) = already_canonical(raw) {
        // Most requests: nothing to decode, resolve or collapse; one copy.
        out.push_str(text);
        return Ok((false, false));
    }
    let root = out.len();
    out.push('/');
    let mut encoded_slash = false;
    let mut segments = rest.split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let start = out.len();
        let slash_here = push_segment(segment, out)?;
        encoded_slash |= slash_here;
        let decoded = &out.as_bytes()[start..];
        if decoded.is_empty() {
            continue;
        }
        if is_dot_segment(decoded) {
            let dots = decoded.iter().take_while(|&&b| b == b'.').count();
            if dots == 2 && decoded.len() == 2 {
                // `..`: drop this segment and the one before it.
                if start == root + 1 {
                    return Err(Refusal::Traversal);
                }
                out.truncate(start - 1);
                let parent = out[root..].rfind('/').map_or(root, |p| root + p);
                out.truncate(parent + 1);
                continue;
            }
            if dots == 1 && decoded.len() == 1 {
                out.truncate(start);
                continue;
            }
            // `.;x` or `..;x`: a dot segment to servers that strip path parameters.
            return Err(Refusal::Traversal);
        }
        if slash_here && hides_dot_segment(decoded) {
            return Err(Refusal::Traversal);
        }
        if escapes_non_ascii(decoded) && lookalike_dot_segment(decoded) {
            return Err(Refusal::LookalikeDotSegment);
        }
        if !last {
            out.push('/');
        }
    }
    Ok((encoded_slash, out.as_bytes()[root..] != *raw))
}

/// `raw` as text when it is canonical as it stands: printable ASCII without `%` or `\`,
/// no empty segment and no segment starting with `.` (which covers every dot segment;
/// `/.well-known` merely takes the slow path).
fn already_canonical(raw: &[u8]) -> Option<&str> {
    let mut previous = 0u8;
    for &b in raw {
        let plain = BYTE_CLASS[usize::from(b)] & PATH_PLAIN != 0;
        let ok = plain || (b == b'/' && previous != b'/') || (b == b'.' && previous != b'/');
        if !ok {
            return None;
        }
        previous = b;
    }
    std::str::from_utf8(raw).ok()
}

/// `.`, `..`, or either followed by `;` parameters — the `;` raw or escaped (`..%3B`, which
/// a pod that decodes the path before it strips parameters reads as `..;`).
fn is_dot_segment(s: &[u8]) -> bool {
    let params = s.iter().position(|&b| b == b';').unwrap_or(s.len());
    let escaped = s.windows(3).position(|w| w == b"%3B").unwrap_or(s.len());
    let name = &s[..params.min(escaped)];
    name == b"." || name == b".."
}

/// A segment with `%2F`/`%5C` whose pieces between them include a dot segment: a pod
/// that decodes the slash would climb.
fn hides_dot_segment(s: &[u8]) -> bool {
    let mut pieces = Vec::new();
    let mut from = 0;
    let mut i = 0;
    while i + 3 <= s.len() {
        if s[i] == b'%' && (&s[i + 1..i + 3] == b"2F" || &s[i + 1..i + 3] == b"5C") {
            pieces.push(&s[from..i]);
            i += 3;
            from = i;
        } else {
            i += 1;
        }
    }
    pieces.push(&s[from..]);
    pieces.into_iter().any(is_dot_segment)
}

/// Whether a canonical segment holds an escaped byte above ASCII (`%80`–`%FF`).
fn escapes_non_ascii(s: &[u8]) -> bool {
    s.windows(2).any(|w| w[0] == b'%' && w[1] >= b'8')
}

/// Every character Unicode compatibility normalisation (NFKC, Unicode 14) maps to nothing
/// but `.`, `/`, `\` and `;`, with what it maps to: the characters a pod that normalises
/// the path it decoded reads as a dot, a separator or a path parameter.
const LOOKALIKES: [(char, &str); 14] = [
    ('\u{037E}', ";"),   // Greek question mark
    ('\u{2024}', "."),   // one dot leader
    ('\u{2025}', ".."),  // two dot leader
    ('\u{2026}', "..."), // horizontal ellipsis
    ('\u{FE14}', ";"),   // presentation form for vertical semicolon
    ('\u{FE19}', "..."), // presentation form for vertical horizontal ellipsis
    ('\u{FE30}', ".."),  // presentation form for vertical two dot leader
    ('\u{FE52}', "."),   // small full stop
    ('\u{FE54}', ";"),   // small semicolon
    ('\u{FE68}', "\\"),  // small reverse solidus
    ('\u{FF0E}', "."),   // fullwidth full stop
    ('\u{FF0F}', "/"),   // fullwidth solidus
    ('\u{FF1B}', ";"),   // fullwidth semicolon
    ('\u{FF3C}', "\\"),  // fullwidth reverse solidus
];

/// The byte `bytes[i..]` escapes, if it starts with `%` and two hex digits.
fn escaped_at(bytes: &[u8], i: usize) -> Option<u8> {
    match bytes.get(i..i + 3)? {
        [b'%', hi, lo] => Some(hex(*hi)? << 4 | hex(*lo)?),
        _ => None,
    }
}

/// `bytes` with each `%` and two hex digits decoded once; any other byte as it is.
fn percent_decoded(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match escaped_at(bytes, i) {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// A canonical segment holding escaped UTF-8 that, decoded and with [`LOOKALIKES`] replaced
/// by what NFKC makes of them, is a dot segment or has one between separators (`..／x`).
/// Only segments with an escape above ASCII come here, so the usual request never does.
fn lookalike_dot_segment(segment: &[u8]) -> bool {
    // The segment is canonical: every `%` is followed by two hex digits.
    let bytes = percent_decoded(segment);
    let mut mapped = String::with_capacity(bytes.len());
    for c in String::from_utf8_lossy(&bytes).chars() {
        match LOOKALIKES.iter().find(|(l, _)| *l == c) {
            Some((_, ascii)) => mapped.push_str(ascii),
            None => mapped.push(c),
        }
    }
    mapped.split(['/', '\\']).any(|piece| is_dot_segment(piece.as_bytes()))
}

/// Decodes one segment (no raw `/` in it) onto `out`; returns whether it held `%2F`/`%5C`.
fn push_segment(segment: &[u8], out: &mut String) -> Result<bool, Refusal> {
    let mut slash = false;
    let mut i = 0;
    while i < segment.len() {
        let b = segment[i];
        if b != b'%' {
            if b == b'\\' {
                return Err(Refusal::Backslash);
            }
            if !raw_path_byte(b) {
                return Err(Refusal::BadPath);
            }
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) =
            (segment.get(i + 1).copied().and_then(hex), segment.get(i + 2).copied().and_then(hex))
        else {
            return Err(Refusal::BadEscape);
        };
        let v = hi << 4 | lo;
        i += 3;
        if unreserved(v) {
            out.push(char::from(v));
            continue;
        }
        if v < 0x20 || v == 0x7f {
            return Err(Refusal::EncodedControl);
        }
        if v == b'%' && encodes_separator_or_dot(&segment[i..]) {
            return Err(Refusal::DoubleEncoding);
        }
        if matches!(v, 0xC0 | 0xC1 | 0xE0 | 0xF0) && overlong_separator_or_dot(v, &segment[i..]) {
            return Err(Refusal::OverlongEncoding);
        }
        slash |= v == b'/' || v == b'\\';
        out.push('%');
        out.push(char::from(HEX_UPPER[usize::from(hi)]));
        out.push(char::from(HEX_UPPER[usize::from(lo)]));
    }
    Ok(slash)
}

/// What follows a `%25`: `2e`, `2f` or `5c` (any case), possibly itself escaped
/// (`%32%65`), makes a second decode produce `.`, `/` or `\`.
fn encodes_separator_or_dot(after: &[u8]) -> bool {
    let mut digits = [0u8; 2];
    let mut i = 0;
    for d in &mut digits {
        match after.get(i) {
            Some(b'%') => {
                let (Some(hi), Some(lo)) =
                    (after.get(i + 1).copied().and_then(hex), after.get(i + 2).copied().and_then(hex))
                else {
                    return false;
                };
                *d = (hi << 4 | lo).to_ascii_lowercase();
                i += 3;
            }
            Some(&b) => {
                *d = b.to_ascii_lowercase();
                i += 1;
            }
            None => return false,
        }
    }
    matches!(&digits, b"2e" | b"2f" | b"5c")
}

/// `lead` (an escaped `C0`, `C1`, `E0` or `F0`) and the escaped continuation bytes after it
/// encode `.`, `/` or `\` in more bytes than UTF-8 allows (`%C0%AE`, `%E0%80%AF`,
/// `%F0%80%81%9C`). Only these three are refused: other bytes after such a lead are left to
/// the pod (`%C0%AE` is also a character in GBK, a legacy encoding some old clients use).
fn overlong_separator_or_dot(lead: u8, after: &[u8]) -> bool {
    let (continuations, mut value) = match lead {
        0xC0 | 0xC1 => (1, u32::from(lead & 0x1F)),
        0xE0 => (2, 0),
        0xF0 => (3, 0),
        _ => return false,
    };
    for k in 0..continuations {
        let at = 3 * k;
        let (Some(b'%'), Some(hi), Some(lo)) =
            (after.get(at), after.get(at + 1).copied().and_then(hex), after.get(at + 2).copied().and_then(hex))
        else {
            return false;
        };
        let byte = hi << 4 | lo;
        if byte & 0xC0 != 0x80 {
            return false;
        }
        value = value << 6 | u32::from(byte & 0x3F);
    }
    matches!(value, 0x2E | 0x2F | 0x5C)
}

/// A cache purge's prefix (`DELETE /-/cache?prefix=…`, the value as it arrives in the
/// query) in the form the cache keys its entries: `host/path` as [`CanonicalRequest`]
/// spells them, so that a prefix matches whatever spelling its requests arrived in. The
/// query's escapes are decoded once (`%2F` is `/`, `%E5%8A%9E` the UTF-8 of `办`, `%25` a
/// `%`); the host is lower-cased; in the path, an escaped unreserved character is decoded
/// (`%7e` → `~`), every other escape kept with upper-case hex digits (`%e5` → `%E5`), and
/// a byte a path may not hold raw (space, UTF-8, `\`) escaped. Dot segments are left as
/// written: a prefix may end mid-segment. Never refused: a prefix matching nothing purges
/// nothing.
pub fn purge_prefix(value: &[u8]) -> String {
    let decoded = percent_decoded(value);
    let (host, path) = match decoded.iter().position(|&b| b == b'/') {
        Some(slash) => decoded.split_at(slash),
        None => (&decoded[..], &[][..]),
    };
    let mut out = String::with_capacity(decoded.len() + 16);
    let escape = |out: &mut String, v: u8| {
        out.push('%');
        out.push(char::from(HEX_UPPER[usize::from(v >> 4)]));
        out.push(char::from(HEX_UPPER[usize::from(v & 0xf)]));
    };
    for &b in host {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b.to_ascii_lowercase()));
        } else {
            escape(&mut out, b);
        }
    }
    let mut i = 0;
    while i < path.len() {
        if let Some(v) = escaped_at(path, i) {
            if unreserved(v) {
                out.push(char::from(v));
            } else {
                escape(&mut out, v);
            }
            i += 3;
            continue;
        }
        let b = path[i];
        if raw_path_byte(b) && b != b'%' {
            out.push(char::from(b));
        } else {
            escape(&mut out, b);
        }
        i += 1;
    }
    out
}

/// Splits a fuzz input into a host and a path.
#[doc(hidden)]
pub fn split_fuzz_input(data: &[u8]) -> (&[u8], &[u8]) {
    // Host, then a NUL, then the path; no NUL means a fixed host.
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (b"zwfw.example.gov.cn", data),
    }
}

/// The properties every canonical request has, checked on arbitrary input: by the fuzz
/// target (`fuzz/fuzz_targets/canonical.rs`) and, over its corpus, by `cargo test`.
/// Panics, naming the property, when one does not hold.
#[doc(hidden)]
pub fn assert_invariants(raw_host: &[u8], raw_path: &[u8]) {
    let Ok(c) = CanonicalRequest::new(Some(raw_host), raw_path) else { return };
    let (host, path) = (c.host(), c.path());
    assert!(!host.is_empty() && !host.bytes().any(|b| b.is_ascii_uppercase() || b == b'%'), "host {host:?}");
    assert!(path.starts_with('/'), "path not rooted: {path:?}");
    assert!(!path.contains("//"), "empty segment survived: {path:?}");
    assert!(
        !path.split('/').any(|s| s == "." || s == ".."),
        "dot segment survived: {path:?} from {:?}",
        String::from_utf8_lossy(raw_path)
    );
    assert!(path.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'\\'), "bad byte in {path:?}");
    assert!(!path.split('/').any(|s| lookalike_dot_segment(s.as_bytes())), "look-alike dot segment in {path:?}");
    let again = CanonicalRequest::new(Some(host.as_bytes()), path.as_bytes()).expect("canonical input is accepted");
    assert_eq!((again.host(), again.path()), (host, path), "not a fixed point");
    assert!(!again.path_changed(), "a canonical path is forwarded unchanged");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> Result<String, Refusal> {
        CanonicalRequest::new(None, raw.as_bytes()).map(|c| c.path().to_owned())
    }

    #[test]
    fn canonical_paths() {
        for (raw, want) in [
            ("/", "/"),
            ("/api/permits/42", "/api/permits/42"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/../../c", "/c"),
            ("//b", "/b"),
            ("/a//b///c", "/a/b/c"),
            ("/a/", "/a/"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            // An escaped `;` after other names is only a name.
            ("/a/b%3bc", "/a/b%3Bc"),
            ("/a/...%3B", "/a/...%3B"),
            ("/.", "/"),
            ("/public/../secret/plans.txt", "/secret/plans.txt"),
            ("/public/%2e%2e/secret/x", "/secret/x"),
            ("/public/%2E%2E/secret/x", "/secret/x"),
            ("/public/.%2e/secret/x", "/secret/x"),
            ("/public//../secret/x", "/secret/x"),
            ("/public/./../secret", "/secret"),
            ("/%7e/x", "/~/x"),
            ("/%7E%41%62%30-%5F", "/~Ab0-_"),
            ("/a%3fb", "/a%3Fb"),
            ("/a%3Fb", "/a%3Fb"),
            ("/x%20y", "/x%20y"),
            ("/x%e4%b8%ad", "/x%E4%B8%AD"),
            ("/a;b=c/d", "/a;b=c/d"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a/b..", "/a/b.."),
            ("/a/...", "/a/..."),
            ("/%25", "/%25"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/b.txt", "/a/b.txt"),
            ("/%2541", "/%2541"),
        ] {
            assert_eq!(path(raw), Ok(want.to_owned()), "{raw}");
        }
    }

    #[test]
    fn refused_paths() {
        for (raw, why) in [
            ("", Refusal::BadPath),
            ("api", Refusal::BadPath),
            ("*", Refusal::BadPath),
            ("/..", Refusal::Traversal),
            ("/../x", Refusal::Traversal),
            ("/a/../../x", Refusal::Traversal),
            ("/%2e%2e/", Refusal::Traversal),
            ("//../x", Refusal::Traversal),
            ("/public/..;/secret", Refusal::Traversal),
            ("/public/.;x/secret", Refusal::Traversal),
            ("/public/..%3b/secret", Refusal::Traversal),
            ("/public/..%3Bx/secret", Refusal::Traversal),
            ("/public/.%3b/secret", Refusal::Traversal),
            ("/public/%2e%2e%3b/secret", Refusal::Traversal),
            ("/public/..%2fsecret", Refusal::Traversal),
            ("/public/..%2Fsecret", Refusal::Traversal),
            ("/public/..%5csecret", Refusal::Traversal),
            ("/public\\..\\secret", Refusal::Backslash),
            ("/a\\b", Refusal::Backslash),
            ("/a%00b", Refusal::EncodedControl),
            ("/a%0ab", Refusal::EncodedControl),
            ("/a%7f", Refusal::EncodedControl),
            ("/a%", Refusal::BadEscape),
            ("/a%2", Refusal::BadEscape),
            ("/a%zz", Refusal::BadEscape),
            ("/%252e%252e/secret", Refusal::DoubleEncoding),
            ("/a%252Fb", Refusal::DoubleEncoding),
            ("/a%255cb", Refusal::DoubleEncoding),
            ("/a%25%32%65", Refusal::DoubleEncoding),
            ("/a%25%32e", Refusal::DoubleEncoding),
            ("/public/%c0%ae%c0%ae/secret", Refusal::OverlongEncoding),
            ("/public/%C0%AE%C0%AE/secret", Refusal::OverlongEncoding),
            ("/public/..%c0%afsecret", Refusal::OverlongEncoding),
            ("/public/%c1%9c", Refusal::OverlongEncoding),
            ("/a%e0%80%ae", Refusal::OverlongEncoding),
            ("/a%E0%80%AF", Refusal::OverlongEncoding),
            ("/a%e0%81%9c", Refusal::OverlongEncoding),
            ("/a%f0%80%80%ae", Refusal::OverlongEncoding),
            ("/a%f0%80%80%af", Refusal::OverlongEncoding),
            ("/a b", Refusal::BadPath),
            ("/a\tb", Refusal::BadPath),
            ("/a\u{7f}", Refusal::BadPath),
            ("/caf\u{e9}", Refusal::BadPath),
            ("/public/%EF%BC%8E%EF%BC%8E/secret", Refusal::LookalikeDotSegment),
            ("/public/%ef%bc%8e%ef%bc%8e/secret", Refusal::LookalikeDotSegment),
            ("/public/%EF%BC%8E./secret", Refusal::LookalikeDotSegment),
            ("/public/%E2%80%A5/secret", Refusal::LookalikeDotSegment),
            ("/public/%EF%B8%B0/secret", Refusal::LookalikeDotSegment),
            ("/public/%E2%80%A4%EF%B9%92/secret", Refusal::LookalikeDotSegment),
            ("/public/%EF%BC%8E", Refusal::LookalikeDotSegment),
            ("/public/..%EF%BC%8Fsecret", Refusal::LookalikeDotSegment),
            ("/public/..%EF%BC%BCsecret", Refusal::LookalikeDotSegment),
            ("/public/..%EF%B9%A8secret", Refusal::LookalikeDotSegment),
            ("/public/x%EF%BC%8F%E2%80%A5%EF%BC%8Fsecret", Refusal::LookalikeDotSegment),
            ("/public/..%CD%BEx/secret", Refusal::LookalikeDotSegment),
            ("/public/%EF%BC%8E%EF%BC%8E%EF%BC%9Bx/secret", Refusal::LookalikeDotSegment),
            ("/public/%E2%80%A5%EF%BC%9B/secret", Refusal::LookalikeDotSegment),
        ] {
            assert_eq!(path(raw), Err(why), "{raw:?}");
        }
    }

    #[test]
    fn the_upstream_host_is_the_canonical_name_with_the_named_port() {
        for port in [0u16, 7, 80, 443, 1337, 8080, 65535] {
            let mut text = String::new();
            PortText::new(port).push_to(&mut text);
            assert_eq!(text, port.to_string());
        }
        let host = |raw: &str| CanonicalRequest::new(Some(raw.as_bytes()), b"/").expect("canonical");
        for (raw, upstream) in [
            ("h.test", "h.test"),
            ("127.0.0.1:41234", "127.0.0.1:41234"),
            ("[::1]:8443", "[::1]:8443"),
            ("h.test:0", "h.test:0"),
            ("H.Test.:08443", "h.test:8443"),
            ("h.test:08443", "h.test:8443"),
            ("h.test.", "h.test"),
            ("h.test.:8443", "h.test:8443"),
            ("h.test:", "h.test"),
            ("h.test:00", "h.test:0"),
            ("[::1]:", "[::1]"),
        ] {
            let c = host(raw);
            assert_eq!(c.upstream_host(), upstream, "{raw}");
            assert_eq!(c.host_as_sent(), raw == upstream, "{raw}");
        }
        let mut c = host("h.test:80");
        assert!(c.host_as_sent());
        c.drop_default_port(80);
        assert_eq!(c.upstream_host(), "h.test");
        assert!(!c.host_as_sent(), "the pod is sent the host without the default port");
        let mut c = host("h.test:8080");
        c.drop_default_port(80);
        assert!(c.host_as_sent() && c.upstream_host() == "h.test:8080");
    }

    #[test]
    fn other_bytes_after_an_overlong_lead_are_left_alone() {
        // Real UTF-8 (`é`, `中`, `𝄞`), and GBK or truncated sequences that decode to no
        // separator, pass as escapes.
        for raw in ["/caf%C3%A9", "/%E4%B8%AD", "/%F0%9D%84%9E", "/%C0%B1", "/%C0", "/%C0%2E", "/%E0%80", "/%C0%80%AE"]
        {
            assert!(path(raw).is_ok(), "{raw:?}: {:?}", path(raw));
        }
    }

    #[test]
    fn escaped_utf8_that_normalises_to_no_dot_segment_passes() {
        // A fullwidth stop inside a name (CJK text), an ellipsis (three dots are a name),
        // a fullwidth solidus between names: no dot segment even after NFKC.
        for raw in [
            "/docs/a%EF%BC%8Eb",
            "/docs/%E2%80%A6",
            "/docs/%EF%BC%8E%EF%BC%8E%EF%BC%8E",
            "/docs/a%EF%BC%8Fb",
            "/docs/%E7%94%B3%E8%AF%B7%EF%BC%8Epdf",
            "/docs/%EF%BC%8Ex",
            "/docs/%FF%FE",
        ] {
            let c = CanonicalRequest::new(None, raw.as_bytes()).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(c.path(), raw, "forwarded as received");
        }
    }

    #[test]
    fn encoded_slashes_are_kept_and_left_to_the_route() {
        let c = CanonicalRequest::new(None, b"/files/a%2fb%5Cc").expect("canonical");
        assert_eq!(c.path(), "/files/a%2Fb%5Cc");
        assert!(c.has_encoded_slash());
        assert_eq!(c.check_route(false), Err(Refusal::EncodedSlash));
        assert_eq!(c.check_route(true), Ok(()));
        let plain = CanonicalRequest::new(None, b"/files/a").expect("canonical");
        assert!(!plain.has_encoded_slash());
        assert_eq!(plain.check_route(false), Ok(()));
    }

    #[test]
    fn path_changed_only_when_the_upstream_line_must_change() {
        assert!(!CanonicalRequest::new(None, b"/api/x").expect("ok").path_changed());
        assert!(CanonicalRequest::new(None, b"/api/./x").expect("ok").path_changed());
        assert!(CanonicalRequest::new(None, b"/api/%7ex").expect("ok").path_changed());
        assert!(CanonicalRequest::new(None, b"/api/%3f").expect("ok").path_changed());
    }

    #[test]
    fn canonical_is_a_fixed_point() {
        for raw in ["/a/./b/../c//d/", "/%7e%2e%2e%3f", "/x/%2e/y", "/q%2fr"] {
            let once = path(raw).expect("canonical");
            assert_eq!(path(&once).as_deref(), Ok(once.as_str()), "{raw}");
        }
    }

    fn host(raw: &str) -> Result<String, Refusal> {
        CanonicalRequest::new(Some(raw.as_bytes()), b"/").map(|c| c.host().to_owned())
    }

    #[test]
    fn canonical_hosts() {
        for (raw, want) in [
            ("zwfw.example.gov.cn", "zwfw.example.gov.cn"),
            ("ZWFW.Example.gov.cn.", "zwfw.example.gov.cn"),
            ("zwfw.example.gov.cn:80", "zwfw.example.gov.cn"),
            ("ZWFW.Example.gov.cn.:8443", "zwfw.example.gov.cn"),
            ("zwfw.example.gov.cn:", "zwfw.example.gov.cn"),
            ("[::1]:80", "[::1]"),
            ("[2001:DB8::1]", "[2001:db8::1]"),
            ("127.0.0.1:8080", "127.0.0.1"),
            ("xn--fiqs8s.example", "xn--fiqs8s.example"),
        ] {
            assert_eq!(host(raw), Ok(want.to_owned()), "{raw}");
        }
        for raw in [
            "",
            ".",
            ":80",
            "a b",
            "zwfw%2eexample.gov.cn",
            "中国.example",
            "a:b",
            "a:99999",
            "a:1:2",
            "[::1",
            "[::1]x",
            "[::g]",
            "a/b",
            "a@b",
            "a..",
            "a..b",
            ".a",
            "4---...a.a...........",
        ] {
            assert_eq!(host(raw), Err(Refusal::BadHost), "{raw:?}");
        }
        assert_eq!(host(&"a".repeat(300)), Err(Refusal::BadHost));
    }

    /// The fuzz target's corpus (crashes it found included), replayed on every test run.
    #[test]
    fn fuzz_corpus_holds_the_invariants() {
        for input in crate::testing::fuzz_corpus("canonical", 20) {
            let (host, path) = split_fuzz_input(&input);
            assert_invariants(host, path);
        }
    }

    /// A purge prefix takes the form the cache keys entries by, whatever spelling the
    /// operator (or the operator's HTTP library) gave it: so that it names the entries of
    /// the requests it was written for.
    #[test]
    fn a_purge_prefix_is_spelled_as_the_cache_keys_its_entries() {
        for (value, prefix) in [
            ("", ""),
            ("zwfw.gov.test", "zwfw.gov.test"),
            ("zwfw.gov.test/catalogue/", "zwfw.gov.test/catalogue/"),
            ("ZWFW.Gov.Test/catalogue/", "zwfw.gov.test/catalogue/"),
            ("zwfw.gov.test%2Fcatalogue%2f", "zwfw.gov.test/catalogue/"),
            ("zwfw.gov.test/%7euser/", "zwfw.gov.test/~user/"),
            ("zwfw.gov.test/%e5%8a%9e/", "zwfw.gov.test/%E5%8A%9E/"),
            // The query's escape of the path's escape, as a library encoding the value sends.
            ("zwfw.gov.test%2F%25e5%258A%259E%2F", "zwfw.gov.test/%E5%8A%9E/"),
            ("zwfw.gov.test/%252F", "zwfw.gov.test/%2F"),
            ("zwfw.gov.test/a%20b", "zwfw.gov.test/a%20b"),
            ("zwfw.gov.test/办", "zwfw.gov.test/%E5%8A%9E"),
            ("zwfw.gov.test/50%", "zwfw.gov.test/50%25"),
            ("zwfw.gov.test/a\\b", "zwfw.gov.test/a%5Cb"),
        ] {
            assert_eq!(purge_prefix(value.as_bytes()), prefix, "{value}");
        }
        // Whatever spelling a request arrived in, the prefix written the same way, escaped
        // for the query, names its entry; so does it written as is, but for an encoded
        // slash (unescaped, the query's `%2F` is a `/`).
        for raw in ["/%7Euser/%e5%8a%9e/x", "/a%2fb/%41", "/forms/%E5%8A%9E", "/~u/(1)"] {
            let c = CanonicalRequest::new(Some(b"ZWFW.gov.test"), raw.as_bytes()).expect("canonical");
            let key = format!("{}{}", c.host(), c.path());
            let written = format!("ZWFW.gov.test{raw}");
            let escaped = written.replace('%', "%25");
            assert_eq!(purge_prefix(escaped.as_bytes()), key, "{raw}, escaped for the query");
            if !c.has_encoded_slash() {
                assert_eq!(purge_prefix(written.as_bytes()), key, "{raw}");
            }
        }
    }

    #[test]
    fn no_host_is_an_empty_host() {
        let c = CanonicalRequest::new(None, b"/x").expect("canonical");
        assert_eq!((c.host(), c.path()), ("", "/x"));
    }
}
