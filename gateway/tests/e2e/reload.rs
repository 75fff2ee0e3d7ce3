//! Hot reload: by file rewrite, ConfigMap-style `..data` symlink swap, SIGHUP and the
//! admin endpoint; rejected configs change nothing; last-known-good at start; and a
//! reload storm under load loses no request and no connection.

use std::os::unix::fs::symlink;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgegate::pod::Pod;
use nix::sys::signal::Signal;

use crate::support::*;

/// Two valid configs sharing `/api/` and differing in one extra route each.
fn config_with(pod: &Pod, extra_route: &str) -> String {
    config(&format!(
        "upstreams:\n{}routes:\n  - {{name: api, match: {{path_prefix: /api/}}, upstream: svc, public: true}}\n  - {{name: extra, match: {{path: {extra_route}}}, upstream: svc, public: true}}\n",
        group("svc", &[pod.addr])
    ))
}

const WITHIN: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_the_file_reloads() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config_with(&p, "/a")).await;
    assert_eq!(client().get(gw.url("/b")).send().await.expect("req").status(), 404);

    std::fs::write(gw.config_path(), config_with(&p, "/b")).expect("rewrite in place");
    gw.wait_for_status("/b", 200, WITHIN).await;
    assert_eq!(client().get(gw.url("/a")).send().await.expect("req").status(), 404, "the old route is gone");

    let status = gw.admin_json("/-/config").await;
    assert_eq!(status["generation"], 2);
    assert_eq!(status["last_reload"]["trigger"], "watch");
    assert_eq!(status["serving_from"], "file");
    // The accepted config became the last-known-good copy, byte for byte.
    let lkg = std::fs::read_to_string(gw.dir.path().join("state/last-known-good.yaml")).expect("lkg");
    assert_eq!(lkg, config_with(&p, "/b"));

    gw.write_config(&config_with(&p, "/c"));
    gw.wait_for_status("/c", 200, WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_reloads() {
    let p = pod("svc").await;
    // Lay the directory out the way kubelet does: the file is a symlink through `..data`.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config");
    std::fs::create_dir_all(cfg.join("..2026_11_25_10_00_00.1")).expect("mkdir");
    std::fs::write(cfg.join("..2026_11_25_10_00_00.1/edgegate.yaml"), config_with(&p, "/a")).expect("write");
    symlink("..2026_11_25_10_00_00.1", cfg.join("..data")).expect("symlink");
    symlink("..data/edgegate.yaml", cfg.join("edgegate.yaml")).expect("symlink");
    let gw = Gateway::launch("", Launch { dir: Some(dir), keep_config: true, ..Launch::default() }).await;
    gw.wait_for_status("/a", 200, WITHIN).await;

    // kubelet's update: new timestamped dir, `..data_tmp` symlink, atomic rename over `..data`.
    std::fs::create_dir_all(cfg.join("..2026_11_25_10_05_00.2")).expect("mkdir");
    std::fs::write(cfg.join("..2026_11_25_10_05_00.2/edgegate.yaml"), config_with(&p, "/b")).expect("write");
    symlink("..2026_11_25_10_05_00.2", cfg.join("..data_tmp")).expect("symlink");
    std::fs::rename(cfg.join("..data_tmp"), cfg.join("..data")).expect("swap");
    std::fs::remove_dir_all(cfg.join("..2026_11_25_10_00_00.1")).expect("old dir");

    gw.wait_for_status("/b", 200, WITHIN).await;
    assert_eq!(client().get(gw.url("/a")).send().await.expect("req").status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let p = pod("svc").await;
    let gw = Gateway::launch(&config_with(&p, "/a"), Launch { no_watch: true, ..Launch::default() }).await;
    gw.write_config(&config_with(&p, "/b"));
    gw.signal(Signal::SIGHUP);
    gw.wait_for_status("/b", 200, WITHIN).await;
    assert_eq!(gw.admin_json("/-/config").await["last_reload"]["trigger"], "sighup");
    // Without watching, the file change alone did nothing: the signal's was the only
    // reload attempt.
    assert_eq!(reload_attempts(&gw).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_reloads_and_reports_the_outcome() {
    let p = pod("svc").await;
    let gw = Gateway::launch(&config_with(&p, "/a"), Launch { no_watch: true, ..Launch::default() }).await;
    let c = client();

    let same = c.post(gw.admin_url("/-/reload")).send().await.expect("reload");
    assert_eq!(same.status(), 200);
    assert_eq!(same.json::<serde_json::Value>().await.expect("JSON")["result"], "unchanged");

    gw.write_config(&config_with(&p, "/b"));
    let resp = c.post(gw.admin_url("/-/reload")).send().await.expect("reload");
    assert_eq!(resp.status(), 200);
    let outcome: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(outcome["result"], "applied");
    assert_eq!(outcome["generation"], 2);
    // Applied means serving: no polling needed.
    assert_eq!(c.get(gw.url("/b")).send().await.expect("req").status(), 200);
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"edgegate_config_reload_total{result="applied"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"edgegate_config_reload_total{result="unchanged"} 1"#), "{metrics}");
    assert!(metrics.contains("edgegate_config_generation 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configs_change_nothing_and_are_reported() {
    let p = pod("svc").await;
    let good = config_with(&p, "/a");
    let gw = Gateway::launch(&good, Launch { no_watch: true, ..Launch::default() }).await;
    let c = client();
    let hash_before = gw.admin_json("/-/config").await["hash"].clone();

    let bad_configs = [
        ("listeners: [unclosed", "YAML syntax"),
        (
            &*good.replace(
                "upstream: svc, public: true}\n  - {name: extra",
                "upstream: gov-servce, public: true}\n  - {name: extra",
            ),
            r#"routes[0].upstream: unknown upstream "gov-servce""#,
        ),
        (
            &*good.replace(&p.addr.to_string(), "10.42.0.15"),
            r#"upstreams.svc.endpoints[0].address: unparseable address "10.42.0.15""#,
        ),
    ];
    for (n, (bad, expected)) in bad_configs.iter().enumerate() {
        gw.write_config(bad);
        let resp = c.post(gw.admin_url("/-/reload")).send().await.expect("reload");
        assert_eq!(resp.status(), 422);
        let outcome: serde_json::Value = resp.json().await.expect("JSON");
        assert_eq!(outcome["result"], "error");
        let errors = outcome["errors"].to_string();
        assert!(errors.contains(&expected.replace('"', "\\\"")), "{errors}");

        // Old routes keep serving, nothing else moved.
        assert_eq!(c.get(gw.url("/a")).send().await.expect("req").status(), 200);
        let status = gw.admin_json("/-/config").await;
        assert_eq!(status["generation"], 1);
        assert_eq!(status["hash"], hash_before);
        assert!(status["last_error"]["errors"].to_string().contains(&expected.replace('"', "\\\"")), "{status}");
        let metrics = gw.metrics().await;
        let line = format!(r#"edgegate_config_reload_total{{result="error"}} {}"#, n + 1);
        assert!(metrics.lines().any(|l| l == line), "{metrics}");
    }
    // The last-known-good copy is still the good config.
    let lkg = std::fs::read_to_string(gw.dir.path().join("state/last-known-good.yaml")).expect("lkg");
    assert_eq!(lkg, good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_file_reported_by_the_watcher_too() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config_with(&p, "/a")).await;
    gw.write_config("routes: [{name: x, upstream: nowhere}]\n");
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let status = gw.admin_json("/-/config").await;
        if !status["last_error"].is_null() {
            assert_eq!(status["last_error"]["trigger"], "watch");
            assert!(status["last_error"]["errors"].to_string().contains("listeners: missing"), "{status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the watcher never reported the broken file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client().get(gw.url("/a")).send().await.expect("req").status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_from_last_known_good_when_the_file_is_broken() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config_with(&p, "/a")).await;
    let dir = gw.stop().await;
    std::fs::write(dir.path().join("config/edgegate.yaml"), "listeners: [{name: public, address: nope}]\n")
        .expect("break");

    let gw = Gateway::launch("", Launch { dir: Some(dir), keep_config: true, ..Launch::default() }).await;
    assert_eq!(
        client().get(gw.url("/a")).send().await.expect("req").status(),
        200,
        "serves the last-known-good routes"
    );
    let status = gw.admin_json("/-/config").await;
    assert_eq!(status["serving_from"], "last_known_good");
    assert!(status["last_error"]["errors"].to_string().contains("listeners[0].address"), "{status}");
    assert!(gw.metrics().await.lines().any(|l| l == "edgegate_config_last_known_good 1"));
    assert!(gw.stdout().contains("CONFIG FILE UNUSABLE"), "logs loudly");

    // It keeps watching: a valid file takes over again.
    gw.write_config(&config_with(&p, "/b"));
    gw.wait_for_status("/b", 200, WITHIN).await;
    assert_eq!(gw.admin_json("/-/config").await["serving_from"], "file");
    assert!(gw.metrics().await.lines().any(|l| l == "edgegate_config_last_known_good 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_config_and_no_last_known_good_is_a_clear_start_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = run_until_exit(&dir.path().join("missing.yaml"));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no usable config"), "{stderr}");
    assert!(stderr.contains("missing.yaml"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_changes_are_reported_as_restart_required() {
    let p = pod("svc").await;
    let gw = Gateway::launch(&config_with(&p, "/a"), Launch { no_watch: true, ..Launch::default() }).await;
    let moved = config_with(&p, "/b")
        .replace("name: public, address: \"127.0.0.1:0\"", &format!("name: public, address: \"{}\"", closed_port()));
    gw.write_config(&moved);
    let outcome: serde_json::Value =
        client().post(gw.admin_url("/-/reload")).send().await.expect("reload").json().await.expect("JSON");
    assert_eq!(outcome["result"], "applied");
    assert_eq!(outcome["restart_required"], serde_json::json!(["listeners"]), "{outcome}");
    // Routes changed; the old listener keeps serving them.
    assert_eq!(client().get(gw.url("/b")).send().await.expect("req").status(), 200);
    assert_eq!(gw.admin_json("/-/config").await["restart_required"], serde_json::json!(["listeners"]));
    assert!(gw.metrics().await.lines().any(|l| l == "edgegate_config_restart_required 1"));

    // The cache's budget, status header and Redis are fixed at start too: named by field path.
    let cache = format!("{moved}cache: {{memory: 128MiB, status_header: X-Edge-Cache}}\n");
    gw.write_config(&cache);
    let outcome: serde_json::Value =
        client().post(gw.admin_url("/-/reload")).send().await.expect("reload").json().await.expect("JSON");
    assert_eq!(outcome["restart_required"], serde_json::json!(["listeners", "cache.memory", "cache.status_header"]));
    let status = gw.admin_json("/-/config").await;
    assert_eq!(status["restart_required"], serde_json::json!(["listeners", "cache.memory", "cache.status_header"]));
    assert_eq!(
        (status["last_reload"]["trigger"].as_str(), status["last_reload"]["generation"].as_u64()),
        (Some("admin"), Some(3))
    );
}

/// The number of reload attempts so far, whatever their result.
async fn reload_attempts(gw: &Gateway) -> u64 {
    gw.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("edgegate_config_reload_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_files_beside_the_config_trigger_nothing() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config_with(&p, "/a")).await;
    let before = reload_attempts(&gw).await;
    // A log and an editor's scratch file written beside the config, in separate bursts
    // (further apart than the watcher's debounce)...
    let cfg_dir = gw.config_path().parent().expect("dir").to_path_buf();
    for i in 0..3 {
        std::fs::write(cfg_dir.join("gateway.log"), format!("line {i}\n")).expect("log");
        std::fs::write(cfg_dir.join(".edgegate.yaml.swp"), "scratch").expect("swap");
        tokio::time::sleep(edgegate::control::watch::DEBOUNCE * 2).await;
    }
    // ...then a real change. Events are handled in order: by the time it is applied, any
    // reload the unrelated writes caused would have been counted.
    gw.write_config(&config_with(&p, "/b"));
    gw.wait_for_status("/b", 200, WITHIN).await;
    assert_eq!(reload_attempts(&gw).await - before, 1, "only the config change was a reload attempt");
    let status = gw.admin_json("/-/config").await;
    assert_eq!(status["last_attempt"]["result"], "applied");
}

/// Context switches of the gateway's thread named `name` (`/proc/PID/task/*/comm`).
fn thread_switches(pid: u32, name: &str) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            return Some(
                status
                    .lines()
                    .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum(),
            );
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_file_beside_the_config_does_not_wake_the_reload_loop() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config_with(&p, "/a")).await;
    let cfg_dir = gw.config_path().parent().expect("dir").to_path_buf();
    let thread = "BG config-watch";
    let before = thread_switches(gw.pid(), thread).expect("the reload loop's thread");
    // An audit log or access log beside the config: a thousand writes in a second.
    for i in 0..1000 {
        std::fs::write(cfg_dir.join("audit.db-wal"), format!("frame {i}\n")).expect("write");
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(edgegate::control::watch::DEBOUNCE * 2).await;
    let woken = thread_switches(gw.pid(), thread).expect("thread") - before;
    // Its own timers and the admin's scrapes wake it a few times; the writes must not
    // (each one did, once per event, before the watcher's thread filtered them).
    assert!(woken < 100, "the reload loop's thread was switched to {woken} times for 1,000 unrelated writes");
    // And a change to the config itself still reloads.
    gw.write_config(&config_with(&p, "/b"));
    gw.wait_for_status("/b", 200, WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_storm_under_load_loses_nothing() {
    let p = pod("svc").await;
    // No keep-alive limit in sight: a connection closed after its 1,000th request (the
    // default `keepalive_requests`, which a fast run or slow reloads reach) is not a
    // connection a reload dropped.
    let unlimited = "limits: {keepalive_requests: 100000000}\n";
    let a = config_with(&p, "/a") + unlimited;
    let b = config_with(&p, "/b") + unlimited;
    let gw = Gateway::launch(&a, Launch { no_watch: true, ..Launch::default() }).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Four clients, each on one keep-alive connection for the whole run: a dropped
    // connection or a failed request shows up as an error here.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (addr, stop) = (gw.addr(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut conn = KeepAlive::connect(addr).await;
            let mut served = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status = conn.get("/api/permits").await;
                assert_eq!(status, 200, "request {served} failed");
                served += 1;
            }
            served
        }));
    }
    let c = client();
    let (mut applied, mut rejected) = (0, 0);
    for i in 0..110 {
        // 100 valid configs alternating b, a, b, … with an invalid one after every tenth.
        let text = if i % 11 == 10 {
            "routes: [broken"
        } else if applied % 2 == 0 {
            &*b
        } else {
            &*a
        };
        gw.write_config(text);
        let outcome: serde_json::Value =
            c.post(gw.admin_url("/-/reload")).send().await.expect("reload").json().await.expect("JSON");
        match outcome["result"].as_str() {
            Some("applied") => applied += 1,
            Some("error") => rejected += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        total += c.await.expect("client task: no failed request, no dropped connection");
    }
    assert_eq!((applied, rejected), (100, 10));
    assert!(total > 200, "load ran throughout: {total} requests");
    assert_eq!(p.requests() as u32, total, "every request reached the pod exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_state_directory_is_reported_loudly() {
    let p = pod("svc").await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The state directory's path is taken by a file: nothing can be kept there.
    std::fs::write(dir.path().join("state"), "not a directory").expect("write");
    let yaml = config(&format!(
        "upstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}]\n",
        group("svc", &[p.addr])
    ));
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await;
    assert_eq!(client().get(gw.url("/api/x")).send().await.expect("request").status(), 200, "it still serves");
    let ready = client().get(gw.admin_url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.expect("body").contains(r#""state_dir":"unwritable""#));
    assert!(gw.metrics().await.contains("edgegate_state_dir_writable 0"));
    let dir = gw.stop().await;
    let logs = std::fs::read_to_string(dir.path().join("stdout.log")).unwrap_or_default()
        + &std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    assert!(logs.contains("the state directory is not writable"), "{logs}");

    // A writable one says so, and holds the config's copy by the time the gateway reports
    // ready (it is written off the start path, before readiness).
    let gw = Gateway::start(&yaml).await;
    let ready = client().get(gw.admin_url("/readyz")).send().await.expect("readyz");
    assert!(ready.text().await.expect("body").contains(r#""state_dir":"writable""#));
    assert!(gw.metrics().await.contains("edgegate_state_dir_writable 1"));
    let config = gw.config_path();
    let kept = config.parent().and_then(|c| c.parent()).expect("run dir").join("state/last-known-good.yaml");
    assert_eq!(std::fs::read(&kept).expect("the last-known-good copy"), std::fs::read(&config).expect("config"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_known_good_copy_serves_only_the_config_path_it_was_saved_for() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config_with(&p, "/a")).await;
    let dir = gw.stop().await;
    let state = dir.path().join("state");
    let recorded = std::fs::read_to_string(state.join("last-known-good.source")).expect("the copy names its config");
    assert_eq!(recorded, dir.path().join("config/edgegate.yaml").display().to_string());

    // Another config file, broken, pointed at the same state directory.
    let other = dir.path().join("other.yaml");
    std::fs::write(&other, "listeners: [{name: public, address: nope}]\n").expect("write");
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.arg("run").arg("--config").arg(&other).arg("--state-dir").arg(&state).args(extra);
        cmd
    };
    let out = output(&mut run(&[]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("was saved for another config file") && stderr.contains("--any-last-known-good"),
        "{stderr}"
    );
    // With the flag it serves the copy (it would run; check it gets past start-up by
    // asking for the bound ports, then stop it).
    let ports = dir.path().join("other-ports.json");
    /// Stops the gateway this test started even when an assertion fails first.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Stop(
        run(&["--any-last-known-good", "--ports-file", ports.to_str().expect("path")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ports.exists() {
        assert!(child.0.try_wait().expect("wait").is_none(), "exited instead of serving the copy");
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&ports).expect("ports")).expect("JSON");
    let addr = doc["listeners"]["public"].as_str().expect("public").to_owned();
    let ready = format!("http://{}/readyz", doc["admin"].as_str().expect("admin"));
    while !client().get(&ready).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client().get(format!("http://{addr}/a")).send().await.expect("req").status(), 200);
    drop(child);
}
