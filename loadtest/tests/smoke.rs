//! Smoke test of the benchmark scenarios: every scenario runs once for a second at a low
//! rate against the gateway binary (debug build, not pinned), so the scenarios keep
//! working as the gateway changes. It checks what each scenario exists to show — not
//! timing, which is never asserted in tests.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The `edgegate` binary built beside this test (`cargo test --workspace` builds it for the
/// gateway's own tests; built here when this crate's tests run alone).
fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let bin = profile_dir.join("edgegate");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "-q", "-p", "edgegate", "--bin", "edgegate"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "building the edgegate binary failed");
    assert!(bin.is_file(), "no gateway binary at {}", bin.display());
    bin
}

fn errors(result: &Value) -> &serde_json::Map<String, Value> {
    result["errors"].as_object().expect("errors object")
}

#[test]
fn every_scenario_runs_and_shows_what_it_is_for() {
    let out = tempfile::tempdir().expect("tempdir");
    let status = Command::new(env!("CARGO_BIN_EXE_edgegate-loadtest"))
        .args(["scenario", "all", "--smoke", "--gateway"])
        .arg(gateway_binary())
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("running edgegate-loadtest");
    assert!(status.success(), "scenario run failed");
    let read = |name: &str| -> Value {
        let path = out.path().join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).expect("JSON result")
    };

    // proxy, cache-hit and h2: all three servers answered every request, with CPU measured;
    // `proxy` measures the gateway without its audit log as well, and nginx doing the
    // gateway's forwarding work.
    for name in ["proxy", "cache-hit", "h2"] {
        let doc = read(name);
        let servers: Vec<&str> =
            doc["cpu"].as_array().expect("cpu").iter().filter_map(|r| r["server"].as_str()).collect();
        if name == "proxy" {
            assert_eq!(
                servers,
                [
                    "nginx",
                    "haproxy",
                    "edgegate",
                    "edgegate, audit off",
                    "nginx, forwarding like edgegate",
                    "nginx, forwarding, fixed id"
                ],
                "{name}"
            );
        } else {
            assert_eq!(servers, ["nginx", "haproxy", "edgegate"], "{name}");
        }
        for row in doc["cpu"].as_array().expect("cpu") {
            assert!(row["rps"].as_f64() > Some(0.0), "{name}: {row}");
            assert!(row["total_us"].as_f64() > Some(0.0), "{name}: no CPU time read: {row}");
            assert_eq!(row["errors"], 0, "{name}: {row}");
            // One ratio to nginx per run, from that run's own figures; nginx's own are 1.
            let runs = row["vs_first_runs"].as_array().expect("ratios run by run");
            assert_eq!(runs.len() as u64, doc["runs"].as_u64().expect("runs"), "{name}: {row}");
            assert!(runs.iter().all(|r| r.as_f64() > Some(0.0)), "{name}: {row}");
            if row["server"] == "nginx" {
                assert!(runs.iter().all(|r| r.as_f64() == Some(1.0)), "{name}: {row}");
            }
        }
        // The latency table has the pod straight and the three servers; `proxy`'s also the
        // gateway without its audit log, beside the gateway in the same runs.
        let latency_servers: Vec<&str> =
            doc["latency"].as_array().expect("latency").iter().filter_map(|r| r["server"].as_str()).collect();
        let mut expected = vec!["direct to pod", "nginx", "haproxy", "edgegate"];
        if name == "proxy" {
            expected.push("edgegate, audit off");
        }
        if name == "cache-hit" {
            expected.remove(0);
        }
        assert_eq!(latency_servers, expected, "{name}");
        for row in doc["latency"].as_array().expect("latency") {
            let r = &row["result"];
            assert!(r["sent"].as_u64() > Some(0), "{name}: {row}");
            assert_eq!(r["sent"], r["ok"], "{name}: {row}");
            // Every answer took some time once sent; the p99 is split into that and the wait.
            assert!(r["p99_split_ms"]["service"].as_f64() > Some(0.0), "{name}: {row}");
            assert!(r["p99_split_ms"]["queued"].as_f64() >= Some(0.0), "{name}: {row}");
        }
        assert_eq!(doc["env"]["gateway_build"], "debug");
    }

    // policy: citizens get through, anonymous callers are refused with 401.
    let policy = read("policy");
    assert_eq!(policy["cpu_policy"][0]["errors"], 0, "{policy}");
    assert_eq!(policy["anonymous_refused"]["statuses"]["401"], policy["anonymous_refused"]["sent"], "{policy}");
    assert!(errors(&policy["anonymous_refused"]).is_empty(), "{policy}");

    // mixed: every kind of answer appears, each with the status it should have.
    let mixed = read("mixed");
    let statuses = mixed["result"]["statuses"].as_object().expect("statuses");
    for s in ["200", "401", "403"] {
        assert!(statuses.contains_key(s), "no {s} in {statuses:?}");
    }
    assert!(errors(&mixed["result"]).is_empty(), "{mixed}");

    // slow-pod: peak_ewma sends the slow pod less than round robin does.
    let slow = read("slow-pod");
    let share = |i: usize| slow["variants"][i]["share_to_slow_pod"].as_f64().expect("share");
    assert!(share(1) < share(2), "peak_ewma {} vs round_robin {}", share(1), share(2));

    // pod-failure: killing a pod mid-run costs clients nothing (GETs are retried).
    let failure = read("pod-failure");
    assert!(errors(&failure["result"]).is_empty(), "{failure}");

    // reload-storm: reloads applied under load (one every 100 ms for a second, fewer on a
    // slow machine), none failed, no request lost.
    let storm = read("reload-storm");
    assert!(storm["reloads_applied"].as_u64() >= Some(3), "{storm}");
    assert_eq!(storm["reloads_failed"], 0, "{storm}");
    assert!(errors(&storm["storm"]).is_empty(), "{storm}");

    // redis-down: Redis answered while up; with it dead requests still succeed.
    let redis = read("redis-down");
    assert!(redis["phases"][0]["l2_hits"].as_f64() > Some(0.0), "{redis}");
    for phase in redis["phases"].as_array().expect("phases") {
        assert!(errors(&phase["result"]).is_empty(), "{phase}");
        assert_eq!(phase["result"]["sent"], phase["result"]["ok"], "{phase}");
    }

    // startup: the binary came up and proxied; its memory was read.
    let startup = read("startup");
    for variant in startup["variants"].as_array().expect("variants") {
        assert!(variant["startup_ms"]["median"].as_f64() > Some(0.0), "{startup}");
        assert!(variant["idle_rss_mib"]["median"].as_f64() > Some(1.0), "{startup}");
    }
}

/// `edgegate-loadtest issuer DIR` (what `instructions.sh POLICY=1` uses): the JWKS and the
/// shipped policy land in DIR, and the printed token verifies against that JWKS as a
/// citizen's, for the issuer and audience the scenarios configure.
#[test]
fn issuer_writes_what_a_policy_route_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_edgegate-loadtest"))
        .arg("issuer")
        .arg(dir.path())
        .output()
        .expect("running edgegate-loadtest issuer");
    assert!(out.status.success(), "issuer failed: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    let policy = std::fs::read_to_string(dir.path().join("policy/government.rego")).expect("policy written");
    assert!(policy.contains("package government.digital"), "the shipped policy: {policy}");
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("jwks.json")).expect("jwks written"))
            .expect("a JWK set");
    let kid = jsonwebtoken::decode_header(&token).expect("a JWT").kid.expect("kid");
    let jwk = jwks.find(&kid).expect("the token's key is in the JWKS");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_issuer(&["https://id.example.gov.cn"]);
    validation.set_audience(&["zwfw"]);
    let claims = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key"),
        &validation,
    )
    .expect("the token verifies")
    .claims;
    assert_eq!(claims["role"], "citizen");
}

/// The profile-guided build's training (`scripts/build-pgo.sh`): every phase is answered
/// as it should be, every hostile request is refused or canonicalised into a 4xx (never a
/// 2xx: a traversal that reached a route would show as one), and the gateway, stopped with
/// SIGTERM, exits by itself with status 0 — the exit path an instrumented build writes its
/// profile on.
#[test]
fn training_drives_every_kind_of_request_and_the_gateway_exits_cleanly() {
    let output = Command::new(env!("CARGO_BIN_EXE_edgegate-loadtest"))
        .args(["train", "--seconds", "3", "--gateway"])
        .arg(gateway_binary())
        .output()
        .expect("running edgegate-loadtest train");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "training failed: {stderr}");
    let doc: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    for phase in ["http1", "h2"] {
        let p = &doc["phases"][phase];
        assert!(p["sent"].as_u64() > Some(0), "{phase}: {p}");
        assert_eq!(p["sent"], p["ok"], "{phase}: {p}");
        for label in ["cache_hit", "proxied", "denied", "no_token", "form_post", "public"] {
            assert!(p["by_label"][label].as_u64() > Some(0), "{phase}: no {label} request in {p}");
        }
    }
    let hostile = doc["hostile_statuses"].as_object().expect("hostile statuses");
    let total: u64 = hostile.values().filter_map(Value::as_u64).sum();
    assert_eq!(total, 900, "nine hostile requests, a hundred times each: {hostile:?}");
    for status in hostile.keys() {
        assert!(status.starts_with('4'), "a hostile request was answered {status}: {hostile:?}");
    }
}

/// Kills a child process when dropped (a failed assertion must not leave it running).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn handshakes_counts_resumed_connections_and_the_servers_cpu() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    // Built first: the build can wait minutes for another test's, and the pod's time runs
    // from its start.
    let gateway_bin = gateway_binary();
    // A pod to answer 200, on a port it picks, for longer than the test can take (it is
    // stopped with the test).
    let mut pod = Running(
        Command::new(env!("CARGO_BIN_EXE_edgegate-loadtest"))
            .args(["pod", "--count", "1", "--seconds", "3600"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("pod"),
    );
    let mut line = String::new();
    std::io::BufReader::new(pod.0.stdout.take().expect("pod stdout")).read_line(&mut line).expect("pod line");
    let pod_addr = line.trim().strip_prefix("pod listening on http://").expect("pod address").to_owned();
    // A gateway with an HTTPS listener for bench.gov.test.
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["bench.gov.test".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    std::fs::write(dir.path().join("cert.crt"), cert.pem()).expect("cert");
    std::fs::write(dir.path().join("cert.key"), key.serialize_pem()).expect("key");
    let config = dir.path().join("gw.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [{{name: public, address: \"127.0.0.1:0\", tls: {{certificates: [{{cert: cert.crt, key: cert.key}}]}}}}]\n\
             admin: {{address: \"127.0.0.1:0\"}}\n\
             limits: {{new_connections_per_client: {{rate: 100000, burst: 100000}}}}\n\
             upstreams: {{pods: {{endpoints: [{{address: \"{pod_addr}\"}}]}}}}\n\
             routes: [{{name: r, upstream: pods, public: true}}]\n"
        ),
    )
    .expect("config");
    let ports = dir.path().join("ports.json");
    let gateway = Running(
        Command::new(&gateway_bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--ports-file")
            .arg(&ports)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("gateway"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let listener = loop {
        if let Some(doc) = std::fs::read_to_string(&ports).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
            break doc["listeners"]["public"].as_str().expect("listener address").to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "the gateway never wrote its ports");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let run = |extra: &[&str]| -> Value {
        let out = dir.path().join("handshakes.json");
        let status = Command::new(env!("CARGO_BIN_EXE_edgegate-loadtest"))
            .args(["handshakes", "--addr", &listener, "--sni", "bench.gov.test", "--clients", "5"])
            .args(["--connections", "20", "--server-pid", &gateway.0.id().to_string()])
            .args(extra)
            .arg("--json")
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("handshakes");
        assert!(status.success(), "handshakes {extra:?} failed");
        serde_json::from_str(&std::fs::read_to_string(&out).expect("result")).expect("JSON")
    };
    for extra in [&[][..], &["--tls12"][..]] {
        let resumed = run(extra);
        assert_eq!(resumed["resumed"], 20, "{extra:?}: every returning client resumes: {resumed}");
        assert_eq!((resumed["failed"].clone(), resumed["not_200"].clone()), (0.into(), 0.into()), "{resumed}");
        assert!(resumed["server_cpu_us_per_connection"].as_f64().is_some(), "the server's CPU read: {resumed}");
        let times = &resumed["handshake_ms"];
        let at = |q: &str| times[q].as_f64().unwrap_or(-1.0);
        assert!(
            0.0 < at("p50") && at("p50") <= at("p99") && at("p99") <= at("max"),
            "the handshake times, ordered: {resumed}"
        );
    }
    let full = run(&["--no-resume"]);
    assert_eq!((full["resumed"].clone(), full["full"].clone()), (0.into(), 20.into()), "{full}");
    drop(gateway);
    drop(pod);
}
