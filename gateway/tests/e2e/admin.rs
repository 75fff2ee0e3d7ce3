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
        r#"edgegate_request_duration_seconds_count{route="api",status_class="2xx"} 3"#,
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
    // The pod answers after 30 ms: the line tells the pod's time from the whole request's.
    let p = pod_with_delay("svc", Duration::from_millis(30)).await;
    let body = format!("upstreams:\n{}routes: [{{name: r, upstream: svc, public: true}}]\n", group("svc", &[p.addr]));

    let mut on = Gateway::start(&config(&body)).await;
    client().get(on.url("/logged")).header("x-request-id", "log-me-1").send().await.expect("request");
    // Refused before they have a canonical form, these are logged as received: a client's
    // quotes and backslashes must stay inside their JSON strings.
    let hostile = [("/a\"b\\c%ZZ", "x"), ("/a\\..\\b", "x\",\"status\":200,\"route\":\"r")];
    for (path, host) in hostile {
        let refused =
            raw_request(on.addr(), &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")).await;
        assert_eq!(refused.status, 400, "{path} {host}");
    }
    on.sigterm();
    on.wait_exit(Duration::from_secs(10)).await.expect("exits");
    let stdout = on.stdout();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.contains("edgegate::access"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON log line"))
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let line = &lines[0];
    assert_eq!(line["request_id"], "log-me-1");
    assert_eq!(line["path"], "/logged");
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "r");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["target"], "edgegate::access");
    assert_eq!(line["upstream"], p.addr.to_string());
    assert!(line["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{line}");
    assert!(line["duration_us"].is_u64() && line["timestamp"].is_string() && line["trace_id"].is_string(), "{line}");
    let (duration, upstream) = (line["duration_us"].as_u64(), line["upstream_us"].as_u64());
    assert!(upstream.is_some_and(|u| u >= 30_000 && Some(u) <= duration), "{line}");
    for (line, (path, host)) in lines[1..].iter().zip(hostile) {
        assert_eq!(line["path"], path, "{line}");
        assert_eq!(line["host"], host, "{line}");
        assert_eq!(line["status"], 400, "{line}");
        assert_eq!(line["route"], "-", "{line}");
        assert!(line.get("upstream").is_none(), "never reached a pod: {line}");
        assert!(line.get("upstream_us").is_none(), "{line}");
    }

    let mut off = Gateway::start(&config(&format!("{body}logging: {{access_log: false}}\n"))).await;
    client().get(off.url("/quiet")).send().await.expect("request");
    off.sigterm();
    off.wait_exit(Duration::from_secs(10)).await.expect("exits");
    assert!(!off.stdout().contains("edgegate::access"), "{}", off.stdout());
    assert_eq!(p.requests(), 2);
}

/// A log collector that stops reading (a stalled container runtime, a full pipe) must not
/// stall requests: the writer thread blocks on stdout, lines queue up to the bound, the rest
/// are dropped and counted, and every request is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_nobody_reads_drops_and_counts_log_lines_and_requests_are_still_answered() {
    let p = pod("svc").await;
    let (unread, stdout) = std::io::pipe().expect("pipe");
    let gw = Gateway::launch(
        &config(&format!(
            "upstreams:\n{}routes: [{{name: r, upstream: svc, public: true}}]\n",
            group("svc", &[p.addr])
        )),
        Launch { stdout: Some(stdout.into()), ..Launch::default() },
    )
    .await;
    // More lines than the pipe (64 KiB), the writer's buffer (64 KiB) and its queue (16,384
    // lines) hold together: ~330 bytes a line, 16,384 + ~400.
    const CONNECTIONS: usize = 4;
    const EACH: usize = 4_500;
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let addr = gw.addr();
            tokio::spawn(async move {
                let mut ok = 0;
                // A connection is closed after `limits.keepalive_requests` (1,000): a fresh
                // one every 500 requests.
                for _ in 0..EACH / 500 {
                    let mut c = KeepAlive::connect(addr).await;
                    for _ in 0..500 {
                        if c.get("/logged").await == 200 {
                            ok += 1;
                        }
                    }
                }
                ok
            })
        })
        .collect();
    let mut answered = 0;
    for c in clients {
        answered +=
            tokio::time::timeout(Duration::from_secs(120), c).await.expect("requests never stall").expect("client");
    }
    assert_eq!(answered, CONNECTIONS * EACH);
    let metrics = gw.metrics().await;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("edgegate_log_lines_dropped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no edgegate_log_lines_dropped_total in:\n{metrics}"));
    let total = (CONNECTIONS * EACH) as u64;
    assert!(dropped > 0 && dropped < total - 16_384, "dropped {dropped} of {total}");
    drop(unread);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_admin_calls_need_the_token_and_probes_do_not() {
    let p = pod("svc").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("config")).expect("mkdir");
    let token_path = dir.path().join("config/admin.token");
    std::fs::write(&token_path, "first-token-0123456789\n").expect("token");
    let yaml = |extra_route: &str| {
        format!(
            "listeners: [{{name: public, address: \"127.0.0.1:0\"}}]\nadmin: {{address: \"127.0.0.1:0\", token_file: admin.token}}\nruntime: {{threads: 1}}\nupstreams:\n{}routes:\n  - {{name: api, match: {{path_prefix: /api/}}, upstream: svc, public: true}}\n  - {{name: extra, match: {{path: {extra_route}}}, upstream: svc, public: true}}\n",
            group("svc", &[p.addr])
        )
    };
    let gw = Gateway::launch(&yaml("/a"), Launch { dir: Some(dir), no_watch: true, ..Launch::default() }).await;
    let c = client();
    gw.write_config(&yaml("/b"));

    for auth in [None, Some("Bearer wrong-token-0123456789"), Some("first-token-0123456789")] {
        let mut req = c.post(gw.admin_url("/-/reload"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.expect("reload");
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert_eq!(resp.headers()["www-authenticate"], r#"Bearer realm="edgegate-admin""#);
        let purge = c.delete(gw.admin_url("/-/cache?prefix=")).send().await.expect("purge");
        assert_eq!(purge.status(), 401);
    }
    assert_eq!(gw.admin_json("/-/config").await["generation"], 1, "refused calls changed nothing");
    assert_eq!(c.get(gw.url("/b")).send().await.expect("req").status(), 404);
    // Probes, metrics and the config view stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/-/config"] {
        assert_eq!(c.get(gw.admin_url(path)).send().await.expect("probe").status(), 200, "{path}");
    }

    let reload = |token: &'static str| c.post(gw.admin_url("/-/reload")).bearer_auth(token).send();
    let outcome: serde_json::Value =
        reload("first-token-0123456789").await.expect("reload").json().await.expect("JSON");
    assert_eq!(outcome["result"], "applied");
    assert_eq!(c.get(gw.url("/b")).send().await.expect("req").status(), 200);
    let purge = c.delete(gw.admin_url("/-/cache?prefix=")).bearer_auth("first-token-0123456789").send().await;
    assert_eq!(purge.expect("purge").status(), 200);

    // A rotated token file is a config change: the next reload switches tokens.
    std::fs::write(gw.config_path().with_file_name("admin.token"), "second-token-0123456789").expect("rotate");
    let outcome: serde_json::Value =
        reload("first-token-0123456789").await.expect("reload").json().await.expect("JSON");
    assert_eq!(outcome["result"], "applied", "{outcome}");
    assert_eq!(reload("first-token-0123456789").await.expect("reload").status(), 401, "the old token is gone");
    assert_eq!(reload("second-token-0123456789").await.expect("reload").status(), 200);
}
