//! Load balancing against real pods: a slow pod is avoided by peak-EWMA (and not by
//! round robin), a killed pod costs no idempotent request and is used again when it
//! returns, 503s are retried elsewhere, and active health checks take pods out and back.

use std::time::{Duration, Instant};

use edgegate::pod::{Pod, PodSpec};

use crate::support::*;

fn upstream_yaml(name: &str, pods: &[&Pod], extra: &str) -> String {
    let eps: Vec<String> = pods.iter().map(|p| format!("{{address: \"{}\"}}", p.addr)).collect();
    format!(
        "upstreams:\n  {name}:\n    endpoints: [{}]\n{extra}routes: [{{name: r, upstream: {name}, public: true}}]\n",
        eps.join(", ")
    )
}

/// Sends GETs at a fixed rate (open loop: each request starts on schedule whatever the
/// others are doing) for `duration`; returns the statuses (0 for transport errors).
async fn fixed_rate(url: String, rate: u32, duration: Duration) -> Vec<u16> {
    let c = client();
    let interval = Duration::from_secs(1) / rate;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut n = 0u32;
    while started.elapsed() < duration {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move { c.get(url).send().await.map_or(0, |r| r.status().as_u16()) }));
        n += 1;
        let next = started + interval * n;
        tokio::time::sleep_until(next.into()).await;
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap_or(0));
    }
    statuses
}

async fn slow_pod_share(policy: &str) -> (usize, usize) {
    let mut pods = Vec::new();
    for i in 0..4 {
        let delay = if i == 3 { Duration::from_millis(200) } else { Duration::ZERO };
        let spec = PodSpec { service: "svc".into(), name: format!("svc-{i}"), delay };
        pods.push(Pod::start("127.0.0.1:0".parse().expect("addr"), spec).await.expect("pod"));
    }
    let refs: Vec<&Pod> = pods.iter().collect();
    let gw =
        Gateway::start(&config(&upstream_yaml("svc", &refs, &format!("    balancer: {{policy: {policy}}}\n")))).await;
    let statuses = fixed_rate(gw.url("/api/x"), 100, Duration::from_secs(3)).await;
    assert!(statuses.iter().all(|&s| s == 200), "{policy}: every request succeeds");
    (pods[3].requests(), pods.iter().map(|p| p.requests()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_starves_the_slow_pod_and_round_robin_does_not() {
    let (slow, total) = slow_pod_share("peak_ewma").await;
    assert!(total >= 250, "{total}");
    // Round robin sends 25 %; P2C over peak-EWMA sends a few while it learns the pod is slow
    // (more when two shared cores are busy with the rest of the suite).
    assert!(slow * 100 <= total * 5, "peak_ewma sent {slow} of {total} requests to the +200 ms pod");

    let (slow, total) = slow_pod_share("round_robin").await;
    assert!(slow * 100 >= total * 20, "round_robin sent only {slow} of {total} to the slow pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pod_costs_no_request_and_is_used_again_when_back() {
    let a = pod("svc").await;
    let b = pod("svc").await;
    let victim = pod("svc").await;
    let victim_addr = victim.addr;
    let extra = "    outlier: {consecutive_failures: 2, base_ejection_time: 300ms, max_ejection_time: 1s}\n    health: {path: /healthz, interval: 100ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1}\n";
    let gw = Gateway::start(&config(&upstream_yaml("svc", &[&a, &b, &victim], extra))).await;

    let load = tokio::spawn(fixed_rate(gw.url("/api/x"), 100, Duration::from_secs(4)));
    let deadline = Instant::now() + Duration::from_secs(3);
    while victim.requests() == 0 {
        assert!(Instant::now() < deadline, "the victim never served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(victim); // listener and connections gone: refused and reset
                  // The scenario: the pod stays down for a while under load.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let back =
        Pod::start(victim_addr, PodSpec { service: "svc".into(), name: "svc-back".into(), delay: Duration::ZERO })
            .await
            .expect("restart on the same address");
    let statuses = load.await.expect("load");
    let failed = statuses.iter().filter(|&&s| s != 200).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} idempotent requests failed: {:?}",
        statuses.len(),
        statuses.iter().filter(|&&s| s != 200).collect::<Vec<_>>()
    );
    assert!(back.requests() > 0, "the pod that came back is used again");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!(
            "edgegate_endpoint_healthy{{upstream=\"svc\",endpoint=\"{victim_addr}\",locality=\"local\"}} 1"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_503_elsewhere_for_idempotent_requests_only() {
    let failing = pod("svc").await;
    failing.force_status(Some(503));
    let fine = pod("svc").await;
    // Round robin: with two endpoints P2C keeps choosing whichever looks faster, and this
    // test is about retries, so requests must keep reaching the failing pod.
    let extra = "    balancer: {policy: round_robin}\n    outlier: {consecutive_failures: 1000}\n    retry: {attempts: 1, on_status: [503], min_per_second: 1000}\n";
    let gw = Gateway::start(&config(&upstream_yaml("svc", &[&failing, &fine], extra))).await;
    let c = client();
    for _ in 0..20 {
        let r = c.get(gw.url("/api/x")).send().await.expect("GET");
        assert_eq!(r.status(), 200, "GETs that hit the failing pod are retried on the other");
    }
    assert!(failing.requests() > 0, "the failing pod was tried");
    let mut posts_failed = 0;
    for _ in 0..20 {
        let r = c.post(gw.url("/api/x")).body("form").send().await.expect("POST");
        posts_failed += usize::from(r.status() == 503);
    }
    assert_eq!(posts_failed, 10, "every other POST reached the failing pod and got its 503: not replayed");
    let metrics = gw.metrics().await;
    let retries: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("edgegate_upstream_retries_total{upstream=\"svc\"} "))
        .and_then(|v| v.parse().ok())
        .expect("retries metric");
    assert_eq!(retries as usize, failing.requests() - posts_failed, "one retry per GET that hit the failing pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_a_pod_out_and_bring_it_back() {
    let a = pod("svc").await;
    let b = pod("svc").await;
    let extra =
        "    health: {path: /healthz, interval: 100ms, timeout: 100ms, healthy_threshold: 2, unhealthy_threshold: 2}\n";
    let gw = Gateway::start(&config(&upstream_yaml("svc", &[&a, &b], extra))).await;
    let down_line =
        format!("edgegate_endpoint_active_down{{upstream=\"svc\",endpoint=\"{}\",locality=\"local\"}} 1", a.addr);
    let up_line = down_line.replace("} 1", "} 0");

    a.set_healthy(false);
    wait_for_metric(&gw, &down_line).await;
    let before = a.requests();
    let c = client();
    for _ in 0..30 {
        assert_eq!(c.get(gw.url("/api/x")).send().await.expect("req").status(), 200);
    }
    assert_eq!(a.requests(), before, "no traffic to a pod failing its checks");
    assert!(a.health_checks() >= 2);

    a.set_healthy(true);
    wait_for_metric(&gw, &up_line).await;
    for _ in 0..60 {
        assert_eq!(c.get(gw.url("/api/x")).send().await.expect("req").status(), 200);
    }
    assert!(a.requests() > before, "traffic returns once checks pass");
}

async fn wait_for_metric(gw: &Gateway, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.metrics().await.lines().any(|l| l == line) {
        assert!(Instant::now() < deadline, "metric {line:?} never appeared:\n{}", gw.metrics().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_added_by_reload_takes_its_share_at_once() {
    // Scale-up: two pods serve; a third is added to the group by a reload. Requests go one
    // at a time (nothing in flight), so only the latency estimates decide the picks.
    let a = pod("svc").await;
    let b = pod("svc").await;
    let newcomer = pod("svc").await;
    let gw =
        Gateway::launch(&config(&upstream_yaml("svc", &[&a, &b], "")), Launch { no_watch: true, ..Launch::default() })
            .await;
    let c = client();
    // Serving for a while brings the peers' estimates down from default_rtt (with the
    // default decay of 10 s, by 14 % in 1.5 s; after minutes of serving, a hundredfold).
    let serving = Instant::now();
    while serving.elapsed() < Duration::from_millis(1500) {
        assert_eq!(c.get(gw.url("/api/x")).send().await.expect("req").status(), 200);
    }
    gw.write_config(&config(&upstream_yaml("svc", &[&a, &b, &newcomer], "")));
    let reload = c.post(gw.admin_url("/-/reload")).send().await.expect("reload");
    assert_eq!(reload.json::<serde_json::Value>().await.expect("JSON")["result"], "applied");
    for _ in 0..300 {
        assert_eq!(c.get(gw.url("/api/x")).send().await.expect("req").status(), 200);
    }
    // Its even share is 100. Started at default_rtt (30 ms) beside peers whose estimates
    // had come down, it lost every pick it was in and served none.
    assert!(newcomer.requests() >= 50, "the added pod served {} of 300", newcomer.requests());
}
