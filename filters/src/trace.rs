//! W3C Trace Context (`traceparent`): a client's trace is continued, a request without
//! one (or with a malformed one) starts a new trace. The pod receives the same trace id
//! with a new parent id — edgegate's hop — and the caller's sampling flag; the access log
//! carries the trace id.
//!
//! `traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lower-case hex,
//! neither id all zeros. A later version is read by its first four fields (it must not be
//! `ff`, and anything after them starts with `-`) and forwarded as version `00`.

/// The trace a request belongs to: its id and flags, as lower-case hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 32],
    /// edgegate's span for this request: the parent id the pod receives.
    span_id: [u8; 16],
    /// The client's span (the parent id it sent); zeros when the trace started here.
    parent_id: [u8; 16],
    flags: [u8; 2],
    /// The client sent a valid `traceparent` (its trace continues).
    pub continued: bool,
}

fn lower_hex(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn not_zero(b: &[u8]) -> bool {
    b.iter().any(|&c| c != b'0')
}

/// `N` random lower-case hex digits (`N` a multiple of 16), never all zeros.
fn random_hex<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    loop {
        crate::hex::fill_random(&mut out);
        if not_zero(&out) {
            return out;
        }
    }
}

impl TraceContext {
    /// Before the request's trace is known (an all-zero id, which is never valid).
    pub const EMPTY: TraceContext = TraceContext {
        trace_id: [b'0'; 32],
        span_id: [b'0'; 16],
        parent_id: [b'0'; 16],
        flags: *b"00",
        continued: false,
    };

    /// The client's trace when `traceparent` is valid, else a new one (not sampled).
    pub fn from_header(value: Option<&[u8]>) -> TraceContext {
        Self::from_header_sampling(value, 0)
    }

    /// The client's trace when `traceparent` is valid (its sampling decision kept), else a
    /// new one marked sampled for `sample_ppm` in a million.
    pub fn from_header_sampling(value: Option<&[u8]>, sample_ppm: u32) -> TraceContext {
        value.and_then(Self::parse).unwrap_or_else(|| {
            let mut t = Self::generate();
            if sample_ppm > 0 && fastrand::u32(..1_000_000) < sample_ppm {
                t.flags = *b"01";
            }
            t
        })
    }

    /// A new trace: a random id, flags `00` (not sampled).
    pub fn generate() -> TraceContext {
        TraceContext {
            trace_id: random_hex::<32>(),
            span_id: random_hex::<16>(),
            parent_id: [b'0'; 16],
            flags: *b"00",
            continued: false,
        }
    }

    /// The sampled flag (bit 0 of the flags).
    pub fn sampled(&self) -> bool {
        matches!(self.flags[1], b'1' | b'3' | b'5' | b'7' | b'9' | b'b' | b'd' | b'f')
    }

    fn parse(v: &[u8]) -> Option<TraceContext> {
        if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let (version, trace, parent, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
        if !lower_hex(version) || version == b"ff" || (version == b"00" && v.len() != 55) {
            return None;
        }
        if v.len() > 55 && v[55] != b'-' {
            return None;
        }
        if !lower_hex(trace) || !lower_hex(parent) || !lower_hex(flags) || !not_zero(trace) || !not_zero(parent) {
            return None;
        }
        let mut t = TraceContext {
            trace_id: [0; 32],
            span_id: random_hex::<16>(),
            parent_id: [0; 16],
            flags: [0; 2],
            continued: true,
        };
        t.trace_id.copy_from_slice(trace);
        t.parent_id.copy_from_slice(parent);
        t.flags.copy_from_slice(flags);
        Some(t)
    }

    /// False for [`TraceContext::EMPTY`]: the request never got as far as its trace.
    pub fn is_known(&self) -> bool {
        not_zero(&self.trace_id)
    }

    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.trace_id).unwrap_or_default()
    }

    /// edgegate's span id for this request, 16 lower-case hex digits.
    pub fn span_id(&self) -> &str {
        std::str::from_utf8(&self.span_id).unwrap_or_default()
    }

    /// The client's span id when the trace continues one.
    pub fn parent_span_id(&self) -> Option<&str> {
        self.continued.then(|| std::str::from_utf8(&self.parent_id).unwrap_or_default())
    }

    /// The `traceparent` for the next hop: this trace, edgegate's span as the parent, the
    /// same flags.
    pub fn child(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        out[3..35].copy_from_slice(&self.trace_id);
        out[36..52].copy_from_slice(&self.span_id);
        out[53..55].copy_from_slice(&self.flags);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_continues_with_a_new_parent_id() {
        let t = TraceContext::from_header(Some(VALID));
        assert!(t.continued);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = t.child();
        let child = std::str::from_utf8(&child).expect("ascii");
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{child}");
        assert!(child.ends_with("-01"), "{child}");
        assert_ne!(&child[36..52], "00f067aa0ba902b7");
        assert!(TraceContext::parse(child.as_bytes()).is_some(), "the child is itself valid: {child}");
        // The pod's parent is edgegate's span, the same on every attempt; edgegate's own
        // parent is the client's span.
        assert_eq!(&child[36..52], t.span_id());
        assert_eq!(t.child(), t.child(), "retries carry the same parent");
        assert_eq!(t.parent_span_id(), Some("00f067aa0ba902b7"));
        assert_eq!(TraceContext::generate().parent_span_id(), None, "a new trace has no parent");
    }

    #[test]
    fn later_versions_are_read_by_their_first_fields() {
        let later = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever";
        assert_eq!(TraceContext::from_header(Some(later)).trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceContext::from_header(Some(later)).continued);
    }

    #[test]
    fn malformed_ones_start_a_new_trace() {
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let t = TraceContext::from_header(Some(bad));
            assert!(!t.continued, "{:?}", String::from_utf8_lossy(bad));
            assert_ne!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(TraceContext::parse(&t.child()).is_some());
            assert!(t.child().ends_with(b"-00"));
        }
        assert_ne!(TraceContext::generate().trace_id(), TraceContext::generate().trace_id());
    }

    #[test]
    fn new_traces_are_sampled_by_ratio_and_a_clients_decision_is_kept() {
        let sampled = |ppm| (0..10_000).filter(|_| TraceContext::from_header_sampling(None, ppm).sampled()).count();
        assert_eq!(sampled(0), 0);
        assert_eq!(sampled(1_000_000), 10_000);
        let tenth = sampled(100_000);
        assert!((700..1_300).contains(&tenth), "about a tenth: {tenth}");
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!TraceContext::from_header_sampling(Some(unsampled), 1_000_000).sampled());
        assert!(TraceContext::from_header(Some(VALID)).sampled());
    }
}
