//! Span export to a real HTTP stand-in for an OpenTelemetry collector (OTLP/HTTP JSON):
//! one span per sampled request, linked to the client's span and to the pod's parent;
//! nothing for unsampled requests; a collector that is down costs spans, counted, never
//! a request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_become_spans_at_the_collector() {
    let spans: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind collector");
    let collector = listener.local_addr().expect("addr");
    let got = Arc::clone(&spans);
    serve_posts(listener, move |head, body| {
        assert!(head.starts_with("post /v1/traces "), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let doc: serde_json::Value = serde_json::from_slice(&body).expect("OTLP JSON");
        let resource = &doc["resourceSpans"][0];
        assert_eq!(resource["resource"]["attributes"][0]["value"]["stringValue"], "edgegate");
        for span in resource["scopeSpans"][0]["spans"].as_array().expect("spans") {
            got.lock().expect("lock").push(span.clone());
        }
        200
    });
    let p = pod("echo").await;
    let gw = Gateway::start(&config(&format!(
        "tracing: {{otlp: {{endpoint: \"http://{collector}/v1/traces\", interval: 100ms}}}}\nupstreams:\n{}routes: [{{name: echo, upstream: echo, public: true}}]\n",
        group("echo", &[p.addr])
    )))
    .await;
    let c = client();
    // A sampled client trace, an unsampled one, and no trace (not sampled at ratio 0).
    let resp = c
        .get(gw.url("/traced/1?q=secret"))
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .header("x-request-id", "span-req-1")
        .send()
        .await
        .expect("request");
    let echo: serde_json::Value = resp.json().await.expect("JSON");
    let pods_parent = echo["headers"]["traceparent"].as_str().expect("traceparent").split('-').nth(2).expect("id");
    for header in [Some("00-11111111111111111111111111111111-00f067aa0ba902b7-00"), None] {
        let mut req = c.get(gw.url("/unsampled"));
        if let Some(h) = header {
            req = req.header("traceparent", h);
        }
        assert_eq!(req.send().await.expect("request").status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while spans.lock().expect("lock").is_empty() {
        assert!(Instant::now() < deadline, "no span reached the collector");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give the unsampled requests time to show up if they (wrongly) were exported.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let spans = spans.lock().expect("lock").clone();
    assert_eq!(spans.len(), 1, "only the sampled request: {spans:#?}");
    let s = &spans[0];
    assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(s["parentSpanId"], "00f067aa0ba902b7", "edgegate's span is the client's child");
    assert_eq!(s["spanId"], pods_parent, "and the pod's parent");
    assert_eq!(s["kind"], 2);
    assert_eq!(s["name"], "GET echo");
    let attr = |key: &str| {
        s["attributes"].as_array().expect("attributes").iter().find(|a| a["key"] == key).map(|a| a["value"].clone())
    };
    assert_eq!(attr("url.path").expect("path")["stringValue"], "/traced/1");
    assert_eq!(attr("http.response.status_code").expect("status")["intValue"], "200");
    assert_eq!(attr("edgegate.request_id").expect("request id")["stringValue"], "span-req-1");
    assert_eq!(attr("edgegate.upstream").expect("upstream")["stringValue"], p.addr.to_string());
    assert!(!s.to_string().contains("secret"), "the query is not exported: {s}");
    let start: u64 = s["startTimeUnixNano"].as_str().expect("start").parse().expect("number");
    let end: u64 = s["endTimeUnixNano"].as_str().expect("end").parse().expect("number");
    assert!(start > 1_700_000_000_000_000_000 && end >= start && end - start < 10_000_000_000, "{start}..{end}");
    let text = gw.metrics().await;
    assert_eq!(metric(&text, "edgegate_trace_spans_exported_total"), 1.0);
}

/// A gateway sampling every request, exporting spans to `collector` (an address), in front
/// of a pod of its own (returned to be kept), after `n` requests it answered.
async fn traced_and_answered(collector: std::net::SocketAddr, n: usize) -> (edgegate::pod::Pod, Gateway) {
    let p = pod("echo").await;
    let gw = Gateway::start(&config(&format!(
        "tracing: {{sample_ratio: 1.0, otlp: {{endpoint: \"http://{collector}/v1/traces\", interval: 100ms}}}}\nupstreams:\n{}routes: [{{name: echo, upstream: echo, public: true}}]\n",
        group("echo", &[p.addr])
    )))
    .await;
    let c = client();
    for i in 0..n {
        assert_eq!(c.get(gw.url(&format!("/r/{i}"))).send().await.expect("request").status(), 200);
    }
    (p, gw)
}

/// Waits until `gw` counts `n` spans dropped for a failed export, and none exported.
async fn wait_export_failed(gw: &Gateway, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = gw.metrics().await;
        let dropped = metric(&text, r#"edgegate_trace_spans_dropped_total{reason="export_failed"}"#);
        if dropped == n {
            assert_eq!(metric(&text, "edgegate_trace_spans_exported_total"), 0.0);
            return;
        }
        assert!(Instant::now() < deadline, "{dropped} spans counted as failed exports, not {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_spans_not_requests() {
    let (_pod, gw) = traced_and_answered(closed_port(), 20).await;
    wait_export_failed(&gw, 20.0).await;
}

// A collector endpoint that redirects has not taken the spans: followed, a `302` would
// resend the POST as a GET without them and a 200 to that would count them exported. They
// are counted as failed exports, and the redirect's target is never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_redirects_has_not_taken_the_spans() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let collector = listener.local_addr().expect("addr");
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = std::sync::Arc::clone(&asked);
    serve_http(listener, move |head, _| {
        let line = head.lines().next().unwrap_or_default().to_owned();
        let redirect = line.starts_with("post /v1/traces");
        seen.lock().expect("lock").push(line);
        if redirect {
            "HTTP/1.1 302 Found\r\nlocation: /status\r\ncontent-length: 0\r\n\r\n".into()
        } else {
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".into()
        }
    });
    let (_pod, gw) = traced_and_answered(collector, 5).await;
    wait_export_failed(&gw, 5.0).await;
    let asked = asked.lock().expect("lock").clone();
    assert!(!asked.is_empty() && asked.iter().all(|l| l.starts_with("post /v1/traces")), "{asked:?}");
}
