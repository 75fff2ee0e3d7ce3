//! SIGTERM: stop accepting, finish what is in flight, exit well inside the grace period.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_request_then_exits_early() {
    let p = pod("slow").await;
    let mut gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: r, upstream: slow, public: true}}]\nshutdown: {{grace_period: 15s}}\n",
        group("slow", &[p.addr])
    )))
    .await;
    let url = gw.url("/long?delay_ms=1500");
    let in_flight = tokio::spawn(async move {
        let resp = client().get(url).send().await.expect("in-flight request survives shutdown");
        (resp.status().as_u16(), resp.json::<serde_json::Value>().await.expect("JSON"))
    });
    // Let the request reach the pod, then ask the gateway to stop.
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.requests() == 0 {
        assert!(Instant::now() < deadline, "request never reached the pod");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let term_at = Instant::now();
    gw.sigterm();

    // The listener stops accepting while the request is still in flight.
    let deadline = Instant::now() + Duration::from_secs(1);
    while tokio::net::TcpStream::connect(gw.addr()).await.is_ok() {
        assert!(Instant::now() < deadline, "the listener must stop accepting once draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!in_flight.is_finished(), "the listener closed before the in-flight request ended");

    let (status, body) = in_flight.await.expect("join");
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/long");

    let exit = gw.wait_exit(Duration::from_secs(10)).await.expect("gateway exits");
    assert!(exit.success(), "exit status {exit}");
    let took = term_at.elapsed();
    assert!(took < Duration::from_secs(6), "exited {took:?} after SIGTERM; should not sit out the 15 s grace period");
    assert!(gw.stdout().contains("drained: no request in flight"), "{}", gw.stdout());
}

/// A client idle on a kept-alive connection — two requests served on it, the gateway waiting
/// for a third — is let go as soon as SIGTERM arrives: closed while another client's request
/// is still in flight, not held until that drains or the keep-alive timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keepalive_connections_while_others_drain() {
    use tokio::io::AsyncReadExt;
    let p = pod("slow").await;
    let mut gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: r, upstream: slow, public: true}}]\n\
         limits: {{keepalive_timeout: 60s}}\nshutdown: {{grace_period: 15s}}\n",
        group("slow", &[p.addr])
    )))
    .await;
    let mut idle = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    for _ in 0..2 {
        let (status, _) = exchange(&mut idle, b"GET /x HTTP/1.1\r\nHost: gov.example\r\n\r\n").await;
        assert_eq!(status, 200);
    }
    let url = gw.url("/long?delay_ms=3000");
    let in_flight = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.requests() < 3 {
        assert!(Instant::now() < deadline, "the slow request never reached the pod");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let term_at = Instant::now();
    gw.sigterm();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_millis(1500), idle.read(&mut buf))
        .await
        .expect("the idle connection is let go within 1.5 s of SIGTERM, while the slow request drains")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a response: {}", String::from_utf8_lossy(&buf[..n]));
    assert!(!in_flight.is_finished(), "the slow request should still be in flight");
    assert_eq!(in_flight.await.expect("join").expect("the in-flight request survives shutdown"), 200);
    let exit = gw.wait_exit(Duration::from_secs(10)).await.expect("gateway exits");
    assert!(exit.success(), "exit status {exit}");
    let took = term_at.elapsed();
    assert!(took < Duration::from_secs(8), "exited {took:?} after SIGTERM; should not sit out the 15 s grace period");
}
