//! Connection-level limits: a request head must arrive whole within `limits.head_timeout`
//! (slowloris), a listener holds at most `limits.max_connections` client connections, and
//! one client address at most `limits.max_connections_per_client`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn metric(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or_else(|| panic!("{name} not in metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_heads_are_cut_off_at_the_deadline_while_others_are_served() {
    let p = pod("svc").await;
    p.record_targets();
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}]\nlimits: {{head_timeout: 1s}}\n",
        group("svc", &[p.addr])
    )))
    .await;

    // 200 clients each send a request line, then one more header line every 200 ms:
    // every single read is prompt, only the whole head never ends.
    let mut slow = Vec::new();
    for i in 0..200 {
        let addr = gw.addr();
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET /slow/{i} HTTP/1.1\r\nHost: h.test\r\n").as_bytes()).await.expect("write");
            let started = Instant::now();
            for n in 0..40 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if s.write_all(format!("X-Trickle-{n}: a\r\n").as_bytes()).await.is_err() {
                    break;
                }
                // Stop trickling as soon as the gateway has answered.
                let mut peek = [0u8; 1];
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(1), s.peek(&mut peek)).await {
                    break;
                }
            }
            let (text, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
            (text, closed, started.elapsed())
        }));
    }
    // Meanwhile a well-behaved client is served.
    let c = client();
    for i in 0..20 {
        let resp = c.get(gw.url(&format!("/fast/{i}"))).send().await.expect("a normal request during the attack");
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in slow {
        let (text, closed, elapsed) = task.await.expect("slow client");
        assert!(closed, "a slowloris connection was still open after {elapsed:?}");
        assert!(text.starts_with("HTTP/1.1 408"), "answered 408, got {text:?}");
        assert!(text.contains(r#""error":"request_head_timeout""#) && text.contains("x-request-id:"), "{text}");
        assert!(elapsed < Duration::from_secs(8), "closed at the deadline, not after {elapsed:?}");
    }
    assert!(p.targets().iter().all(|t| t.starts_with("/fast/")), "no slow request reached the pod: {:?}", p.targets());
    assert_eq!(p.targets().len(), 20);
    assert_eq!(metric(&gw.metrics().await, "edgegate_request_head_timeouts_total"), 200.0);
}

/// Goes on with a head already begun, one header line every 200 ms (up to 4 s), until the
/// gateway answers: the answer and how long after the first line it came.
async fn trickle_head(s: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut buf = vec![0u8; 8192];
    for n in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if s.write_all(format!("X-{n}: a\r\n").as_bytes()).await.is_err() {
            break;
        }
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            return (String::from_utf8_lossy(&buf[..n]).into_owned(), started.elapsed());
        }
    }
    (String::new(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_covers_silent_connections_and_each_later_head_but_not_idle_keepalive() {
    let p = pod("svc").await;
    p.record_targets();
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}]\nlimits: {{head_timeout: 1s, keepalive_timeout: 30s}}\n",
        group("svc", &[p.addr])
    )))
    .await;

    // Connected and silent: closed at the deadline, without an answer (nothing was asked).
    let mut silent = TcpStream::connect(gw.addr()).await.expect("connect");
    let (text, closed) = read_to_close(&mut silent, Duration::from_secs(5)).await;
    assert!(closed, "a silent connection is closed at the head deadline");
    assert_eq!(text, "");

    // Idle between requests for longer than the head deadline: still served (the
    // keep-alive timeout governs idleness; the deadline starts at the next head's first byte).
    let mut ka = KeepAlive::connect(gw.addr()).await;
    assert_eq!(ka.get("/one").await, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ka.get("/two").await, 200);

    // The second head on a connection is timed too.
    let mut s = TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(b"GET /three HTTP/1.1\r\nHost: h.test\r\n\r\n").await.expect("write");
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s.write_all(b"GET /four HTTP/1.1\r\n").await.expect("write");
    let (answer, waited) = trickle_head(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?} after {waited:?}");
    assert_eq!(p.targets(), vec!["/one".to_owned(), "/two".to_owned(), "/three".to_owned()]);
}

/// A cache hit or a refusal reads nothing past its head (no body, no upstream to watch the
/// client beside): idling after it is the keep-alive timeout's business, not the head
/// deadline's (it once answered 408 to the next request after `head_timeout` of idleness),
/// and the next head still gets a deadline of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_cache_hits_idle_keepalive_is_served_and_a_trickled_head_is_cut_off() {
    let p = pod("svc").await;
    p.record_targets();
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: api, match: {{path_prefix: /hit}}, upstream: svc, public: true, cache: {{ttl: 60s}}}}]\nlimits: {{head_timeout: 1s, keepalive_timeout: 30s}}\n",
        group("svc", &[p.addr])
    )))
    .await;
    let mut ka = KeepAlive::connect(gw.addr()).await;
    for _ in 0..3 {
        assert_eq!(ka.get("/hit").await, 200);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ka.get("/hit").await, 200, "idle past the head deadline after hits: still served");
    assert_eq!(ka.get("/no-such-route").await, 404);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ka.get("/hit").await, 200, "idle past the head deadline after a refusal: still served");
    assert_eq!(p.targets(), vec!["/hit".to_owned()], "one fill, the rest hits");

    // A head trickled after two hits on the same connection is cut off at its deadline.
    let mut s = TcpStream::connect(gw.addr()).await.expect("connect");
    let mut buf = vec![0u8; 8192];
    for _ in 0..2 {
        s.write_all(b"GET /hit HTTP/1.1\r\nHost: h.test\r\n\r\n").await.expect("write");
        let n = s.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.write_all(b"GET /hit HTTP/1.1\r\n").await.expect("write");
    let (answer, waited) = trickle_head(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?} after {waited:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "the deadline ran from the head's first bytes, not before: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_above_the_listener_cap_are_closed_at_accept() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}]\nlimits: {{max_connections: 5}}\n",
        group("svc", &[p.addr])
    )))
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut ka = KeepAlive::connect(gw.addr()).await;
        assert_eq!(ka.get("/held").await, 200);
        held.push(ka);
    }
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "edgegate_client_connections{listener=\"public\"}"), 5.0);
    // The process collector sees them too (and the memory they cost).
    assert!(metric(&metrics, "process_open_fds") >= 5.0, "{metrics}");
    assert!(metric(&metrics, "process_resident_memory_bytes") > 1e6, "{metrics}");

    // The sixth is closed as soon as it is accepted, before any byte is read.
    let mut sixth = TcpStream::connect(gw.addr()).await.expect("the kernel still accepts");
    let _ = sixth.write_all(b"GET /sixth HTTP/1.1\r\nHost: h.test\r\n\r\n").await;
    let (text, closed) = read_to_close(&mut sixth, Duration::from_secs(5)).await;
    assert!(closed && text.is_empty(), "closed without an answer: {text:?}");
    assert_eq!(metric(&gw.metrics().await, "edgegate_connections_refused_total{listener=\"public\"}"), 1.0);

    // The held ones still work; when one goes, a new client gets its place.
    assert_eq!(held[0].get("/still").await, 200);
    drop(held.pop());
    let mut got_in = false;
    for _ in 0..50 {
        let req = b"GET /new HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n";
        if raw_exchange(gw.addr(), req).await.0 == Some(200) {
            got_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(got_in, "a freed place is given to a new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_cannot_take_every_connection() {
    // Without a per-client cap one address could hold all of `max_connections` (idle
    // connections cost it nothing) and every other client would be refused.
    let p = pod("svc").await;
    let yaml = |extra: &str| {
        config(&format!(
            "upstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}]\n\
             limits: {{max_connections_per_client: 3}}\n{extra}",
            group("svc", &[p.addr])
        ))
    };
    let gw = Gateway::start(&yaml("")).await;
    let (here, other): (std::net::IpAddr, std::net::IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut ka = KeepAlive::connect_from(gw.addr(), here).await;
        assert_eq!(ka.get("/held").await, 200);
        held.push(ka);
    }
    // A fourth from the same address is closed at accept; another address is served.
    assert!(KeepAlive::connect_from(gw.addr(), here).await.closed_unanswered().await);
    let mut elsewhere = KeepAlive::connect_from(gw.addr(), other).await;
    assert_eq!(elsewhere.get("/other-client").await, 200);
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "edgegate_connections_refused_per_client_total"), 1.0, "{m}");
    assert_eq!(metric(&m, "edgegate_connections_refused_total{listener=\"public\"}"), 0.0, "{m}");

    // A closed connection gives its place back.
    assert_eq!(held[0].get("/still").await, 200);
    drop(held.pop());
    let mut got_in = false;
    for _ in 0..50 {
        if !KeepAlive::connect_from(gw.addr(), here).await.closed_unanswered().await {
            got_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(got_in, "a freed place is given to a new connection");

    // A trusted proxy carries many clients: it is not limited (applied on reload).
    let refused = metric(&gw.metrics().await, "edgegate_connections_refused_per_client_total");
    gw.write_config(&yaml("trusted_proxies: [127.0.0.1/32]\n"));
    let outcome: serde_json::Value =
        client().post(gw.admin_url("/-/reload")).send().await.expect("reload").json().await.expect("JSON");
    assert_eq!(outcome["generation"], 2, "{outcome}");
    for i in 0..5 {
        let mut ka = KeepAlive::connect_from(gw.addr(), here).await;
        assert_eq!(ka.get(&format!("/via-proxy/{i}")).await, 200);
        held.push(ka);
    }
    assert_eq!(metric(&gw.metrics().await, "edgegate_connections_refused_per_client_total"), refused);
}

/// `max_connections_per_client` bounds the connections a client holds, not how fast it
/// opens them: a client that opens, handshakes and closes over and over costs the node a
/// TLS handshake (~180 µs of CPU, a dozen proxied requests) each time. Past
/// `new_connections_per_client` a connection is closed at accept, before any handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_cannot_open_connections_without_pause() {
    let p = pod("svc").await;
    let yaml = |extra: &str| {
        config(&format!(
            "upstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}]\n\
             limits: {{new_connections_per_client: {{rate: 1, burst: 3}}}}\n{extra}",
            group("svc", &[p.addr])
        ))
    };
    let gw = Gateway::start(&yaml("")).await;
    let (here, other): (std::net::IpAddr, std::net::IpAddr) = ([127, 0, 0, 3].into(), [127, 0, 0, 4].into());
    for i in 0..3 {
        let mut ka = KeepAlive::connect_from(gw.addr(), here).await;
        assert_eq!(ka.get(&format!("/burst/{i}")).await, 200, "connection {i} of the burst");
    }
    // A fourth, though the first three are closed, is closed at accept; another address is
    // served.
    assert!(KeepAlive::connect_from(gw.addr(), here).await.closed_unanswered().await);
    assert_eq!(KeepAlive::connect_from(gw.addr(), other).await.get("/other-client").await, 200);
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "edgegate_connections_rate_limited_total"), 1.0, "{m}");
    // A second later the client may open one more.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(KeepAlive::connect_from(gw.addr(), here).await.get("/later").await, 200);
    assert_eq!(p.requests(), 5, "the refused connection sent nothing on");

    // A trusted proxy carries many clients: it is not limited (applied on reload).
    gw.write_config(&yaml("trusted_proxies: [127.0.0.3/32]\n"));
    let outcome: serde_json::Value =
        client().post(gw.admin_url("/-/reload")).send().await.expect("reload").json().await.expect("JSON");
    assert_eq!(outcome["generation"], 2, "{outcome}");
    for i in 0..6 {
        assert_eq!(KeepAlive::connect_from(gw.addr(), here).await.get(&format!("/via-proxy/{i}")).await, 200);
    }
    assert_eq!(metric(&gw.metrics().await, "edgegate_connections_rate_limited_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_off_and_a_slow_but_honest_one_is_not() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}]\nlimits: {{head_timeout: 1s, min_body_rate: 1KiB}}\n",
        group("svc", &[p.addr])
    )))
    .await;
    // 100 bytes every 300 ms (~330 B/s) of a declared 10 KB: under 1 KiB/s, cut off.
    let mut s = TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(b"POST /api/up HTTP/1.1\r\nHost: h.test\r\nContent-Length: 10000\r\n\r\n").await.expect("head");
    let started = Instant::now();
    let mut cut = false;
    for _ in 0..30 {
        if s.write_all(&[b'a'; 100]).await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            cut = matches!(r, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 4");
            if cut {
                break;
            }
        }
    }
    assert!(cut, "a body at ~330 B/s was still accepted after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5), "cut off soon after the grace: {:?}", started.elapsed());
    assert_eq!(metric(&gw.metrics().await, "edgegate_slow_request_bodies_total"), 1.0);

    // 4 KB every 500 ms (8 KB/s) for 3 s: above the minimum, delivered whole.
    let mut s = TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(b"POST /api/up HTTP/1.1\r\nHost: h.test\r\nContent-Length: 24000\r\nConnection: close\r\n\r\n")
        .await
        .expect("head");
    for _ in 0..6 {
        s.write_all(&[b'b'; 4000]).await.expect("an honest body is not cut");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (text, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200") && text.contains("\"body_bytes\":24000"), "{text}");
}
