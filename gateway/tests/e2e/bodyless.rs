//! A request without a body is proxied in one loop: its end goes to the pod, the pod's
//! answer comes back batch by batch as it arrives, and the client is watched while the pod
//! has not answered. What a client and a pod see of it: an answer passed on piece by piece
//! as the pod sends it, an answer the pod cuts short, and a client that leaves before the
//! pod answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A gateway with one public route to `pod`, which waits up to 10 s for the pod's answer.
async fn gateway(pod: SocketAddr) -> Gateway {
    Gateway::start(&config(&format!(
        "upstreams: {{pod: {{endpoints: [{{address: \"{pod}\"}}], outlier: {{consecutive_failures: 1000}}}}}}\n\
         routes: [{{name: r, upstream: pod, public: true, timeouts: {{read: 10s}}}}]\n"
    )))
    .await
}

/// `/stream`: a chunked answer in a head and three chunks, 50 ms apart (a length-framed
/// answer may be held until a segment's worth of it is there). `/cut`: a head
/// declaring 100 bytes, 10 of them, then the pod closes. Anything else: a whole answer.
async fn piecewise_pod() -> SocketAddr {
    raw_pod(|head| {
        let piece = |s: &str| s.as_bytes().to_vec();
        if head.starts_with("GET /stream ") {
            vec![
                piece("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
                piece("a\r\npiece-one|\r\n"),
                piece("a\r\npiece-two|\r\n"),
                piece("a\r\npiece-end|\r\n0\r\n\r\n"),
            ]
        } else if head.starts_with("GET /cut ") {
            vec![piece("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"), piece("0123456789"), Vec::new()]
        } else {
            vec![piece("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nwhole")]
        }
    })
    .await
    .0
}

/// A chunked body's data, its chunk sizes and final chunk taken off.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size, 16).expect("a hex chunk size");
        if size == 0 {
            assert_eq!(rest, "\r\n", "nothing after the last chunk");
            return out;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").expect("CRLF after a chunk");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_passed_on_as_the_pod_sends_it_and_the_connection_is_kept() {
    let gw = gateway(piecewise_pod().await).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: h.test\r\n\r\n").await.expect("write");
    // Each read as it arrives: the first piece must reach the client before the pod has
    // sent the last (100 ms later), not with it.
    let (mut got, mut chunk) = (String::new(), [0u8; 4096]);
    let mut first_piece_alone = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !got.ends_with("\r\n0\r\n\r\n") {
        assert!(Instant::now() < deadline, "the answer never completed: {got:?}");
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("read in time")
            .expect("read");
        assert!(n > 0, "closed mid-answer: {got:?}");
        got.push_str(&String::from_utf8_lossy(&chunk[..n]));
        first_piece_alone |= got.contains("piece-one|") && !got.contains("piece-end|");
    }
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
    let (head, body) = got.split_once("\r\n\r\n").expect("a head");
    assert!(head.to_ascii_lowercase().contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert_eq!(dechunk(body), "piece-one|piece-two|piece-end|", "{body:?}");
    assert!(first_piece_alone, "the first piece was held until the answer's end");
    // The connection serves the next request.
    let (status, body) = exchange(&mut s, b"GET /next HTTP/1.1\r\nHost: h.test\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, "whole"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_pod_cuts_short_closes_the_clients_connection_and_is_not_completed() {
    let mut gw = gateway(piecewise_pod().await).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(b"GET /cut HTTP/1.1\r\nHost: h.test\r\n\r\n").await.expect("write");
    let (got, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "the client's connection was kept open after a cut answer: {got:?}");
    let (head, body) = got.split_once("\r\n\r\n").expect("the head was passed on");
    assert!(head.starts_with("HTTP/1.1 200 ") && head.to_ascii_lowercase().contains("content-length: 100"), "{head}");
    assert_eq!(body, "0123456789", "only what the pod sent, and nothing added to it");
    // The pod's connection closed with the answer; the next request gets a new one.
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    let (status, body) = exchange(&mut s, b"GET /after HTTP/1.1\r\nHost: h.test\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, "whole"));
    // The access log tells the cut answer from a whole one: the pod's failure is its error.
    gw.sigterm();
    gw.wait_exit(Duration::from_secs(10)).await.expect("exits");
    let stdout = gw.stdout();
    let line = |path: &str| {
        stdout
            .lines()
            .filter(|l| l.contains("edgegate::access"))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON log line"))
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no access-log line for {path}:\n{stdout}"))
    };
    let (cut, after) = (line("/cut"), line("/after"));
    let error = cut["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("Upstream ConnectionClosed") && error.contains("prematurely"), "{cut}");
    assert!(after.get("error").is_none(), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_pod_answers_ends_the_pods_request() {
    // A pod that never answers and reports, for each request, how long after its head
    // the gateway closed the connection (or 10 s, if it never did).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let pod = listener.local_addr().expect("addr");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(head) = read_head(&mut conn, &mut buf).await else { return };
                let read = Instant::now();
                let mut chunk = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                    while let Ok(1..) = conn.read(&mut chunk).await {}
                })
                .await;
                let _ = tx.send((head, read.elapsed()));
            });
        }
    });
    let gw = gateway(pod).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(b"GET /wait HTTP/1.1\r\nHost: h.test\r\n\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    let (head, held) = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("the pod saw the request end")
        .expect("the pod reported");
    assert!(head.starts_with("GET /wait "), "{head}");
    assert!(held < Duration::from_secs(3), "the pod's request was held {held:?} after the client left");
}
