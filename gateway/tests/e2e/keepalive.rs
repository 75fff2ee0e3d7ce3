//! Upstream connections are kept alive and reused across requests.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connection_is_reused() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: r, upstream: svc, public: true}}]\n",
        group("svc", &[p.addr])
    )))
    .await;
    let c = client();
    for i in 0..20 {
        let resp = c.get(gw.url(&format!("/req/{i}"))).send().await.expect("request");
        assert_eq!(resp.status(), 200);
        resp.bytes().await.expect("body");
    }
    assert_eq!(p.requests(), 20);
    assert_eq!(p.connections(), 1, "20 sequential requests should share one pooled upstream connection");

    // A fresh client connection still gets the pooled upstream connection.
    let resp = client().get(gw.url("/again")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(p.connections(), 1);
}

/// A gateway on two workers (`work_stealing` as given) in front of one pod, after 24 client
/// connections sent two requests each, one request at a time: how many connections the
/// pod saw.
async fn pod_connections_after_sequential_clients_on_two_workers(work_stealing: bool) -> usize {
    let p = pod("svc").await;
    let yaml =
        config(&format!("upstreams:\n{}routes: [{{name: r, upstream: svc, public: true}}]\n", group("svc", &[p.addr])))
            .replace("runtime: {threads: 1}", &format!("runtime: {{threads: 2, work_stealing: {work_stealing}}}"));
    let gw = Gateway::start(&yaml).await;
    for i in 0..24 {
        // A new client connection each time: the listener hands each to either worker.
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
        for j in 0..2 {
            let request = format!("GET /c{i}/r{j} HTTP/1.1\r\nHost: h.test\r\n\r\n");
            assert_eq!(exchange(&mut s, request.as_bytes()).await.0, 200);
        }
    }
    assert_eq!(p.requests(), 48);
    p.connections()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_no_steal_worker_keeps_its_own_pod_connections() {
    // A no-steal worker is a runtime of its own: the pod connections it opened are
    // registered there, and it takes only those from the pool. Requests one at a time need
    // one connection per worker (24 client connections all handed to one worker: 1 in
    // 8 million).
    assert_eq!(pod_connections_after_sequential_clients_on_two_workers(false).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_as_they_are_handed_to_a_worker_cost_nothing_after() {
    // Each accepted connection is moved to its worker's I/O driver before its first read;
    // 300 clients that reset theirs at once (SO_LINGER 0, then close: an RST), some before
    // that move, some just after, leave both workers serving, each connection counted out.
    let p = pod("svc").await;
    let yaml =
        config(&format!("upstreams:\n{}routes: [{{name: r, upstream: svc, public: true}}]\n", group("svc", &[p.addr])))
            .replace("runtime: {threads: 1}", "runtime: {threads: 2}");
    let gw = Gateway::start(&yaml).await;
    for _ in 0..300 {
        let s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
        drop(s);
    }
    for i in 0..8 {
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
        let request = format!("GET /after/{i} HTTP/1.1\r\nHost: h.test\r\n\r\n");
        assert_eq!(exchange(&mut s, request.as_bytes()).await.0, 200);
    }
    assert_eq!(p.requests(), 8, "no reset connection reached the pod");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let open = metric(&gw.metrics().await, "edgegate_client_connections{listener=\"public\"}");
        if open == 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{open} connections still counted open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connections_streams_are_served_by_its_own_worker() {
    // The streams of one HTTP/2 connection run on the worker serving the connection, not
    // each on a worker picked at random: one at a time, they need one pod connection
    // between them (two, with both workers' pools, were they spread).
    use crate::tls::{a_gov_test_dir, https_client, Ca, TLS_LISTENER};
    let ca = Ca::new();
    let p = pod("svc").await;
    let yaml = format!(
        "{TLS_LISTENER}admin: {{address: \"127.0.0.1:0\"}}\nruntime: {{threads: 2}}\nupstreams:\n{}routes: [{{name: r, upstream: svc, public: true}}]\n",
        group("svc", &[p.addr])
    );
    let gw = Gateway::launch(&yaml, Launch { dir: Some(a_gov_test_dir(&ca)), ..Launch::default() }).await;
    let https = https_client(&ca, gw.addr(), false);
    for i in 0..20 {
        let resp = https.get(format!("https://a.gov.test:{}/s/{i}", gw.addr().port())).send().await.expect("answer");
        assert_eq!((resp.status().as_u16(), resp.version()), (200, reqwest::Version::HTTP_2));
        resp.bytes().await.expect("body");
    }
    assert_eq!(p.requests(), 20);
    assert_eq!(p.connections(), 1, "20 streams of one connection, one at a time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_stealing_workers_share_one_pool_of_pod_connections() {
    assert_eq!(pod_connections_after_sequential_clients_on_two_workers(true).await, 1);
}

/// A gateway in front of a pod that records the request targets it receives, and a client
/// connection on which one request (`GET first`) was already answered.
async fn kept_alive_connection(first: &str) -> (Gateway, edgegate::pod::Pod, tokio::net::TcpStream) {
    let p = pod("svc").await;
    p.record_targets();
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: r, upstream: svc, public: true}}]\n",
        group("svc", &[p.addr])
    )))
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    let request = format!("GET {first} HTTP/1.1\r\nHost: h.test\r\n\r\n");
    assert_eq!(exchange(&mut s, request.as_bytes()).await.0, 200);
    (gw, p, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_connections_serve_heads_that_arrive_in_pieces_after_a_wait() {
    use tokio::io::AsyncWriteExt;
    let (_gw, p, mut s) = kept_alive_connection("/first").await;

    // Idle, then the next head one byte first, the rest later: the gateway waited for the
    // byte without a request in progress, and the head it then reads starts with it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    s.write_all(b"G").await.expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    s.write_all(b"ET /second?q=1 HTTP/1.1\r\nHost: h.test\r\n").await.expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    s.write_all(b"X-Extra: yes\r\n\r\n").await.expect("write");
    assert_eq!(read_response(&mut s).await.0, 200);

    // A head larger than one read (over 4 KiB of headers), after another wait.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let big: String = (0..40).map(|i| format!("X-Filler-{i}: {}\r\n", "v".repeat(150))).collect();
    s.write_all(format!("GET /third HTTP/1.1\r\nHost: h.test\r\n{big}\r\n").as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut s).await.0, 200);

    // A request with a body, then one more on the same connection.
    let post = b"POST /fourth HTTP/1.1\r\nHost: h.test\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(exchange(&mut s, post).await.0, 200);
    assert_eq!(exchange(&mut s, b"GET /fifth HTTP/1.1\r\nHost: h.test\r\n\r\n").await.0, 200);

    assert_eq!(p.targets(), ["/first", "/second?q=1", "/third", "/fourth", "/fifth"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_head_after_a_wait_gets_a_400_and_the_pod_sees_nothing() {
    let (_gw, p, mut s) = kept_alive_connection("/ok").await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let smuggled =
        b"GET /smuggled HTTP/1.1\r\nHost: h.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(exchange(&mut s, smuggled).await.0, 400);
    assert_eq!(p.targets(), ["/ok"]);
}

/// A pod that closes its idle keep-alive connections soon (as pods do when they scale down
/// or restart): the gateway notices when it takes the pooled connection again — without a
/// watcher task per pooled connection — and connects anew; no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_pod_closed_is_not_reused() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_head(&mut conn, &mut buf).await.is_none() {
                    return;
                }
                let body = "{\"ok\":true}";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
                // Keep-alive was offered; the pod then closes the idle connection.
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    let gw = Gateway::start(&config(&format!(
        "upstreams: {{pod: {{endpoints: [{{address: \"{upstream}\"}}], outlier: {{consecutive_failures: 1000}}}}}}\nroutes: [{{name: r, upstream: pod, public: true}}]\n"
    )))
    .await;
    let c = client();
    for i in 0..5 {
        let status = c.get(gw.url(&format!("/r/{i}"))).send().await.expect("request").status();
        assert_eq!(status, 200, "request {i}");
        // Long enough for the pod to have closed the pooled connection.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 5, "a new connection for each request");
    let metrics = gw.metrics().await;
    assert!(
        metrics.lines().any(|l| l == r#"edgegate_upstream_retries_total{upstream="pod"} 0"#),
        "no request needed a retry:\n{metrics}"
    );
}
