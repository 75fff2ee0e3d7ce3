//! `X-Request-Id`: passed through when the client sent a well-formed one, generated
//! otherwise. Stored inline so the hot path does not allocate for it.

use std::fmt;

/// Longest request id accepted from a client; longer ones are replaced.
pub const MAX_LEN: usize = 64;

/// A request id of at most [`MAX_LEN`] bytes from `[A-Za-z0-9._:-]`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    buf: [u8; MAX_LEN],
    len: u8,
}

impl RequestId {
    /// A placeholder before the request has been read.
    pub const EMPTY: RequestId = RequestId { buf: [0; MAX_LEN], len: 0 };

    /// Accepts a client-supplied id if it is safe to log and forward verbatim.
    pub fn parse(value: &[u8]) -> Option<RequestId> {
        if value.is_empty() || value.len() > MAX_LEN {
            return None;
        }
        if !value.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')) {
            return None;
        }
        let mut buf = [0u8; MAX_LEN];
        buf[..value.len()].copy_from_slice(value);
        Some(RequestId { buf, len: value.len() as u8 })
    }

    /// 128 random bits as 32 lower-case hex digits. Ids correlate logs; they are not
    /// secrets, so a fast non-cryptographic generator is enough.
    pub fn generate() -> RequestId {
        let mut buf = [0u8; MAX_LEN];
        crate::hex::fill_random(&mut buf[..32]);
        RequestId { buf, len: 32 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII ever enters `buf` (checked in `parse`, hex in `generate`).
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// The id's bytes, so that a header value can own an id as it is (`Bytes::from_owner`).
impl AsRef<[u8]> for RequestId {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_pass_through() {
        let id = RequestId::parse(b"abc-123_x.y:z").expect("valid");
        assert_eq!(id.as_str(), "abc-123_x.y:z");
    }

    #[test]
    fn unsafe_or_oversized_ids_are_refused() {
        for bad in [&b""[..], b"has space", b"new\nline", b"quote\"", &[b'a'; MAX_LEN + 1]] {
            assert_eq!(RequestId::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(RequestId::parse(&[b'a'; MAX_LEN]).is_some());
    }

    #[test]
    fn generated_ids_are_hex_and_distinct() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
