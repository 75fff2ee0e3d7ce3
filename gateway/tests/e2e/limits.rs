//! Request body limits: a declared length over the limit is refused before anything
//! reaches the pod; a chunked body is counted as it streams and cut off at the limit.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

async fn gateway(p: &edgegate::pod::Pod) -> Gateway {
    Gateway::start(&config(&format!(
        "upstreams:\n{}routes:\n  - {{name: small, match: {{path_prefix: /small/}}, upstream: svc, public: true, limits: {{body: 1KiB}}}}\n  - {{name: api, match: {{path_prefix: /api/}}, upstream: svc, public: true}}\n",
        group("svc", &[p.addr])
    )))
    .await
}

fn post(path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n{headers}\r\n").into_bytes();
    req.extend_from_slice(body);
    req
}

fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413() {
    let p = pod("svc").await;
    p.record_targets();
    let gw = gateway(&p).await;

    // Declared too large: refused before the pod hears of it.
    let (status, text, _) = raw_exchange(gw.addr(), &post("/small/x", "Content-Length: 2000\r\n", &[b'a'; 2000])).await;
    assert_eq!(status, Some(413), "{text}");
    assert!(text.contains(r#""error":"payload_too_large""#), "{text}");
    let big = 1024 * 1024 + 1;
    let (status, _, _) =
        raw_exchange(gw.addr(), &post("/api/x", &format!("Content-Length: {big}\r\n"), &vec![b'a'; big])).await;
    assert_eq!(status, Some(413), "the global default is 1 MiB");
    assert_eq!(p.targets(), Vec::<String>::new());

    // Within the limits: through, intact.
    let (status, text, _) = raw_exchange(gw.addr(), &post("/small/x", "Content-Length: 1000\r\n", &[b'a'; 1000])).await;
    assert_eq!(status, Some(200), "{text}");
    assert!(text.contains("\"body_bytes\":1000"), "{text}");
    let (status, text, _) =
        raw_exchange(gw.addr(), &post("/small/x", "Transfer-Encoding: chunked\r\n", &chunked(&[b'b'; 1000], 300)))
            .await;
    assert_eq!(status, Some(200), "{text}");
    assert!(text.contains("\"body_bytes\":1000"), "{text}");
    let (status, _, _) =
        raw_exchange(gw.addr(), &post("/api/x", "Content-Length: 524288\r\n", &vec![b'c'; 524_288])).await;
    assert_eq!(status, Some(200));

    // Chunked, so no length up front: counted as it streams, cut off past the limit.
    let (status, text, closed) =
        raw_exchange(gw.addr(), &post("/small/x", "Transfer-Encoding: chunked\r\n", &chunked(&[b'd'; 3000], 500)))
            .await;
    assert_eq!(status, Some(413), "{text}");
    assert!(text.contains(r#""error":"payload_too_large""#), "{text}");
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_over_the_limits_get_431() {
    let p = pod("svc").await;
    p.record_targets();
    let gw = gateway(&p).await;
    let get = |extra: String| format!("GET /api/x HTTP/1.1\r\nHost: h.test\r\n{extra}Connection: close\r\n\r\n");

    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, text, closed) = raw_exchange(gw.addr(), get(many).as_bytes()).await;
    assert_eq!(status, Some(431), "{text}");
    assert!(text.contains(r#""error":"request_header_too_large""#) && closed, "{text}");
    let big = format!("X-Big: {}\r\n", "a".repeat(20 * 1024));
    let (status, text, _) = raw_exchange(gw.addr(), get(big).as_bytes()).await;
    assert_eq!(status, Some(431), "{text}");
    assert_eq!(p.targets(), Vec::<String>::new(), "nothing over the limits reached the pod");

    let fine: String = (0..90).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(raw_exchange(gw.addr(), get(fine).as_bytes()).await.0, Some(200), "90 headers are within 100");
}

/// The keep-alive timeout runs from the end of the last request on a connection, whatever
/// an earlier wait's timer was due: the gateway keeps one timer per connection and moves it
/// only when it fires. Request 2 comes 0.6 s after request 1 (within the 1 s timeout, while
/// the timer armed after 1 is still pending); request 3 comes 0.6 s after 2 and takes 0.8 s
/// at the pod, so the timer armed after 2 fires while 3 is served. The connection must stay
/// open for 2 and 3, and close about 1 s after 3's answer — not never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keepalive_timeout_runs_from_the_end_of_each_request() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}]\nlimits: {{keepalive_timeout: 1s}}\n",
        group("svc", &[p.addr])
    )))
    .await;
    let mut conn = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: h.test\r\n\r\n").into_bytes();
    assert_eq!(exchange(&mut conn, &get("/api/1")).await.0, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(exchange(&mut conn, &get("/api/2")).await.0, 200, "request 2, 0.6 s after 1");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(exchange(&mut conn, &get("/api/3?delay_ms=800")).await.0, 200, "request 3, 0.6 s after 2");
    let answered = Instant::now();
    let (_, closed) = read_to_close(&mut conn, Duration::from_secs(5)).await;
    let idle = answered.elapsed();
    assert!(closed, "the connection was still open 5 s after its last request");
    assert!(idle >= Duration::from_millis(900), "closed {idle:?} after the last request, before the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_long_lived_client_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = pod("svc").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}]\nlimits: {{keepalive_timeout: 1s, keepalive_requests: 3}}\n",
        group("svc", &[p.addr])
    )))
    .await;
    let request = b"GET /api/x HTTP/1.1\r\nHost: h.test\r\n\r\n";

    // An idle keep-alive connection is closed by the gateway after its timeout.
    let mut idle = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    idle.write_all(request).await.expect("write");
    let mut buf = vec![0u8; 64 * 1024];
    let n = idle.read(&mut buf).await.expect("response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let eof = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if idle.read(&mut buf).await.map_or(true, |n| n == 0) {
                break;
            }
        }
    })
    .await;
    assert!(eof.is_ok(), "the idle connection was still open after 5 s");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "closed before the timeout");

    // The third request on one connection is its last.
    let mut conn = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    let mut seen = String::new();
    for i in 0..3 {
        conn.write_all(request).await.expect("write");
        let n = conn.read(&mut buf).await.expect("read");
        let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "request {i}: {head}");
        seen = head;
    }
    assert!(seen.contains("connection: close"), "the last allowed response says so: {seen}");
    assert_eq!(conn.read(&mut buf).await.map_or(0, |n| n), 0, "and the gateway closes the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_give_429_with_retry_after_per_key() {
    let p = pod("svc").await;
    let yaml = |extra_path: &str| {
        config(&format!(
            "upstreams:\n{}routes:\n  - {{name: api, match: {{path_prefix: /api/}}, upstream: svc, public: true, rate_limit: {{rate: 1, burst: 3}}}}\n  - {{name: forms, match: {{path_prefix: /forms/}}, upstream: svc, public: true, rate_limit: {{rate: 1, burst: 2, key: \"header:X-Client\"}}}}\n  - {{name: extra, match: {{path: {extra_path}}}, upstream: svc, public: true}}\n",
            group("svc", &[p.addr])
        ))
    };
    let gw = Gateway::launch(&yaml("/a"), Launch { no_watch: true, ..Launch::default() }).await;
    let c = client();
    for i in 0..3 {
        assert_eq!(c.get(gw.url("/api/x")).send().await.expect("req").status(), 200, "burst request {i}");
    }
    let limited = c.get(gw.url("/api/x")).send().await.expect("req");
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=1).contains(&retry), "one request per second: retry after 1 s, got {retry}");
    let body: serde_json::Value = limited.json().await.expect("JSON");
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(p.requests(), 3, "the limited request never reached the pod");

    // A reload that leaves the limit as it was keeps the buckets: no fresh burst.
    gw.write_config(&yaml("/b"));
    let outcome: serde_json::Value =
        c.post(gw.admin_url("/-/reload")).send().await.expect("reload").json().await.expect("JSON");
    assert_eq!(outcome["result"], "applied");
    let mut allowed = 0;
    for _ in 0..3 {
        allowed += usize::from(c.get(gw.url("/api/x")).send().await.expect("req").status() == 200);
    }
    // A fresh bucket would allow all three; the kept one at most what refilled meanwhile.
    assert!(allowed < 3, "the reload handed out a fresh burst");

    // Keyed by a header: each value has its own bucket.
    for who in ["a", "b"] {
        for _ in 0..2 {
            let r = c.get(gw.url("/forms/x")).header("x-client", who).send().await.expect("req");
            assert_eq!(r.status(), 200, "{who}");
        }
        let r = c.get(gw.url("/forms/x")).header("x-client", who).send().await.expect("req");
        assert_eq!(r.status(), 429, "{who}");
    }
    let metrics = gw.metrics().await;
    assert!(metrics.lines().any(|l| l.starts_with(r#"edgegate_rate_limited_total{route="api"} "#)), "{metrics}");
    assert!(metrics.lines().any(|l| l == r#"edgegate_rate_limited_total{route="forms"} 2"#), "{metrics}");
}

/// An IPv6 client holds a whole /64 (2^64 addresses it can send from, as any host with
/// privacy addresses does). Keyed by the full address, each new address would bring a
/// fresh budget — and fill the limiter's table, past which new keys pass unlimited. The
/// key is the /64, as for `max_connections_per_client`; an IPv4-mapped address is its
/// IPv4 address. The clients here are named by a trusted proxy in raw requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_client_cannot_rotate_its_addresses_past_a_rate_limit() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config(&format!(
        "trusted_proxies: [127.0.0.1/32]\nupstreams:\n{}routes: [{{name: api, upstream: svc, public: true, rate_limit: {{rate: 1, burst: 3}}}}]\n",
        group("svc", &[p.addr])
    )))
    .await;
    let addr = gw.addr();
    let ask = |client: String| async move {
        let request =
            format!("GET /x HTTP/1.1\r\nHost: zwfw.gov.test\r\nX-Forwarded-For: {client}\r\nConnection: close\r\n\r\n");
        raw_exchange(addr, request.as_bytes()).await.0
    };
    let mut statuses = Vec::new();
    for i in 1..=8 {
        statuses.push(ask(format!("2001:db8:7:9::{i:x}")).await);
    }
    assert_eq!(statuses[..3], [Some(200); 3], "the /64's burst: {statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == Some(429)), "one budget for the /64: {statuses:?}");
    // Another /64 is another client.
    assert_eq!(ask("2001:db8:7:a::1".into()).await, Some(200));
    // An IPv4 client written as an IPv4-mapped IPv6 address is that IPv4 client.
    for _ in 0..3 {
        assert_eq!(ask("198.51.100.9".into()).await, Some(200));
    }
    assert_eq!(ask("::ffff:198.51.100.9".into()).await, Some(429), "the mapped spelling shares the budget");
    assert_eq!(p.requests(), 7, "no limited request reached the pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_route_answers_503_and_frees_its_places() {
    let p = pod_with_delay("slow", std::time::Duration::from_millis(700)).await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: slow, upstream: slow, public: true, max_inflight: 2}}]\n",
        group("slow", &[p.addr])
    )))
    .await;
    let c = client();
    let first: Vec<_> = (0..2).map(|_| tokio::spawn(c.get(gw.url("/x")).send())).collect();
    // Both places are taken once the pod has both requests.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while p.requests() < 2 {
        assert!(std::time::Instant::now() < deadline, "the first two never reached the pod");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let refused = c.get(gw.url("/x")).send().await.expect("req");
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"], "route_overloaded");
    for f in first {
        assert_eq!(f.await.expect("join").expect("req").status(), 200);
    }
    assert_eq!(c.get(gw.url("/x")).send().await.expect("req").status(), 200, "the places were given back");
    assert_eq!(p.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_replies_are_counted_by_status_and_reason() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: api, match: {{path_prefix: /api/}}, upstream: svc, public: true}}]\n",
        group("svc", &[p.addr])
    )))
    .await;
    for _ in 0..3 {
        let (status, _, _) =
            raw_exchange(gw.addr(), b"GET /nowhere HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status, Some(404));
    }
    let smuggle =
        b"POST /api/x HTTP/1.1\r\nHost: h.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(raw_exchange(gw.addr(), smuggle).await.0, Some(400));
    let upgrade = b"GET /api/x HTTP/1.1\r\nHost: h.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    assert_eq!(raw_exchange(gw.addr(), upgrade).await.0, Some(400));
    assert_eq!(
        raw_exchange(gw.addr(), b"GET /api/ok HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n").await.0,
        Some(200)
    );

    let metrics = gw.metrics().await;
    let count = |reason: &str, status: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("edgegate_gateway_replies_total{"))
            .filter(|l| l.contains(&format!("reason=\"{reason}\"")) && l.contains(&format!("status=\"{status}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(count("no_route", "404"), 3.0, "{metrics}");
    assert_eq!(count("upgrade_not_allowed", "400"), 1.0, "{metrics}");
    let refused_400: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("edgegate_gateway_replies_total{") && l.contains("status=\"400\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refused_400, 2.0, "the smuggling shape and the upgrade, each under its own reason: {metrics}");
    assert_eq!(count("content_length_and_chunked", "400"), 1.0, "{metrics}");
    assert!(!metrics.contains("status=\"200\""), "served requests are not the gateway's own replies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_cheap_and_others_are_served_meanwhile() {
    const N: usize = 1500;
    // Both ends of every connection are open in this machine's processes: this one and the
    // gateway (which inherits the limit).
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("getrlimit");
    let want = (4 * N as u64 + 1024).min(hard);
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, want, hard).expect("setrlimit");
    let p = pod("svc").await;
    // Every connection comes from this one address, as fast as it can open them.
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}]\nlimits: {{max_connections_per_client: {}, new_connections_per_client: {{rate: 100000, burst: 100000}}}}\n",
        group("svc", &[p.addr]),
        N + 100
    )))
    .await;
    let request = b"GET /api/x HTTP/1.1\r\nHost: h.test\r\n\r\n";
    // Warm up: the first connections allocate the runtime's and allocator's own state.
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
        assert_eq!(exchange(&mut s, request).await.0, 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = rss_kib(gw.pid());
    let mut held = Vec::with_capacity(N);
    for i in 0..N {
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
        let (status, body) = exchange(&mut s, request).await;
        assert_eq!(status, 200, "connection {i}: {body}");
        held.push(s);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = rss_kib(gw.pid());
    let per_connection = after.saturating_sub(before) as f64 / N as f64;
    // While they are all held: other clients are served, and a held one still works.
    let c = client();
    for i in 0..20 {
        assert_eq!(c.get(gw.url(&format!("/api/other/{i}"))).send().await.expect("request").status(), 200);
    }
    assert_eq!(exchange(&mut held[N / 2], request).await.0, 200);
    // Measured 5.6 KiB here (the release build: 6.2, loadtest/scenarios/idle-connections.sh).
    // With Pingora's own keep-alive loop, where an idle connection holds a whole request's
    // state, this test measured 30.7 KiB.
    assert!(
        per_connection <= 16.0,
        "{per_connection:.1} KiB per idle keep-alive connection ({before} → {after} KiB for {N})"
    );
}

/// A client with a 4 KiB receive buffer that has sent `request`: a large answer fills the
/// sockets' buffers within moments unless it reads.
async fn small_window_client(addr: std::net::SocketAddr, request: &[u8]) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small receive buffer");
    let mut s = socket.connect(addr).await.expect("connect");
    s.write_all(request).await.expect("send");
    s
}

/// Reads what arrives until the connection ends or is quiet for 5 s; returns the byte count.
async fn read_what_arrives(s: &mut tokio::net::TcpStream) -> usize {
    let (mut got, mut buf) = (0usize, vec![0u8; 1 << 16]);
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        got += n;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_at_send_timeout() {
    // A client asks for 16 MiB and reads none of it: without a send timeout the gateway
    // held the response's buffers and the pod connection for as long as the client kept
    // its connection open.
    let pod = big_body_pod(16 << 20).await;
    let gw = Gateway::start(&config(&format!(
        "limits: {{send_timeout: 1s}}\nupstreams:\n  svc: {{endpoints: [{{address: \"{pod}\"}}]}}\n\
         routes: [{{name: r, upstream: svc, public: true}}]\n"
    )))
    .await;
    let mut s = small_window_client(gw.addr(), b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&gw.metrics().await, "edgegate_slow_response_reads_total") < 1.0 {
        assert!(Instant::now() < deadline, "never cut off:\n{}", gw.metrics().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&gw.metrics().await, "edgegate_inflight_requests"), 0.0);
    // The client finds its connection ended short of the body.
    let got = read_what_arrives(&mut s).await;
    assert!(got < 16 << 20, "the whole body arrived ({got} bytes)");

    // A slow reader that keeps reading is served in full, however long it takes overall.
    let mut s = small_window_client(gw.addr(), b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let (mut got, mut buf) = (0usize, vec![0u8; 1 << 16]);
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        got += n;
        if got % (1 << 20) < n {
            tokio::time::sleep(Duration::from_millis(300)).await; // pauses shorter than 1 s
        }
    }
    assert!(got > 16 << 20, "a slow but steady reader got only {got} bytes");
    assert_eq!(metric(&gw.metrics().await, "edgegate_slow_response_reads_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_stalled_responses_the_longest_stalled_is_cut_off() {
    // Eight clients ask for 16 MiB each, one every 300 ms, and read none of it. Each such
    // request holds ~0.4 MiB and a pod connection until `send_timeout` (a minute here);
    // without a bound on how many, 10,000 connections could make a node hold ~4 GiB.
    let pod = big_body_pod(16 << 20).await;
    let yaml = |limits: &str| {
        config(&format!(
            "{limits}upstreams:\n  svc: {{endpoints: [{{address: \"{pod}\"}}]}}\n\
             routes: [{{name: r, upstream: svc, public: true}}]\n"
        ))
    };
    let gw = Gateway::start(&yaml("")).await;
    // The limit applies on reload (the gateway started at the default, 1,000).
    gw.write_config(&yaml("limits: {max_stalled_responses: 3}\n"));
    let outcome: serde_json::Value =
        client().post(gw.admin_url("/-/reload")).send().await.expect("reload").json().await.expect("JSON");
    assert_eq!(outcome["generation"], 2, "{outcome}");
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients
            .push(small_window_client(gw.addr(), b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&gw.metrics().await, "edgegate_stalled_responses_cut_total") < 5.0 {
        assert!(Instant::now() < deadline, "not cut:\n{}", gw.metrics().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "edgegate_stalled_responses_cut_total"), 5.0, "{m}");
    assert_eq!(metric(&m, "edgegate_stalled_responses"), 3.0, "{m}");
    // The cut requests are over: their buffers and pod connections are free.
    assert_eq!(metric(&m, "edgegate_inflight_requests"), 3.0, "{m}");
    assert_eq!(metric(&m, "edgegate_slow_response_reads_total"), 0.0, "{m}");
    // Each cut request's access-log line says why.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.stdout().lines().filter(|l| l.contains("edgegate::access") && l.contains("WriteStalledCut")).count() < 5 {
        assert!(Instant::now() < deadline, "{}", gw.stdout());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The five that stalled first find their connections ended short of the body; the three
    // newest are still served, in full, once they read.
    for (i, s) in clients.iter_mut().enumerate() {
        let got = read_what_arrives(s).await;
        if i < 5 {
            assert!(got < 16 << 20, "client {i} (stalled early) got the whole body ({got} bytes)");
        } else {
            assert!(got > 16 << 20, "client {i} (among the newest three) got only {got} bytes");
        }
    }
}

/// Every duration a config may hold at its longest (100 years; `check` refuses longer):
/// the gateway serves, caches with its stale windows, health-checks, purges, reloads,
/// audits and stops on SIGTERM. A timeout of `18446744073709551615s`, which `check` called
/// valid before, made every connection's deadline overflow the clock: each connection
/// panicked and closed unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_duration_at_its_longest_still_serves_and_stops() {
    let p = pod("svc").await;
    let y = "100y";
    let yaml = config(&format!(
        "limits: {{keepalive_timeout: {y}, head_timeout: {y}, send_timeout: {y}, token_check_wait: {y}}}\ncache: {{memory: 16MiB}}\nupstreams:\n  svc:\n    endpoints: [{{address: \"{}\"}}]\n    health: {{path: /, interval: {y}, timeout: {y}}}\nroutes:\n  - {{name: r, upstream: svc, public: true, timeouts: {{connect: {y}, read: {y}, write: {y}}}, cache: {{ttl: {y}, stale_if_error: {y}, stale_while_revalidate: {y}}}}}\naudit: {{db: audit.db, retention: {y}, checkpoint_interval: {y}, verify_interval: {y}, verify_full_interval: {y}}}\nshutdown: {{grace_period: {y}}}\n",
        p.addr
    ));
    let gw = Gateway::start(&yaml).await;
    let get = "GET /r/1 HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n";
    for expected in ["x-cache: MISS", "x-cache: HIT"] {
        let (status, text, _) = raw_exchange(gw.addr(), get.as_bytes()).await;
        assert_eq!(status, Some(200), "{text}");
        assert!(text.contains(expected), "{text}");
    }
    let purge = client().delete(gw.admin_url("/-/cache")).send().await.expect("purge");
    assert_eq!(purge.status(), 200);
    let reload = client().post(gw.admin_url("/-/reload")).send().await.expect("reload");
    assert_eq!(reload.status(), 200);
    let (status, text, _) = raw_exchange(gw.addr(), get.as_bytes()).await;
    assert_eq!((status, text.contains("x-cache: MISS")), (Some(200), true), "purged: {text}");
    assert!(!gw.stderr().contains("panicked"), "{}", gw.stderr());
    let dir = gw.stop().await;
    let db = dir.path().join("config/audit.db");
    let out = output(std::process::Command::new(BIN).args(["audit", "verify", "--db"]).arg(&db));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
