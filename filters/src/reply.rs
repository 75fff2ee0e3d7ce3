//! What a filter decided, and the small JSON error replies the gateway sends itself.
//! Every reply carries the request id, so a citizen's support ticket can be traced.

use crate::RequestId;

/// A filter's verdict on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on to the next phase.
    Continue,
    /// Answer the client now; the request never reaches an upstream.
    Respond(Reply),
}

/// A reply written by the gateway itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Machine-readable error code, e.g. `no_route`.
    pub error: &'static str,
    /// Extra headers, e.g. `Allow` on a 405.
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn new(status: u16, error: &'static str) -> Reply {
        Reply { status, error, headers: Vec::new() }
    }

    /// 429 with `Retry-After`: `retry_after` in whole seconds, rounded up, at least 1.
    pub fn too_many_requests(error: &'static str, retry_after: std::time::Duration) -> Reply {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Reply::new(429, error).with_header("retry-after", secs.max(1).to_string())
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }

    /// `{"error":"…","request_id":"…"}`. Both parts are restricted to JSON-safe
    /// characters (error codes are literals, ids are `[A-Za-z0-9._:-]`), so no escaping
    /// is needed.
    pub fn body(&self, id: &RequestId) -> Vec<u8> {
        let mut body = Vec::with_capacity(40 + self.error.len() + id.as_bytes().len());
        body.extend_from_slice(b"{\"error\":\"");
        body.extend_from_slice(self.error.as_bytes());
        body.extend_from_slice(b"\",\"request_id\":\"");
        body.extend_from_slice(id.as_bytes());
        body.extend_from_slice(b"\"}");
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_json_with_the_request_id() {
        let id = RequestId::parse(b"req-1").expect("valid id");
        let body = Reply::new(404, "no_route").body(&id);
        assert_eq!(body, br#"{"error":"no_route","request_id":"req-1"}"#);
    }
}
