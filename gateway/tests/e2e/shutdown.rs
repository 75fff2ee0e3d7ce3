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
