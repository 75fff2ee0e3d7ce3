//! The admin listener: health, readiness, metrics; and the access log.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: api, match: {{path_prefix: /api/}}, upstream: svc, public: true}}]\n",
        group("svc", &[p.addr])
    )))
    .await;
    let c = client();
    let health = c.get(gw.admin_url("/healthz")).send().await.expect("healthz");
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value =
        c.get(gw.admin_url("/readyz")).send().await.expect("readyz").json().await.expect("JSON");
    assert_eq!(ready["status"], "ready");

    for _ in 0..3 {
        assert_eq!(c.get(gw.url("/api/x")).send().await.expect("request").status(), 200);
    }
    assert_eq!(c.get(gw.url("/missing")).send().await.expect("request").status(), 404);

    // Metrics are recorded in the logging phase, just after the response went out:
    // give the last request a moment to finish.
    let expected = [
        r#"edgegate_requests_total{route="api",status_class="2xx"} 3"#,
        r#"edgegate_requests_total{route="-",status_class="4xx"} 1"#,
        r#"edgegate_request_duration_seconds_count{route="api"} 3"#,
        "edgegate_inflight_requests 0",
        "edgegate_config_generation 1",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let metrics = gw.metrics().await;
        let missing: Vec<&str> = expected.iter().copied().filter(|line| !metrics.lines().any(|l| l == *line)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "missing {missing:?} in:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.get(gw.admin_url("/nope")).send().await.expect("admin 404").status(), 404);
    // The admin listener is not the proxy: admin paths are not routed.
    assert_eq!(c.get(gw.url("/metrics")).send().await.expect("request").status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_line_per_request_and_can_be_turned_off() {
    let p = pod("svc").await;
    let body = format!("upstreams:\n{}routes: [{{name: r, upstream: svc, public: true}}]\n", group("svc", &[p.addr]));

    let mut on = Gateway::start(&config(&body)).await;
    client().get(on.url("/logged")).header("x-request-id", "log-me-1").send().await.expect("request");
    on.sigterm();
    on.wait_exit(Duration::from_secs(10)).await.expect("exits");
    let line = on
        .stdout()
        .lines()
        .find(|l| l.contains("edgegate::access"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON log line"))
        .expect("an access log line");
    assert_eq!(line["request_id"], "log-me-1");
    assert_eq!(line["path"], "/logged");
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "r");

    let mut off = Gateway::start(&config(&format!("{body}logging: {{access_log: false}}\n"))).await;
    client().get(off.url("/quiet")).send().await.expect("request");
    off.sigterm();
    off.wait_exit(Duration::from_secs(10)).await.expect("exits");
    assert!(!off.stdout().contains("edgegate::access"), "{}", off.stdout());
    assert_eq!(p.requests(), 2);
}
