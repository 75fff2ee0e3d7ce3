//! Gateway-made error replies: JSON bodies with the request id, right status codes.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_json_with_request_id() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: api, match: {{path_prefix: /api/}}, upstream: svc, public: true}}]\n",
        group("svc", &[p.addr])
    )))
    .await;
    let resp = client().get(gw.url("/nowhere")).send().await.expect("request");
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let id = resp.headers()["x-request-id"].to_str().expect("ascii").to_owned();
    let body: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(body, serde_json::json!({"error": "no_route", "request_id": id}));
    assert_eq!(p.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502_json() {
    let dead = closed_port();
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: dead, upstream: dead, public: true}}]\n",
        group("dead", &[dead])
    )))
    .await;
    let resp = client().get(gw.url("/x")).header("x-request-id", "trace-502").send().await.expect("request");
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-request-id"], "trace-502");
    let body: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(body, serde_json::json!({"error": "upstream_unavailable", "request_id": "trace-502"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_json_after_the_route_timeout() {
    let p = pod("slow").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: slow, upstream: slow, public: true, timeouts: {{read: 300ms}}}}]\n",
        group("slow", &[p.addr])
    )))
    .await;
    let started = Instant::now();
    let resp = client().get(gw.url("/x?delay_ms=3000")).send().await.expect("request");
    let waited = started.elapsed();
    assert_eq!(resp.status(), 504);
    let id = resp.headers()["x-request-id"].to_str().expect("ascii").to_owned();
    let body: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(body, serde_json::json!({"error": "upstream_timeout", "request_id": id}));
    assert!(waited < Duration::from_millis(2500), "answered after {waited:?}, not at the 300 ms timeout");
}

/// The read timeout on a pooled pod connection runs from each request, though the gateway
/// keeps one timer per pod connection from request to request: a slow answer asked for
/// 100 ms after a fast one on the same connection (the timer armed for the fast one is due
/// ~200 ms into the slow one) gets its whole 300 ms, and a 504 then — not at the earlier
/// deadline, and not never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_timeout_on_a_reused_pod_connection_runs_from_each_request() {
    let p = pod("slow").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: slow, upstream: slow, public: true, timeouts: {{read: 300ms}}}}]\n",
        group("slow", &[p.addr])
    )))
    .await;
    let c = client();
    for delay in [0, 100, 250, 0] {
        let resp = c.get(gw.url(&format!("/x?delay_ms={delay}"))).send().await.expect("request");
        assert_eq!(resp.status(), 200, "a {delay} ms answer is within the 300 ms read timeout");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let resp = c.get(gw.url("/x?delay_ms=3000")).send().await.expect("request");
    let waited = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(waited >= Duration::from_millis(290), "504 after {waited:?}: the timeout is the request's own 300 ms");
    assert!(waited < Duration::from_millis(2500), "answered after {waited:?}, not at the 300 ms timeout");
    let resp = c.get(gw.url("/x")).send().await.expect("request");
    assert_eq!(resp.status(), 200, "served after the timeout");
    assert_eq!(p.requests(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_required_on_http11_and_checked() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: r, upstream: svc, public: true}}]\n",
        group("svc", &[p.addr])
    )))
    .await;
    let missing = raw_request(gw.addr(), "GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["error"], "bad_host");
    let bad = raw_request(gw.addr(), "GET / HTTP/1.1\r\nHost: bad/host\r\n\r\n").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["request_id"], bad.header("x-request-id").expect("id header"));
    assert_eq!(p.requests(), 0, "refused requests never reach the upstream");
    // HTTP/1.0 without Host still reaches routes that match any host.
    let old = raw_request(gw.addr(), "GET /legacy HTTP/1.0\r\n\r\n").await;
    assert_eq!(old.status, 200);
    assert_eq!(p.requests(), 1);
}
