//! HTTP/2 requests that a conforming client library refuses to send, written as raw frames
//! over TLS: the shapes that desynchronise an HTTP/2 front end from an HTTP/1 pod
//! (`transfer-encoding` or a `content-length` that disagrees with the DATA sent, CR/LF in a
//! field value or the path, connection-specific fields). Each is refused at once and none
//! reaches the pod, nor anything smuggled in its body or fields. A request declaring
//! `content-length: 0` is held until its stream ends. A rapid-reset flood (streams opened
//! and cancelled at once), and its twin where the client makes the gateway reset the
//! streams, are cut off before they reach the pod.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use crate::tls::{a_gov_test_dir, https_client, Ca, TLS_LISTENER};

/// One HPACK field as a literal without indexing and without Huffman coding (RFC 7541
/// §6.2.2), lengths below 127.
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    assert!(name.len() < 127 && value.len() < 127, "short fields only");
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// The four pseudo-fields of a request to `https://a.gov.test`, as a header block.
fn pseudo_fields(method: &[u8], path: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in
        [(&b":method"[..], method), (b":scheme", b"https"), (b":path", path), (b":authority", b"a.gov.test")]
    {
        literal(&mut block, name, value);
    }
    block
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A client's connection preface: the magic, then a SETTINGS frame with `settings`.
fn preface(settings: &[u8]) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, SETTINGS, 0, 0, settings);
    out
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// What follows a request's HEADERS frame.
#[derive(Clone, Copy)]
enum Body<'a> {
    /// One DATA frame with these bytes, ending the stream.
    Data(&'a [u8]),
    /// Nothing: the HEADERS frame ends the stream.
    None,
    /// Nothing, and the stream is left open.
    Open,
    /// Two DATA frames, the second ending the stream and sent 200 ms after the first (time
    /// for the gateway to pass the first on).
    Two(&'a [u8], &'a [u8]),
}

/// How the gateway answered stream 1.
#[derive(Debug, PartialEq)]
enum Answer {
    /// A response head; `true` when its status is 200 (HPACK static index 8).
    Head {
        ok: bool,
    },
    Reset,
    GoAway,
    /// The connection closed, or nothing came within 5 s.
    Nothing,
}

/// A gateway with the TLS listener for `a.gov.test` and one public route, `/public/`, to
/// the group `svc` (`upstreams`: its YAML, as [`group`] writes it); `extra` is more YAML at
/// the top level.
async fn tls_gateway(ca: &Ca, upstreams: &str, extra: &str) -> Gateway {
    let yaml = format!(
        "{TLS_LISTENER}admin: {{address: \"127.0.0.1:0\"}}\n{extra}upstreams:\n{upstreams}\
         routes: [{{name: public, match: {{path_prefix: /public/}}, upstream: svc, public: true}}]\n"
    );
    Gateway::launch(&yaml, Launch { dir: Some(a_gov_test_dir(ca)), ..Launch::default() }).await
}

/// A TLS connection to the gateway that negotiated HTTP/2, for frames written by hand.
async fn connect_h2(addr: std::net::SocketAddr, ca: &Ca) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca.der())).expect("CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("a.gov.test").expect("name");
    let s = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.expect("TLS");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN negotiates h2");
    s
}

/// Sends one request on stream 1 of a new HTTP/2 connection — `fields` after the four
/// pseudo-fields, then the body — and reads how the gateway answers it.
async fn send_raw(
    addr: std::net::SocketAddr,
    ca: &Ca,
    path: &[u8],
    fields: &[(&[u8], &[u8])],
    body: Body<'_>,
) -> Answer {
    let mut s = connect_h2(addr, ca).await;
    let mut block = pseudo_fields(b"POST", path);
    for (name, value) in fields {
        literal(&mut block, name, value);
    }
    let mut out = preface(&[]);
    match body {
        Body::Data(data) => {
            frame(&mut out, HEADERS, END_HEADERS, 1, &block);
            frame(&mut out, DATA, END_STREAM, 1, data);
        }
        Body::None => frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 1, &block),
        Body::Open => frame(&mut out, HEADERS, END_HEADERS, 1, &block),
        Body::Two(first, _) => {
            frame(&mut out, HEADERS, END_HEADERS, 1, &block);
            frame(&mut out, DATA, 0, 1, first);
        }
    }
    let _ = s.write_all(&out).await;
    if let Body::Two(_, second) = body {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut last = Vec::new();
        frame(&mut last, DATA, END_STREAM, 1, second);
        let _ = s.write_all(&last).await;
    }

    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        // Every whole frame read so far, looking for stream 1's answer or the connection's end.
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            if buf.len() < at + 9 + len {
                break;
            }
            let (kind, stream) =
                (buf[at + 3], u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]]));
            let payload = &buf[at + 9..at + 9 + len];
            match (kind, stream) {
                (HEADERS, 1) => return Answer::Head { ok: payload.first() == Some(&0x88) },
                (RST_STREAM, 1) => return Answer::Reset,
                (GOAWAY, 0) => return Answer::GoAway,
                _ => {}
            }
            at += 9 + len;
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n @ 1..)) => buf.extend_from_slice(&chunk[..n]),
            _ => return Answer::Nothing,
        }
    }
}

/// A request's fields after the pseudo-fields, as raw names and values.
type Fields<'a> = Vec<(&'a [u8], &'a [u8])>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_that_desynchronise_an_http1_pod_are_refused() {
    let ca = Ca::new();
    let p = pod("svc").await;
    p.record_targets();
    let dir = a_gov_test_dir(&ca);
    let yaml = format!(
        "{TLS_LISTENER}admin: {{address: \"127.0.0.1:0\"}}\nlimits: {{head_timeout: 1s}}\nupstreams:\n{}\
         routes: [{{name: public, match: {{path_prefix: /public/}}, upstream: svc, public: true}}]\n",
        group("svc", &[p.addr])
    );
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await;
    let smuggled = b"GET /public/smuggled HTTP/1.1\r\nHost: a.gov.test\r\n\r\n";
    let chunked_then_smuggled = [&b"0\r\n\r\n"[..], smuggled].concat();

    // A well-formed request in the same raw frames is answered 200 (the harness works).
    assert_eq!(send_raw(gw.addr(), &ca, b"/public/ok", &[], Body::Data(b"abc")).await, Answer::Head { ok: true });
    assert_eq!(p.targets(), vec!["/public/ok"]);

    let cases: Vec<(&str, &[u8], Fields, &[u8])> = vec![
        ("H2.TE", b"/public/x", vec![(b"transfer-encoding", b"chunked")], &chunked_then_smuggled),
        ("H2.CL", b"/public/x", vec![(b"content-length", b"0")], smuggled),
        (
            "CRLF in a value",
            b"/public/x",
            vec![(b"x-note", b"a\r\ntransfer-encoding: chunked")],
            &chunked_then_smuggled,
        ),
        ("CRLF in the path", b"/public/x HTTP/1.1\r\nHost: a.gov.test\r\n\r\nGET /public/smuggled", vec![], b""),
        ("connection field", b"/public/x", vec![(b"connection", b"keep-alive")], b""),
        ("upper-case name", b"/public/x", vec![(b"Transfer-Encoding", b"chunked")], &chunked_then_smuggled),
        ("two lengths", b"/public/x", vec![(b"content-length", b"3"), (b"content-length", b"40")], b"abc"),
        ("a length list", b"/public/x", vec![(b"content-length", b"3, 3")], b"abc"),
        // The steps every request goes through, reached through HTTP/2's fields.
        ("traversal", b"/public/../secret/x", vec![], b""),
        ("fullwidth dots", b"/public/%ef%bc%8e%ef%bc%8e/secret/x", vec![], b""),
        ("another host", b"/public/x", vec![(b"host", b"admin.internal")], b""),
        ("method override", b"/public/x", vec![(b"x-http-method-override", b"DELETE")], b""),
    ];
    for (name, path, fields, body) in &cases {
        let answer = send_raw(gw.addr(), &ca, path, fields, Body::Data(body)).await;
        // Time for anything forwarded to arrive before the pod is looked at.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // Refused at once (the stream or the connection reset, or an error status), never
        // left hanging, and the pod sees nothing of it.
        assert!(matches!(answer, Answer::Reset | Answer::GoAway | Answer::Head { ok: false }), "{name}: {answer:?}");
        assert_eq!(p.targets(), vec!["/public/ok"], "{name}: reached the pod");
    }
    // `content-length: 0` is held until the stream ends: a HEADERS frame or an empty DATA
    // frame ending it is forwarded; a stream left open is answered 408 at
    // `limits.head_timeout`, unforwarded.
    let zero: &[(&[u8], &[u8])] = &[(b"content-length", b"0")];
    let started = std::time::Instant::now();
    assert_ne!(send_raw(gw.addr(), &ca, b"/public/open", zero, Body::Open).await, Answer::Head { ok: true });
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "held past head_timeout: {:?}", started.elapsed());
    assert_eq!(p.targets(), vec!["/public/ok"], "a stream left open reached the pod");
    assert_eq!(send_raw(gw.addr(), &ca, b"/public/empty", zero, Body::Data(b"")).await, Answer::Head { ok: true });
    assert_eq!(send_raw(gw.addr(), &ca, b"/public/ended", zero, Body::None).await, Answer::Head { ok: true });
    assert_eq!(p.targets(), vec!["/public/ok", "/public/empty", "/public/ended"]);
    // A last good request on a pooled pod connection: anything left queued on it would be
    // read now as a request of its own.
    assert_eq!(send_raw(gw.addr(), &ca, b"/public/after", &[], Body::None).await, Answer::Head { ok: true });
    let targets = p.targets();
    assert!(!targets.iter().any(|t| t.contains("smuggled")), "the pod got {targets:?}");
    assert_eq!(targets.last().map(String::as_str), Some("/public/after"), "{targets:?}");
}

/// A pod, and a gateway over TLS in front of it (see [`tls_gateway`]).
async fn gateway_to_pod(ca: &Ca) -> (edgegate::pod::Pod, Gateway) {
    let p = pod("svc").await;
    let gw = tls_gateway(ca, &group("svc", &[p.addr]), "").await;
    (p, gw)
}

/// A gateway over TLS in front of a [`raw_pod`] answering `200 ok`, and what the pod receives.
async fn gateway_to_recording_pod(ca: &Ca) -> (Gateway, Received) {
    let (pod_addr, seen) = raw_pod(|_| vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()]).await;
    let gw = tls_gateway(ca, &format!("  svc: {{endpoints: [{{address: \"{pod_addr}\"}}]}}\n"), "").await;
    (gw, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_overrunning_its_length_never_completes_the_pods_request() {
    let ca = Ca::new();
    let (gw, seen) = gateway_to_recording_pod(&ca).await;
    // What the pod received for one request, once the gateway has answered it.
    let send = |path: &'static [u8], length: &'static [u8], body: Body<'static>| {
        let (ca, seen) = (&ca, seen.clone());
        let addr = gw.addr();
        async move {
            received(&seen, true);
            let answer = send_raw(addr, ca, path, &[(b"content-length", length)], body).await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let got = received(&seen, false);
            (answer, got)
        }
    };
    // The declared byte in one DATA frame, the overrun in the next: the pod must not have
    // been sent a whole request by the time the overrun shows.
    let (answer, got) = send(b"/public/over", b"1", Body::Two(b"a", b"bc")).await;
    assert_ne!(answer, Answer::Head { ok: true }, "{got:?}");
    assert!(!got.ends_with("\r\n\r\na"), "the pod was sent a whole request: {got:?}");
    // Honest clients: the whole body, then the stream ended by an empty DATA frame or with
    // the last bytes.
    let (answer, got) = send(b"/public/later", b"3", Body::Two(b"abc", b"")).await;
    assert_eq!(answer, Answer::Head { ok: true }, "{got:?}");
    assert!(got.ends_with("\r\n\r\nabc"), "{got:?}");
    let (answer, got) = send(b"/public/split", b"3", Body::Two(b"ab", b"c")).await;
    assert_eq!(answer, Answer::Head { ok: true }, "{got:?}");
    assert!(got.ends_with("\r\n\r\nabc"), "{got:?}");
}

/// A `content-length` with leading zeros reaches the HTTP/1 pod as the number alone, as over
/// HTTP/1 (`smuggling.rs`): a pod reading `010` as octal would take the body's last bytes
/// for another request. One that is not digits alone (`+3`) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_content_length_reaches_the_pod_as_its_number_alone() {
    let ca = Ca::new();
    let (gw, seen) = gateway_to_recording_pod(&ca).await;
    let answer =
        send_raw(gw.addr(), &ca, b"/public/zeros", &[(b"content-length", b"010")], Body::Data(b"0123456789")).await;
    assert_eq!(answer, Answer::Head { ok: true });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let got = received(&seen, false);
    let head = got.split_once("\r\n\r\n").map_or(got.as_str(), |(head, _)| head).to_ascii_lowercase();
    assert!(head.contains("\r\ncontent-length: 10\r\n") || head.ends_with("\r\ncontent-length: 10"), "{got:?}");
    // (The field's line, not the whole head: a random request id or trace id holds "010"
    // about once in fifty runs.)
    assert!(!head.contains("content-length: 010"), "the pod got the client's spelling: {got:?}");
    assert!(got.ends_with("\r\n\r\n0123456789"), "{got:?}");
    // A length that is not digits alone is refused, and nothing reaches the pod.
    received(&seen, true);
    let answer = send_raw(gw.addr(), &ca, b"/public/plus", &[(b"content-length", b"+3")], Body::Data(b"abc")).await;
    assert_ne!(answer, Answer::Head { ok: true });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(received(&seen, false), "", "the pod was sent the request");
}

/// Over HTTP/2 as over HTTP/1 (`policy.rs`): two `authorization` fields are refused, and an
/// underscore spelling of a forwarding field (`x_forwarded_for`, which CGI-style servers read
/// as `X-Forwarded-For`) does not reach the pod while the request does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_fields_a_pod_could_read_otherwise_are_refused_or_removed() {
    let ca = Ca::new();
    let (gw, seen) = gateway_to_recording_pod(&ca).await;
    let two: Fields = vec![(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")];
    let answer = send_raw(gw.addr(), &ca, b"/public/two", &two, Body::None).await;
    assert_eq!(answer, Answer::Head { ok: false });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(received(&seen, true), "", "the pod was sent the request");
    let disguised: Fields = vec![(b"x_forwarded_for", b"6.6.6.6"), (b"x_other", b"kept")];
    let answer = send_raw(gw.addr(), &ca, b"/public/one", &disguised, Body::None).await;
    assert_eq!(answer, Answer::Head { ok: true });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let got = received(&seen, false).to_ascii_lowercase();
    assert!(got.contains("\r\nx_other: kept\r\n") && !got.contains("6.6.6.6"), "{got:?}");
}

/// Reads frames until a GOAWAY (its error code), the connection's end or 10 s; also counts
/// the RST_STREAM frames read before it.
async fn read_until_goaway(s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> (Option<u32>, u32) {
    let mut resets = 0;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            if buf.len() < at + 9 + len {
                break;
            }
            match buf[at + 3] {
                RST_STREAM => resets += 1,
                GOAWAY => {
                    // Last stream id (4 bytes), then the error code.
                    let code = &buf[at + 13..at + 17];
                    return (Some(u32::from_be_bytes([code[0], code[1], code[2], code[3]])), resets);
                }
                _ => {}
            }
            at += 9 + len;
        }
        buf.drain(..at);
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n @ 1..)) => buf.extend_from_slice(&chunk[..n]),
            _ => return (None, resets),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_rapid_reset_flood_is_cut_off_before_it_reaches_the_pod() {
    // Streams opened and cancelled at once, thousands on one connection (CVE-2023-44487):
    // each costs the client two small frames and, unchecked, costs the gateway a request
    // to the pod.
    let ca = Ca::new();
    let (p, gw) = gateway_to_pod(&ca).await;

    let block = pseudo_fields(b"GET", b"/public/x");
    const STREAMS: u32 = 5_000;
    let mut out = preface(&[]);
    for i in 0..STREAMS {
        let stream = 2 * i + 1;
        frame(&mut out, HEADERS, END_HEADERS | END_STREAM, stream, &block);
        frame(&mut out, RST_STREAM, 0, stream, &8u32.to_be_bytes()); // CANCEL
    }
    let mut s = connect_h2(gw.addr(), &ca).await;
    let _ = s.write_all(&out).await; // the gateway may close before reading it all
    let (goaway, _) = read_until_goaway(&mut s).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The connection is told to go away (ENHANCE_YOUR_CALM, 0xb) ...
    assert_eq!(goaway, Some(0xb), "the flood was not cut off (the pod saw {} requests)", p.requests());
    // ... long before the pod has seen a request per stream.
    assert!(p.requests() < 200, "the pod saw {} of {STREAMS} cancelled requests", p.requests());
    // Other clients are served as before.
    assert_eq!(send_raw(gw.addr(), &ca, b"/public/ok", &[], Body::None).await, Answer::Head { ok: true });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_gateway_is_made_to_reset_are_cut_off_like_a_rapid_reset() {
    // "MadeYouReset" (CVE-2025-8671): the client never resets a stream itself, so a limit
    // that counts the client's resets never trips. It opens streams and follows each with
    // a frame the gateway must answer with an error: unchecked, each is a request the
    // gateway starts and abandons. The HTTP/2 layer treats a zero WINDOW_UPDATE and DATA
    // after the stream's end as connection errors, and counts the streams it resets
    // itself; either way the connection goes away and the pod sees none of it.
    const WINDOW_UPDATE: u8 = 8;
    let ca = Ca::new();
    let (p, gw) = gateway_to_pod(&ca).await;
    const STREAMS: u32 = 5_000;
    let get = pseudo_fields(b"GET", b"/public/x");
    let mut post = pseudo_fields(b"POST", b"/public/x");
    literal(&mut post, b"content-length", b"1");
    // What follows the preface for each stream id.
    type Stream<'a> = &'a dyn Fn(&mut Vec<u8>, u32);
    let shapes: [(&str, Stream); 3] = [
        ("a WINDOW_UPDATE of 0 on an open stream (RFC 9113 §6.9)", &|out, id| {
            frame(out, HEADERS, END_HEADERS, id, &get);
            frame(out, WINDOW_UPDATE, 0, id, &0u32.to_be_bytes());
        }),
        ("DATA after the stream's END_STREAM", &|out, id| {
            frame(out, HEADERS, END_HEADERS | END_STREAM, id, &get);
            frame(out, DATA, 0, id, b"x");
        }),
        ("more DATA than the stream's content-length", &|out, id| {
            frame(out, HEADERS, END_HEADERS, id, &post);
            frame(out, DATA, END_STREAM, id, b"xx");
        }),
    ];
    for (shape, stream) in shapes {
        let mut out = preface(&[]);
        for i in 0..STREAMS {
            stream(&mut out, 2 * i + 1);
        }
        let mut s = connect_h2(gw.addr(), &ca).await;
        let _ = s.write_all(&out).await; // the gateway may close before reading it all
        let (goaway, resets) = read_until_goaway(&mut s).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // PROTOCOL_ERROR (0x1) for a connection error, ENHANCE_YOUR_CALM (0xb) once the
        // gateway's own resets pass their limit.
        assert!(matches!(goaway, Some(0x1 | 0xb)), "{shape}: GOAWAY {goaway:?} after {resets} resets");
        assert!(resets < STREAMS / 2, "{shape}: the gateway reset {resets} streams before going away");
        assert!(p.requests() < 200, "{shape}: the pod saw {} of {STREAMS} requests", p.requests());
    }
    assert_eq!(send_raw(gw.addr(), &ca, b"/public/ok", &[], Body::None).await, Answer::Head { ok: true });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_http2_header_block_is_cut_off_without_being_held() {
    // A HEADERS frame without END_HEADERS and CONTINUATION frames after it, never ending
    // (the 2024 "CONTINUATION flood"): each frame is small and valid on its own, the
    // block is unbounded. Cut off at the head budget (`limits.header_bytes`), not held in
    // memory to the end, and nothing reaches the pod.
    const CONTINUATION: u8 = 9;
    let ca = Ca::new();
    let (p, gw) = gateway_to_pod(&ca).await;
    let rss_before = rss_kib(gw.pid());

    let block = pseudo_fields(b"GET", b"/public/x");
    let mut s = connect_h2(gw.addr(), &ca).await;
    let mut out = preface(&[]);
    frame(&mut out, HEADERS, 0, 1, &block);
    let _ = s.write_all(&out).await;
    // Fields of 120 bytes, 8 to a frame: ~1 KiB a frame, up to 64 MiB in all.
    let mut fields = Vec::new();
    for i in 0..8u8 {
        literal(&mut fields, &[b'x', b'-', b'a' + i], &[b'v'; 120]);
    }
    let mut chunk = Vec::new();
    for _ in 0..64 {
        frame(&mut chunk, CONTINUATION, 0, 1, &fields);
    }
    let mut sent = 0usize;
    let mut closed = false;
    while sent < 64 << 20 {
        match tokio::time::timeout(std::time::Duration::from_secs(5), s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) => {
                closed = true;
                break;
            }
            Err(_) => break, // not read, and not closed either: held
        }
    }
    // The gateway closed the connection (well before 64 MiB: 0.8 MiB had gone into it and
    // the sockets' buffers on this machine) rather than reading on or stalling it.
    assert!(closed, "after {} KiB of one header block the connection was still open", sent >> 10);
    let rss_after = rss_kib(gw.pid());
    assert!(rss_after < rss_before + 16 * 1024, "RSS {rss_before} KiB -> {rss_after} KiB");
    assert_eq!(p.requests(), 0);
    assert_eq!(send_raw(gw.addr(), &ca, b"/public/ok", &[], Body::None).await, Answer::Head { ok: true });
}

/// `connections` HTTP/2 connections, each asking for `path` on `streams` streams with
/// SETTINGS_INITIAL_WINDOW_SIZE 0 and never a WINDOW_UPDATE: no byte of any answer can be
/// sent. Kept open, never read, until dropped.
async fn unread_streams(
    addr: std::net::SocketAddr,
    ca: &Ca,
    connections: u32,
    streams: u32,
    path: &[u8],
) -> Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let block = pseudo_fields(b"GET", path);
    let mut held = Vec::new();
    for _ in 0..connections {
        let mut s = connect_h2(addr, ca).await;
        let mut out = preface(&[0, 4, 0, 0, 0, 0]);
        for i in 0..streams {
            frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block);
        }
        s.write_all(&out).await.expect("send");
        held.push(s);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_whose_window_never_opens_are_cut_off_at_send_timeout() {
    // Clients that open streams for a large answer and never let any of it through
    // (SETTINGS_INITIAL_WINDOW_SIZE 0, no WINDOW_UPDATE): each stream held ~0.5 MiB read
    // from the pod, and its pod connection, for as long as the connection stayed open —
    // 4 connections of 100 streams took the gateway from 38 to 252 MiB of RSS.
    let ca = Ca::new();
    let pod_addr = big_body_pod(1 << 20).await;
    let gw = tls_gateway(&ca, &group("svc", &[pod_addr]), "limits: {send_timeout: 1s}\n").await;
    const CONNECTIONS: u32 = 2;
    const STREAMS: u32 = 50;
    let held = unread_streams(gw.addr(), &ca, CONNECTIONS, STREAMS, b"/public/big").await;
    let want = f64::from(CONNECTIONS * STREAMS);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while metric(&gw.metrics().await, "edgegate_slow_response_reads_total") < want {
        assert!(std::time::Instant::now() < deadline, "streams still held:\n{}", gw.metrics().await);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&gw.metrics().await, "edgegate_inflight_requests"), 0.0);
    // A client that reads is served as before.
    assert_eq!(send_raw(gw.addr(), &ca, b"/public/ok", &[], Body::None).await, Answer::Head { ok: true });
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_past_max_stalled_responses_are_cut_off_long_before_send_timeout() {
    // The same never-opened windows, with `send_timeout` left at its minute: only
    // `limits.max_stalled_responses` of them are held, the rest are cut within about a second
    // of stalling.
    let ca = Ca::new();
    let pod_addr = big_body_pod(1 << 20).await;
    let gw = tls_gateway(&ca, &group("svc", &[pod_addr]), "limits: {max_stalled_responses: 10}\n").await;
    let held = unread_streams(gw.addr(), &ca, 2, 20, b"/public/big").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while metric(&gw.metrics().await, "edgegate_stalled_responses_cut_total") < 30.0 {
        assert!(std::time::Instant::now() < deadline, "streams still held:\n{}", gw.metrics().await);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "edgegate_stalled_responses_cut_total"), 30.0, "{m}");
    assert_eq!(metric(&m, "edgegate_stalled_responses"), 10.0, "{m}");
    assert_eq!(metric(&m, "edgegate_inflight_requests"), 10.0, "{m}");
    assert_eq!(metric(&m, "edgegate_slow_response_reads_total"), 0.0, "{m}");
    assert_eq!(send_raw(gw.addr(), &ca, b"/public/ok", &[], Body::None).await, Answer::Head { ok: true });
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cancelled_after_reaching_the_pod_are_not_kept_running() {
    // A paced reset: each stream is opened, its request reaches the pod, and the client
    // cancels it 3 ms later — too slowly for the rapid-reset limit, which counts streams
    // reset before they are served. Each is a request to the pod, as an abandoned one is
    // (rate limits bound those); the gateway must not keep the cancelled ones running
    // against a slow pod, or one connection would hold hundreds of requests where
    // `h2_max_concurrent_streams` allows a hundred.
    let ca = Ca::new();
    let p = pod_with_delay("svc", std::time::Duration::from_secs(2)).await;
    let gw = tls_gateway(&ca, &group("svc", &[p.addr]), "").await;
    let block = pseudo_fields(b"GET", b"/public/slow");
    let mut s = connect_h2(gw.addr(), &ca).await;
    s.write_all(&preface(&[])).await.expect("preface");
    let mut most = 0.0f64;
    for i in 0..600u32 {
        let id = 2 * i + 1;
        let mut out = Vec::new();
        frame(&mut out, HEADERS, END_HEADERS | END_STREAM, id, &block);
        s.write_all(&out).await.expect("the connection stays open");
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        let mut out = Vec::new();
        frame(&mut out, RST_STREAM, 0, id, &[0, 0, 0, 8]); // CANCEL
        s.write_all(&out).await.expect("the connection stays open");
        if i % 50 == 49 {
            most = most.max(metric(&gw.metrics().await, "edgegate_inflight_requests"));
        }
    }
    // The requests were forwarded (the pod saw them), then cancelled with their streams:
    // had they kept running, ~600 would be in flight at the end (2 s at one per ~3 ms).
    assert!(p.requests() >= 100, "only {} requests reached the pod", p.requests());
    assert!(most <= 10.0, "{most} requests in flight for cancelled streams");
    assert_eq!(send_raw(gw.addr(), &ca, b"/public/ok", &[], Body::None).await, Answer::Head { ok: true });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tokens_over_http2_streams_share_the_clients_budget_of_checks() {
    // Forged tokens on the streams of one HTTP/2 connection cost a signature check each,
    // as on HTTP/1 connections: they come out of the client address's budget of checks
    // (`identity.jwt.new_tokens_per_client`), and past it are refused with 429 unchecked.
    // A token already verified still passes on the same connection.
    use jsonwebtoken::Algorithm;
    let ca = Ca::new();
    let issuer = Issuer::new();
    let p = pod("svc").await;
    let dir = policy_dir(&issuer);
    ca.issue(&dir.path().join("config"), "a", &["a.gov.test"]);
    let listener = "  - {name: public, address: \"127.0.0.1:0\", tls: {certificates: [{cert: a.crt, key: a.key}]}}\n";
    let route =
        "  - {name: services, match: {path_prefix: /api/}, upstream: svc, policy: data.government.digital.allow}\n";
    let yaml = policy_yaml(listener, p.addr, route, "")
        .replace("keys: jwks.json}}\n", "keys: jwks.json, new_tokens_per_client: {rate: 1, burst: 5}}}\n");
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await;
    let good = issuer.token(Algorithm::ES256, serde_json::json!({}));
    let https = https_client(&ca, gw.addr(), false);
    let url = format!("https://a.gov.test:{}/api/permits", gw.addr().port());
    let ask = |token: String| {
        let request = https.get(&url).bearer_auth(token);
        async move {
            let resp = request.send().await.expect("answer");
            assert_eq!(resp.version(), reqwest::Version::HTTP_2);
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
    };
    assert_eq!(ask(good.clone()).await.0, 200, "the citizen's token is checked once and passes");
    // Forty forged tokens on concurrent streams: four checks left in the burst, maybe one
    // more from the second that passes; the rest refused unchecked.
    let forged: Vec<String> = (0..40)
        .map(|n| {
            let admin = issuer.token(Algorithm::ES256, serde_json::json!({"role": "admin", "n": n}));
            forge(&admin, &good)
        })
        .collect();
    let answers = futures_util::future::join_all(forged.into_iter().map(&ask)).await;
    let count = |status: u16| answers.iter().filter(|(s, _)| *s == status).count();
    assert!((4..=6).contains(&count(401)), "{answers:?}");
    assert_eq!(count(401) + count(429), 40, "{answers:?}");
    assert!(answers.iter().any(|(s, body)| *s == 429 && body.contains("\"error\":\"too_many_new_tokens\"")));
    assert_eq!(ask(good).await.0, 200, "a verified token passes past the budget");
    assert_eq!(p.requests(), 2, "only the citizen's two requests reached the pod");
    let m = gw.metrics().await;
    assert!(metric(&m, "edgegate_jwt_signature_checks_total") <= 7.0, "{m}");
    assert_eq!(metric(&m, "edgegate_client_connections{listener=\"public\"}"), 1.0, "all on one connection: {m}");
}
