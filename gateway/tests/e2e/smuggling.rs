//! Request smuggling shapes, written as raw bytes: each is refused with 400 before
//! routing, the connection is closed, and the recording pod receives nothing — neither the
//! request nor anything smuggled behind it. Where an `error` code is given the refusal is
//! edgegate's own; the others are refused by Pingora's HTTP/1 parser before any hook runs
//! (`bad_request`). Every refusal is JSON with the request id. Chunked bodies whose
//! framing parsers disagree on are cut off before the pod has a whole body, and chunk
//! extensions are not passed on. A `Content-Length` with leading zeros reaches the pod as
//! its number alone. The other way, bytes a pod sends after its response never
//! become the answer to a later request on its pooled connection.

use crate::support::*;

const SMUGGLED: &str = "GET /public/smuggled HTTP/1.1\r\nHost: h.test\r\n\r\n";

/// A gateway whose one route, `/public/`, is public and proxied to the pod at `pod`.
async fn gateway(pod: std::net::SocketAddr) -> Gateway {
    gateway_with(pod, "").await
}

/// [`gateway`] with more of the config after the route (e.g. `limits`).
async fn gateway_with(pod: std::net::SocketAddr, more: &str) -> Gateway {
    Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: public, match: {{path_prefix: /public/}}, upstream: svc, public: true}}]\n{more}",
        group("svc", &[pod])
    )))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_are_refused_and_never_reach_the_pod() {
    let p = pod("svc").await;
    p.record_targets();
    let gw = gateway(p.addr).await;

    let post = "POST /public/x HTTP/1.1\r\nHost: h.test\r\n";
    let cases: Vec<(String, Option<&str>)> = vec![
        // Framing two parsers can read two ways.
        (
            format!("{post}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Some("content_length_and_chunked"),
        ),
        (
            format!("{post}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Some("content_length_and_chunked"),
        ),
        (
            format!("{post}Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc{SMUGGLED}"),
            Some("duplicate_content_length"),
        ),
        (format!("{post}Content-Length: 3, 3\r\n\r\nabc{SMUGGLED}"), Some("duplicate_content_length")),
        (format!("{post}Content-Length: 3\r\nContent-Length: 40\r\n\r\nabc{SMUGGLED}"), None),
        (format!("{post}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"), None),
        (
            format!("{post}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Some("bad_transfer_encoding"),
        ),
        (format!("{post}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{SMUGGLED}"), None),
        (format!("{post}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"), None),
        (format!("{post}Transfer-Encoding:\tchunked\r\n X: folded\r\n\r\n0\r\n\r\n{SMUGGLED}"), None),
        (format!("{post}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"), None),
        (format!("{post}Content-Length: 0\r\nX-Bad: a\0b\r\n\r\n{SMUGGLED}"), None),
        (format!("{post}Content-Length: 0\r\nX-Bad: a\rb\r\n\r\n{SMUGGLED}"), None),
        ("POST /public/x HTTP/1.0\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_owned(), None),
        // Which host is it for?
        ("GET /public/x HTTP/1.1\r\nHost: h.test\r\nHost: admin.internal\r\n\r\n".to_owned(), None),
        ("GET http://admin.internal/public/x HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(), None),
        ("GET /public/x HTTP/1.1\r\n\r\n".to_owned(), Some("bad_host")),
        // Bytes outside printable ASCII in the target.
        ("GET /public/caf\u{e9} HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(), Some("bad_request_line")),
        ("GET /public/x?q=caf\u{e9} HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(), Some("bad_request_line")),
        // A target in no request form: not `/`-rooted, not absolute.
        ("GET public/x HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(), Some("bad_request_line")),
        ("GET ftp://h.test/public/x HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(), Some("bad_request_line")),
        // A method a framework could upper-case into another one than routing and policy saw.
        ("delete /public/x HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(), Some("bad_method")),
        ("Get /public/x HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(), Some("bad_method")),
        // Fields asking the pod to run another method or serve another target.
        (format!("{post}X-HTTP-Method-Override: DELETE\r\nContent-Length: 0\r\n\r\n"), Some("method_override")),
        ("GET /public/x HTTP/1.1\r\nHost: h.test\r\nx-http-method: PUT\r\n\r\n".to_owned(), Some("method_override")),
        (format!("{post}X-Method-Override: DELETE\r\nContent-Length: 0\r\n\r\n"), Some("method_override")),
        (
            "GET /public/x HTTP/1.1\r\nHost: h.test\r\nX-Original-URL: /secret/x\r\n\r\n".to_owned(),
            Some("target_override"),
        ),
        (
            "GET /public/x HTTP/1.1\r\nHost: h.test\r\nX-Rewrite-URL: /secret/x\r\n\r\n".to_owned(),
            Some("target_override"),
        ),
        // The same with `_` for `-`, which CGI-style servers (Rack, IIS, WAGI) read alike.
        (format!("{post}X_HTTP_Method_Override: DELETE\r\nContent-Length: 0\r\n\r\n"), Some("method_override")),
        ("GET /public/x HTTP/1.1\r\nHost: h.test\r\nx-http_method: PUT\r\n\r\n".to_owned(), Some("method_override")),
        (
            "GET /public/x HTTP/1.1\r\nHost: h.test\r\nX_Original_URL: /secret/x\r\n\r\n".to_owned(),
            Some("target_override"),
        ),
        // Overlong UTF-8 for `.` and `/`: decoders that accept it climb to /secret.
        (
            "GET /public/%c0%ae%c0%ae/secret/x HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(),
            Some("path_overlong_encoding"),
        ),
        ("GET /public/..%c0%afsecret/x HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(), Some("path_overlong_encoding")),
        (
            "GET /public/%e0%80%ae%e0%80%ae/secret/x HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(),
            Some("path_overlong_encoding"),
        ),
        // Characters a pod's Unicode normalisation (NFKC) reads as dots or a separator.
        (
            "GET /public/%ef%bc%8e%ef%bc%8e/secret/x HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(),
            Some("path_lookalike_dot_segment"),
        ),
        (
            "GET /public/%E2%80%A5/secret/x HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(),
            Some("path_lookalike_dot_segment"),
        ),
        (
            "GET /public/..%EF%BC%8Fsecret/x HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(),
            Some("path_lookalike_dot_segment"),
        ),
    ];
    for (request, code) in &cases {
        let (status, text, closed) = raw_exchange(gw.addr(), request.as_bytes()).await;
        assert_eq!(status, Some(400), "{request:?} got:\n{text}");
        assert!(closed, "{request:?}: the connection must be closed after the refusal");
        // Every refusal, Pingora's parser's included, is JSON with a request id.
        assert!(text.contains("\"request_id\":\""), "{request:?} got:\n{text}");
        assert!(text.to_ascii_lowercase().contains("x-request-id: "), "{request:?} got:\n{text}");
        let code = code.unwrap_or("");
        assert!(text.contains(&format!("\"error\":\"{code}")), "{request:?} got:\n{text}");
    }
    assert_eq!(p.targets(), Vec::<String>::new(), "nothing refused, and nothing smuggled, reached the pod");

    // Well-framed requests still go through, bodies intact.
    let chunked = format!("{post}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    let (status, text, _) = raw_exchange(gw.addr(), chunked.as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    assert!(text.contains("\"body_bytes\":3"), "{text}");
    let sized = format!("{post}Content-Length: 3\r\nConnection: close\r\n\r\nabc");
    let (status, text, _) = raw_exchange(gw.addr(), sized.as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    let absolute = "GET http://h.test/public/y HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_exchange(gw.addr(), absolute.as_bytes()).await.0, Some(200));
    assert_eq!(p.targets(), vec!["/public/x", "/public/x", "/public/y"]);

    // A raw space (or `<`, `>`) in the target is refused, not escaped and forwarded.
    for target in ["/public/a b", "/public/z?q=a b", "/public/<x>", "/public/x\ty"] {
        let before = p.targets().len();
        let request = format!("GET {target} HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n");
        let (status, text, closed) = raw_exchange(gw.addr(), request.as_bytes()).await;
        assert_eq!(status, Some(400), "{target:?}: {text}");
        assert!(text.contains("\"error\":\"bad_request\""), "{target:?}: {text}");
        assert!(text.contains("\"request_id\":\""), "{target:?}: {text}");
        assert!(closed, "{target:?}: the connection must be closed after the refusal");
        assert_eq!(p.targets().len(), before, "{target:?} reached the pod: {:?}", p.targets());
    }

    // CONNECT is not proxied: 405 with its own code, and nothing reaches the pod.
    let before = p.targets().len();
    let (status, text, _) = raw_exchange(gw.addr(), b"CONNECT h.test:443 HTTP/1.1\r\nHost: h.test:443\r\n\r\n").await;
    assert_eq!(status, Some(405), "{text}");
    assert!(text.contains("\"error\":\"method_not_allowed\""), "{text}");
    assert!(text.contains("\"request_id\":\""), "{text}");
    assert_eq!(p.targets().len(), before);
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_never_reaches_the_pod_whole_and_chunk_extensions_are_not_forwarded() {
    let (up, seen) = raw_pod(|_| vec![OK.to_vec()]).await;
    let gw = gateway(up).await;
    // What reached the pod after `request` was sent, once the gateway has answered it.
    let addr = gw.addr();
    let send = |request: String| {
        let seen = seen.clone();
        async move {
            received(&seen, true);
            let (status, text, closed) = raw_exchange(addr, request.as_bytes()).await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            (status, text, closed, received(&seen, false))
        }
    };
    let post = "POST /public/x HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    // Chunk framing that parsers disagree on ("funky chunks"): each is refused, and the pod
    // never receives a whole body (nor what was smuggled behind it), only — at most — the
    // head and whole chunks before the bad line, on a connection then closed.
    for body in [
        "3\nabc\r\n0\r\n\r\n",
        "3\r\nabc\n0\r\n\r\n",
        "3\r\nabcXX0\r\n\r\n",
        "3\r\nabc\r\n10000000000000003\r\nabc\r\n0\r\n\r\n",
        "+3\r\nabc\r\n0\r\n\r\n",
        "0x3\r\nabc\r\n0\r\n\r\n",
        " 3\r\nabc\r\n0\r\n\r\n",
        "3\r\nabc\r\n0\n\n",
        "3\r\nabc\r\n0\r\nX: y\n\r\n",
    ] {
        let (status, text, closed, upstream) = send(format!("{post}{body}{SMUGGLED}")).await;
        assert_eq!(status, Some(400), "{body:?}: {text}");
        assert!(text.contains("\"error\":\"bad_request\"") && text.contains("\"request_id\":\""), "{body:?}: {text}");
        assert!(closed, "{body:?}: the connection must be closed after the refusal");
        let forwarded = upstream.split_once("\r\n\r\n").map_or("", |(_, rest)| rest);
        assert!(!forwarded.contains("0\r\n\r\n"), "{body:?}: the pod got a whole body: {upstream:?}");
        assert!(!upstream.contains("smuggled"), "{body:?}: {upstream:?}");
    }
    // Chunk extensions (even one whose quoted value holds a bare LF) are not passed on: the
    // body is framed anew, so the pod cannot read the chunks differently.
    for body in ["3;a=b\r\nabc\r\n0\r\n\r\n", "3;a=\"b\nc\"\r\nabc\r\n0\r\n\r\n"] {
        let request = format!(
            "POST /public/x HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        let (status, text, _, upstream) = send(request).await;
        assert_eq!(status, Some(200), "{body:?}: {text}");
        assert!(upstream.ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), "{body:?}: the pod got {upstream:?}");
    }
}

/// A `Content-Length` the client wrote with leading zeros (RFC 9110 allows them) reaches the
/// pod as the number alone. A pod whose parser reads `010` another way (as octal: 8) would
/// take the body's last bytes for the start of the next request on the pooled connection,
/// which the gateway then sends another client's request behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_reaches_the_pod_as_its_number_alone() {
    let (up, seen) = raw_pod(|_| vec![OK.to_vec()]).await;
    let gw = gateway(up).await;
    for (length, body, sent) in [
        ("010", "0123456789", "10"),
        ("00000000000000000000003", "abc", "3"),
        ("0000", "", "0"),
        ("0", "", "0"),
        ("3", "abc", "3"),
    ] {
        received(&seen, true);
        let request = format!(
            "POST /public/x HTTP/1.1\r\nHost: h.test\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{body}"
        );
        let (status, text, _) = raw_exchange(gw.addr(), request.as_bytes()).await;
        assert_eq!(status, Some(200), "{length:?}: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let upstream = received(&seen, false);
        let (head, forwarded) = upstream.split_once("\r\n\r\n").unwrap_or((&upstream, ""));
        let lengths: Vec<&str> = head
            .split("\r\n")
            .filter_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("content-length")))
            .map(|(_, v)| v.trim())
            .collect();
        assert_eq!(lengths, [sent], "{length:?}: the pod got {upstream:?}");
        assert_eq!(forwarded, body, "{length:?}: the pod got {upstream:?}");
    }
}

/// A pod whose every third answer carries a second, unasked-for response behind it — in the
/// same write, and again 50 ms later while the connection sits in the gateway's pool.
async fn injecting_pod() -> std::net::SocketAddr {
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let (addr, _) = raw_pod(move |_| {
        let i = answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 3;
        let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreq{i}").into_bytes();
        if i > 0 {
            return vec![reply];
        }
        let injected = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned";
        let late = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nlatepois";
        vec![[reply.as_slice(), injected].concat(), late.to_vec()]
    })
    .await;
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_bytes_after_its_response_never_reach_another_request() {
    let up = injecting_pod().await;
    let gw = gateway(up).await;
    // One client after another, each on its own connection: the pooled pod connection would
    // hand an injected response to the next one. Each must get the pod's answer to itself.
    let mut bodies = Vec::new();
    for _ in 0..6 {
        let request = b"GET /public/x HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n";
        let (status, text, _) = raw_exchange(gw.addr(), request).await;
        assert_eq!(status, Some(200), "{text}");
        bodies.push(text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned());
        // Past the late injection: it sits in the pooled connection when the next comes.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(bodies, ["req0", "req1", "req2", "req0", "req1", "req2"]);
}

/// A pod answering by path with responses whose framing is ambiguous or malformed.
async fn misframing_pod() -> std::net::SocketAddr {
    let (addr, _) = raw_pod(|head| {
        let reply: &[u8] = match head.split(' ').nth(1).unwrap_or("") {
            "/public/length-and-chunked" => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            }
            "/public/two-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc",
            "/public/negative-length" => b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nabc",
            "/public/cr-in-value" => b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 3\r\n\r\nabc",
            "/public/folded" => b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 3\r\n\r\nabc",
            "/public/204-with-body" => b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc",
            "/public/length-list" => b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabcSMUGGLED",
            "/public/equal-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabcSMUGGLED",
            "/public/unequal-list" => b"HTTP/1.1 200 OK\r\nContent-Length: 3, 30\r\n\r\nabcSMUGGLED",
            "/public/zero-padded-length" => b"HTTP/1.1 200 OK\r\nContent-Length: 003\r\n\r\nabcSMUGGLED",
            "/public/gzip-coded" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
            "/public/chunked-then-gzip" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        };
        vec![reply.to_vec()]
    })
    .await;
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_ambiguous_framing_is_never_passed_to_the_client() {
    let up = misframing_pod().await;
    let gw = gateway(up).await;
    let get = |path: &str| format!("GET /public/{path} HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n");
    let head_and_body = |text: &str| {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        (head.to_ascii_lowercase(), body.to_owned())
    };
    // Length and chunked: framed by the chunks (RFC 9112 §6.3), the length not passed on.
    let (status, text, _) = raw_exchange(gw.addr(), get("length-and-chunked").as_bytes()).await;
    let (head, body) = head_and_body(&text);
    assert_eq!(status, Some(200), "{text}");
    assert!(head.contains("transfer-encoding: chunked") && !head.contains("content-length"), "{text}");
    assert_eq!(body, "3\r\nabc\r\n0\r\n\r\n");
    // Unreadable framing or fields: the client gets the gateway's 502, none of the pod's bytes.
    // So does a transfer coding other than chunked last, which the gateway does not decode
    // (pingora-core patch 108): it went on to the client, the body read until close.
    for path in ["two-lengths", "negative-length", "cr-in-value", "gzip-coded", "chunked-then-gzip"] {
        let (status, text, _) = raw_exchange(gw.addr(), get(path).as_bytes()).await;
        assert_eq!(status, Some(502), "{path}: {text}");
        assert!(only_the_gateways_502(&text), "{path}: {text}");
    }
    // A length given twice, or as a list, of one value goes on as that value, once (RFC 9110
    // §8.6: a client need not accept the list); of two values it is unreadable. One written
    // with leading zeros goes on as the number alone.
    for path in ["length-list", "equal-lengths", "zero-padded-length"] {
        let (status, text, _) = raw_exchange(gw.addr(), get(path).as_bytes()).await;
        let (head, body) = head_and_body(&text);
        assert_eq!((status, body.as_str()), (Some(200), "abc"), "{path}: {text}");
        assert_eq!(head.matches("content-length").count(), 1, "{path}: {text}");
        assert!(head.contains("\r\ncontent-length: 3\r\n"), "{path}: {text}");
    }
    let (status, text, _) = raw_exchange(gw.addr(), get("unequal-list").as_bytes()).await;
    assert_eq!(status, Some(502), "{text}");
    assert!(only_the_gateways_502(&text), "{text}");
    // An obsolete folded line is unfolded; a 204's body is not sent.
    let (status, text, _) = raw_exchange(gw.addr(), get("folded").as_bytes()).await;
    assert_eq!((status, head_and_body(&text).1.as_str()), (Some(200), "abc"), "{text}");
    assert!(head_and_body(&text).0.contains("x-a: a b\r\n"), "{text}");
    let (status, text, _) = raw_exchange(gw.addr(), get("204-with-body").as_bytes()).await;
    assert_eq!((status, head_and_body(&text).1.as_str()), (Some(204), ""), "{text}");
}

/// A pod's `101 Switching Protocols` to a request that asked for no upgrade was passed on:
/// the client got a 101, no tunnel, then a closed connection — and a byte it sent after
/// the 101 went nowhere. It is the gateway's 502 now (pingora-proxy patch 109), with a
/// request id and none of the pod's bytes; the next request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_to_a_request_that_asked_for_no_upgrade_is_the_gateways_502() {
    let (up, _) = raw_pod(|head| {
        let reply: &[u8] = if head.starts_with("GET /public/switch ") {
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        vec![reply.to_vec()]
    })
    .await;
    let gw = gateway(up).await;
    let (status, text, _) =
        raw_exchange(gw.addr(), b"GET /public/switch HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, Some(502), "{text}");
    assert!(only_the_gateways_502(&text), "{text}");
    let (status, text, _) =
        raw_exchange(gw.addr(), b"GET /public/x HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, Some(200), "{text}");
}

/// Whether the body of `text` is the gateway's own `upstream_unavailable` answer and nothing
/// else: exactly its two JSON fields, with no byte of the pod's after it. (Looking for the
/// pod's body, "abc", in the whole text also found it inside a random request id.)
fn only_the_gateways_502(text: &str) -> bool {
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    fields.len() == 2
        && fields.get("error").and_then(|e| e.as_str()) == Some("upstream_unavailable")
        && fields.get("request_id").and_then(|id| id.as_str()).is_some_and(|id| !id.is_empty())
}

/// The responses in `text`, in order: status and body (each framed by its `Content-Length`).
fn answers(text: &str) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((head, after)) = rest.split_once("\r\n\r\n") {
        let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let length = head
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
            .unwrap_or(0);
        let body = after.get(..length).unwrap_or(after);
        out.push((status, body.to_owned()));
        rest = after.get(length..).unwrap_or("");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_a_body_never_becomes_a_request() {
    // A pod that answers each request with its target.
    let (pod_addr, seen) = raw_pod(|head| {
        let target = head.split(' ').nth(1).unwrap_or("").to_owned();
        vec![format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{target}", target.len()).into_bytes()]
    })
    .await;
    let gw = gateway_with(pod_addr, "limits: {head_timeout: 1s}\n").await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: h.test\r\n\r\n");
    let last = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n");
    let post = |path: &str, body: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: h.test\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    };

    // Four requests in one write, one with a body: four answers, in order (RFC 9112 §9.3.2).
    let sent = [get("/public/1"), get("/public/2"), post("/public/3", "hello"), last("/public/4")].concat();
    let (_, text, closed) = raw_exchange(gw.addr(), sent.as_bytes()).await;
    let expected: Vec<(u16, String)> = (1..=4).map(|i| (200, format!("/public/{i}"))).collect();
    assert_eq!(answers(&text), expected, "{text}");
    assert!(closed, "{text}");
    let pod_saw = received(&seen, true);
    let at = |needle: &str| pod_saw.find(needle).unwrap_or(usize::MAX);
    assert!(at("GET /public/1 ") < at("GET /public/2 ") && at("GET /public/2 ") < at("POST /public/3 "), "{pod_saw}");
    assert!(at("POST /public/3 ") < at("hello") && at("hello") < at("GET /public/4 "), "{pod_saw}");

    // A body that reads as a request is a body: one answer for it, none for what it holds.
    let hidden = get("/public/smuggled");
    let sent = [post("/public/b", &hidden), last("/public/after")].concat();
    let (_, text, _) = raw_exchange(gw.addr(), sent.as_bytes()).await;
    assert_eq!(answers(&text), [(200, "/public/b".to_owned()), (200, "/public/after".to_owned())], "{text}");

    // Behind a request refused for its framing, nothing is read: one answer, the connection
    // closed, the pod never asked.
    received(&seen, true);
    let smuggle =
        "POST /public/x HTTP/1.1\r\nHost: h.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let (status, text, closed) = raw_exchange(gw.addr(), [smuggle, &last("/public/behind")].concat().as_bytes()).await;
    assert_eq!((status, answers(&text).len(), closed), (Some(400), 1, true), "{text}");
    // Nor behind any refused request with a body (its body is not read as a request)…
    let sent = [post("/nowhere", &hidden), last("/public/next")].concat();
    let (status, text, closed) = raw_exchange(gw.addr(), sent.as_bytes()).await;
    assert_eq!((status, answers(&text).len(), closed), (Some(404), 1, true), "{text}");
    // …while behind one without a body, the next request is served.
    let (_, text, _) = raw_exchange(gw.addr(), [get("/nowhere"), last("/public/next")].concat().as_bytes()).await;
    let got: Vec<u16> = answers(&text).iter().map(|a| a.0).collect();
    assert_eq!(got, [404, 200], "{text}");
    assert!(text.ends_with("/public/next"), "{text}");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let pod_saw = received(&seen, true);
    assert!(!pod_saw.contains("/public/behind") && !pod_saw.contains("smuggled"), "{pod_saw}");
    assert!(pod_saw.contains("GET /public/next "), "{pod_saw}");

    // HTTP/1.0 without keep-alive: one answer, then the connection closes, the rest unread.
    let old = "GET /public/old HTTP/1.0\r\nHost: h.test\r\n\r\n";
    let (_, text, closed) = raw_exchange(gw.addr(), [old, &get("/public/unread")].concat().as_bytes()).await;
    assert_eq!((answers(&text), closed), (vec![(200, "/public/old".to_owned())], true), "{text}");
    let pod_saw = received(&seen, true);
    assert!(pod_saw.contains("/public/old") && !pod_saw.contains("/public/unread"), "{pod_saw}");

    // A pipelined head left unfinished has the head's deadline (1 s here), as any other.
    let began = std::time::Instant::now();
    let (_, text, closed) = raw_exchange(gw.addr(), format!("{}GET /public/b HTT", get("/public/a")).as_bytes()).await;
    let got = answers(&text);
    assert_eq!(got.first(), Some(&(200, "/public/a".to_owned())), "{text}");
    assert_eq!(got.get(1).map(|a| a.0), Some(408), "{text}");
    assert!(text.contains("request_head_timeout") && closed, "{text}");
    assert!(began.elapsed() < std::time::Duration::from_secs(4), "closed at the head's deadline, not the idle timeout");
}
