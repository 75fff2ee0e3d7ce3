//! The audit trail through the real gateway: one record per request in a real SQLite
//! file, checked with `edgegate audit verify` and edited with the `sqlite3` client; a
//! failing log makes the shipped policy refuse citizens until it recovers; records are
//! forwarded to a real HTTP collector exactly as committed, across an outage and a
//! `kill -9`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;

use crate::support::*;

/// Polls the gateway's metrics until `name` reaches `at_least`.
/// What the gateway logs when its audit log lies in a directory watched for config changes.
const WATCHED_WARNING: &str = "the audit log is in a directory watched for config changes";

async fn wait_metric(gw: &Gateway, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = metric(&gw.metrics().await, name);
        if v >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {v}, wanted ≥ {at_least}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn edgegate(args: &[&str]) -> (i32, String, String) {
    let out = output(Command::new(BIN).args(args));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn export(db: &Path) -> Vec<serde_json::Value> {
    let (code, out, err) = edgegate(&["audit", "export", "--db", db.to_str().expect("path")]);
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

fn keygen(key: &Path) -> (PathBuf, PathBuf) {
    let (code, _, err) = edgegate(&["audit", "keygen", "--out", key.to_str().expect("path")]);
    assert_eq!(code, 0, "{err}");
    (key.to_path_buf(), PathBuf::from(format!("{}.pub", key.display())))
}

const ROUTES: &str =
    "  - {name: services, match: {path_prefix: /api/}, upstream: svc, policy: data.government.digital.allow}
  - {name: limited, match: {path_prefix: /limited/}, upstream: svc, public: true, rate_limit: {rate: 1, burst: 1}}
  - {name: cached, match: {path_prefix: /cached/}, upstream: svc, public: true, cache: {ttl: 60s}}
  - {name: broken, match: {path_prefix: /broken/}, upstream: dead, public: true}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_recorded_and_the_chain_shows_edits() {
    let issuer = Issuer::new();
    let p = pod("svc").await;
    let dir = policy_dir(&issuer);
    let (_, public) = keygen(&dir.path().join("config/audit.key"));
    let yaml = policy_yaml(
        BEHIND_TLS_LISTENER,
        p.addr,
        ROUTES,
        "audit: {db: audit.db, node: edge-test-1, signing_key: audit.key, checkpoint_records: 3}\n",
    )
    .replace("upstreams:\n", &format!("upstreams:\n  dead: {{endpoints: [{{address: \"{}\"}}]}}\n", closed_port()));
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await;
    let c = client();
    let citizen = issuer.token(Algorithm::ES256, serde_json::json!({"sub": "citizen-7"}));
    let admin = issuer.token(Algorithm::ES256, serde_json::json!({"role": "admin"}));
    let mut expect: Vec<(&str, u16, &str)> = Vec::new();
    let send = |path: &str, token: Option<&str>| get_status(&c, gw.url(path), token, None);
    let traced = c
        .get(gw.url("/api/permits?id=42&name=wang"))
        .bearer_auth(&citizen)
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .send()
        .await
        .expect("request");
    assert_eq!(traced.status(), 200);
    traced.bytes().await.expect("body");
    expect.push(("services", 200, "allowed"));
    assert_eq!(send("/api/permits", Some(&admin)).await, 403);
    expect.push(("services", 403, "denied"));
    assert_eq!(send("/api/permits", None).await, 401);
    expect.push(("services", 401, "unauthenticated"));
    assert_eq!(send("/limited/a", None).await, 200);
    expect.push(("limited", 200, "public"));
    assert_eq!(send("/limited/a", None).await, 429);
    expect.push(("limited", 429, "public"));
    assert_eq!(send("/cached/x", None).await, 200);
    expect.push(("cached", 200, "public"));
    assert_eq!(send("/cached/x", None).await, 200);
    expect.push(("cached", 200, "public"));
    assert_eq!(send("/broken/x", None).await, 502);
    expect.push(("broken", 502, "public"));
    assert_eq!(send("/nowhere", None).await, 404);
    expect.push(("", 404, ""));

    wait_metric(&gw, "edgegate_audit_records_written_total", expect.len() as f64).await;
    let db = gw.dir.path().join("config/audit.db");
    // Beside the config, in the directory watched for config changes: the operator is told.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.stdout().lines().any(|l| l.contains(WATCHED_WARNING) && l.contains("config/audit.db")) {
        assert!(Instant::now() < deadline, "no warning about the audit log's place: {}", gw.stdout());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = export(&db);
    assert_eq!(records.len(), expect.len(), "{records:#?}");
    for (i, (r, (route, status, outcome))) in records.iter().zip(&expect).enumerate() {
        assert_eq!(r["seq"], i as u64 + 1, "{r}");
        assert_eq!((r["route"].as_str(), r["status"].as_u64()), (Some(*route), Some(u64::from(*status))), "{r}");
        assert_eq!(r["outcome"], *outcome, "{r}");
        assert_eq!(r["node"], "edge-test-1");
        assert_eq!(r["client_ip"], "127.0.0.1");
        assert!(r["request_id"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(r["config"].as_str().is_some_and(|h| h.len() >= 16), "config fingerprint: {r}");
        let trace = r["trace_id"].as_str().unwrap_or_default();
        assert!(trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()), "a trace id on every record: {r}");
    }
    assert_eq!(records[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "the client's trace is recorded");
    assert_ne!(records[1]["trace_id"], records[2]["trace_id"], "a request without one starts its own");
    let first = &records[0];
    assert_eq!(first["user"], "citizen-7");
    assert_eq!(first["rule"], "data.government.digital.allow");
    assert_eq!(first["query"], "id=REDACTED&name=REDACTED", "query values are redacted");
    assert_eq!(first["path"], "/api/permits");
    assert_eq!(first["upstream"], p.addr.to_string());
    assert!(first["bytes"].as_u64().is_some_and(|b| b > 0));
    assert_eq!((records[5]["cache"].as_str(), records[6]["cache"].as_str()), (Some("miss"), Some("hit")));
    assert_eq!(records[6]["upstream"], "", "a hit is served without an upstream");
    assert_eq!(records[1]["user"], "citizen-42", "a verified caller is named also when denied");
    assert_eq!(records[2]["user"], "", "no token, no user");

    // Verify once the gateway stopped; then with the sqlite3 client: edit, delete, swap.
    let _dir = gw.stop().await;
    let (db_s, key_s) = (db.to_str().expect("path"), public.to_str().expect("path"));
    let (code, out, err) = edgegate(&["audit", "verify", "--db", db_s, "--key", key_s]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: records 1..=9"), "{out}");
    // Export by time: an age, an RFC 3339 time, and a value that is neither.
    let lines = |since: &str| {
        let (code, out, err) = edgegate(&["audit", "export", "--db", db_s, "--since", since]);
        assert_eq!(code, 0, "{err}");
        out.lines().count()
    };
    assert_eq!(lines("1h"), 9);
    assert_eq!(lines("2999-01-01T00:00:00Z"), 0);
    let (code, _, err) = edgegate(&["audit", "export", "--db", db_s, "--since", "yesterday"]);
    assert_eq!(code, 2);
    assert!(err.contains("expected an RFC 3339 time"), "{err}");
    let sqlite = |sql: &str, db: &Path| {
        let out = output(Command::new("sqlite3").arg(db).arg(sql));
        assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
    };
    let scratch = tempfile::tempdir().expect("tempdir");
    let fresh = |name: &str| {
        let copy = scratch.path().join(name);
        std::fs::copy(&db, &copy).expect("copy the log");
        copy
    };
    // The log holds its records in rows, as many as each commit wrote: an edit is named by
    // the first record of its row (the hash covers the row as a whole).
    let (row_2, row_3, row_5) = (row_of(&db, 2), row_of(&db, 3), row_of(&db, 5));
    for (name, sql, bad) in [
        (
            "edited.db",
            "UPDATE record_rows SET records = json_set(records, '$[' || (2 - first_seq) || '][11]', 200) \
             WHERE 2 BETWEEN first_seq AND last_seq;",
            format!("record {row_2}:"),
        ),
        (
            "deleted.db",
            "UPDATE record_rows SET records = json_remove(records, '$[' || (5 - first_seq) || ']') \
             WHERE 5 BETWEEN first_seq AND last_seq;",
            format!("record {row_5}:"),
        ),
        (
            "moved.db",
            "UPDATE record_rows SET first_seq = first_seq + 100, last_seq = last_seq + 100 \
             WHERE 3 BETWEEN first_seq AND last_seq;",
            format!("expected record {row_3} before it"),
        ),
        // Caught up to the last checkpoint (every 3 records or at the end of a batch).
        (
            "truncated.db",
            "DELETE FROM record_rows WHERE last_seq = (SELECT MAX(last_seq) FROM record_rows);",
            "records were deleted from the end".to_owned(),
        ),
    ] {
        let copy = fresh(name);
        sqlite(sql, &copy);
        let (code, _, err) = edgegate(&["audit", "verify", "--db", copy.to_str().expect("path"), "--key", key_s]);
        assert_eq!(code, 1, "{name} must fail verification: {err}");
        assert!(err.contains(&bad), "{name}: expected {bad:?} in {err}");
    }
    // A key that is not the node's fails the checkpoints.
    let (_, other) = keygen(&scratch.path().join("other.key"));
    let (code, _, err) = edgegate(&["audit", "verify", "--db", db_s, "--key", other.to_str().expect("path")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("signature"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_log_refuses_citizens_until_it_recovers() {
    let issuer = Issuer::new();
    let p = pod("svc").await;
    p.record_targets();
    let yaml = policy_yaml(
        BEHIND_TLS_LISTENER,
        p.addr,
        "  - {name: services, match: {path_prefix: /api/}, upstream: svc, policy: data.government.digital.allow}\n",
        "audit: {db: audit.db}\n",
    );
    let gw = Gateway::launch(&yaml, Launch { dir: Some(policy_dir(&issuer)), ..Launch::default() }).await;
    let citizen = issuer.token(Algorithm::ES256, serde_json::json!({}));
    let get = |path: &'static str| {
        let req = client().get(gw.url(path)).bearer_auth(&citizen);
        async move { req.send().await.expect("request").status().as_u16() }
    };
    assert_eq!(get("/api/before").await, 200);
    wait_metric(&gw, "edgegate_audit_records_written_total", 1.0).await;

    // The disk is "full": the gateway may not grow any file.
    let pid = gw.pid().to_string();
    let prlimit = |limit: &str| {
        let out = output(Command::new("prlimit").arg(format!("--fsize={limit}")).arg("--pid").arg(&pid));
        assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
    };
    // The soft limit only: lifting it again needs no privilege.
    prlimit("1:");
    // This request was decided while the sink was healthy; its record cannot be committed.
    assert_eq!(get("/api/during").await, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&gw.metrics().await, "edgegate_audit_sink_healthy") != 0.0 {
        assert!(Instant::now() < deadline, "the sink never reported failing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = gw.admin_json("/-/config").await;
    assert_eq!(status["audit"]["accepting"], false, "{status}");
    assert!(status["audit"]["last_error"].as_str().is_some_and(|e| e.contains("commit failed")), "{status}");
    let ready = client().get(gw.admin_url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200, "still ready: public routes are served");
    assert!(ready.text().await.expect("body").contains(r#""audit":"failing""#));
    // Citizens are refused rather than served unaudited; the pod hears nothing.
    for _ in 0..3 {
        assert_eq!(get("/api/refused").await, 403);
    }
    assert!(!p.targets().iter().any(|t| t == "/api/refused"), "{:?}", p.targets());

    // Space again: it recovers by itself, and nothing queued meanwhile was lost.
    prlimit("unlimited:");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if get("/api/after").await == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "citizens never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = gw.stop().await;
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let logs = read("stdout.log") + &read("stderr.log");
    // The failure's own line went to the same size-limited log file and is lost; the
    // recovery line names it.
    let recovered = logs.lines().find(|l| l.contains("audit log recovered")).expect("a line says it recovered");
    assert!(recovered.contains("commit failed"), "and why it failed: {recovered}");
    let db = dir.path().join("config/audit.db");
    let records = export(&db);
    let paths: Vec<&str> = records.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(&paths[..2], ["/api/before", "/api/during"], "{paths:?}");
    assert_eq!(paths.iter().filter(|p| **p == "/api/refused").count(), 3, "refusals are audited too: {paths:?}");
    let (code, out, err) = edgegate(&["audit", "verify", "--db", db.to_str().expect("path")]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A collector like the centre's: takes gzip JSON lines, answers `status`.
struct Collector {
    status: Arc<AtomicU16>,
    /// How many times each (node, seq) arrived.
    seen: Arc<Mutex<BTreeMap<(String, u64), u32>>>,
}

impl Collector {
    async fn start_on(addr: SocketAddr) -> Collector {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind collector");
        let status = Arc::new(AtomicU16::new(200));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let (st, sn) = (Arc::clone(&status), Arc::clone(&seen));
        serve_posts(listener, move |head, body| {
            let status = st.load(Ordering::Relaxed);
            if status == 200 {
                assert!(head.contains("content-encoding: gzip"), "{head}");
                let mut text = String::new();
                std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)
                    .expect("gzip JSON lines");
                let mut seen = sn.lock().expect("lock");
                for line in text.lines() {
                    let r: serde_json::Value = serde_json::from_str(line).expect("JSON line");
                    let key = (r["node"].as_str().expect("node").to_owned(), r["seq"].as_u64().expect("seq"));
                    *seen.entry(key).or_insert(0) += 1;
                }
            }
            status
        });
        Collector { status, seen }
    }

    fn seqs(&self) -> Vec<u64> {
        self.seen.lock().expect("lock").keys().map(|(_, s)| *s).collect()
    }
}

async fn wait_delivered(collector: &Collector, upto: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while collector.seqs() != (1..=upto).collect::<Vec<_>>() {
        assert!(Instant::now() < deadline, "collector has {:?}, wanted 1..={upto}", collector.seqs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A collector URL that answers a redirect has not taken the batch: a `301` or `302` to a
/// POST is followed as a GET without the body, and whatever answers that GET with a 200 (a
/// status page, a load balancer's landing page) would have the node count records as
/// delivered that no collector ever received. The forwarder follows no redirect: the batch
/// stays, the failure is counted and logged with where the redirect leads, and once the
/// URL answers itself the records arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_redirects_has_not_taken_the_batch() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // What the URL answers: a redirect to /landing, or 200 once `moved` is cleared. Every
    // request line seen, and the records of every POST that got a 200.
    let moved = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let received = Arc::new(Mutex::new(0usize));
    let (m, l, r) = (Arc::clone(&moved), Arc::clone(&lines), Arc::clone(&received));
    serve_http(listener, move |head, body| {
        let line = head.lines().next().unwrap_or_default().to_owned();
        l.lock().expect("lock").push(line.clone());
        if line.starts_with("post /ingest") && m.load(Ordering::Relaxed) {
            return "HTTP/1.1 301 Moved Permanently\r\nlocation: /landing\r\ncontent-length: 0\r\n\r\n".into();
        }
        if line.starts_with("post /ingest") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)
                .expect("gzip JSON lines");
            *r.lock().expect("lock") += text.lines().count();
        }
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".into()
    });
    let forward =
        format!("db: audit.db, node: edge-rd, forward: {{url: \"http://{addr}/ingest\", batch: 10, interval: 100ms}}");
    let (_pod, gw) = audited_gateway(&forward).await;
    answered(&gw, 5).await;
    wait_metric(&gw, "edgegate_audit_forward_errors_total", 2.0).await;
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "edgegate_audit_records_forwarded_total"), 0.0, "nothing counts as delivered");
    assert_eq!(metric(&metrics, "edgegate_audit_forward_lag_records"), 5.0);
    let seen = lines.lock().expect("lock").clone();
    assert!(seen.iter().all(|l| l.starts_with("post /ingest")), "no redirect followed: {seen:?}");
    assert!(gw.stdout().contains("/landing"), "the log says where the redirect leads:\n{}", gw.stdout());

    // The URL answers itself again: the same records arrive, once each.
    moved.store(false, Ordering::Relaxed);
    wait_metric(&gw, "edgegate_audit_records_forwarded_total", 5.0).await;
    assert_eq!(*received.lock().expect("lock"), 5);
}

/// A collector behind basic auth: the `user:password@` of `audit.forward.url` is sent as
/// the `Authorization` header, and no log line repeats the password — not the failures
/// (the collector answering 503 at first), not the recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collectors_password_in_the_url_is_sent_and_never_logged() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let status = Arc::new(AtomicU16::new(503));
    let heads = Arc::new(Mutex::new(Vec::<String>::new()));
    let (st, hs) = (Arc::clone(&status), Arc::clone(&heads));
    serve_posts(listener, move |head, _| {
        hs.lock().expect("lock").push(head.to_owned());
        st.load(Ordering::Relaxed)
    });
    let forward = format!("db: audit.db, forward: {{url: \"http://edge:s3cret-pw@{addr}/ingest\", interval: 100ms}}");
    let (_pod, gw) = audited_gateway(&forward).await;
    answered(&gw, 3).await;
    wait_metric(&gw, "edgegate_audit_forward_errors_total", 1.0).await;
    status.store(200, Ordering::Relaxed);
    wait_metric(&gw, "edgegate_audit_records_forwarded_total", 3.0).await;
    // `edge:s3cret-pw` in base64 (the head is lower-cased).
    let basic = "authorization: basic zwrnztpzm2nyzxqtchc=".to_owned();
    let heads = heads.lock().expect("lock").clone();
    assert!(heads.iter().all(|h| h.contains(&basic)), "every POST carries the credential: {heads:?}");
    let log = gw.stdout();
    assert!(log.contains("collector http://…@") && log.contains("503"), "the failure is logged:\n{log}");
    assert!(!log.contains("s3cret-pw"), "the password is never logged:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_collector_after_an_outage_and_a_kill() {
    let p = pod("svc").await;
    // The collector's address is reserved, then left closed: the link to the centre is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let yaml = config(&format!(
        "upstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}]\naudit: {{db: audit.db, node: edge-fw, forward: {{url: \"http://{port}/ingest\", batch: 7, interval: 100ms}}}}\n",
        group("svc", &[p.addr])
    ));
    let gw = Gateway::start(&yaml).await;
    let c = client();
    for i in 0..20 {
        assert_eq!(c.get(gw.url(&format!("/r/{i}"))).send().await.expect("request").status(), 200);
    }
    wait_metric(&gw, "edgegate_audit_records_written_total", 20.0).await;
    wait_metric(&gw, "edgegate_audit_forward_errors_total", 1.0).await;
    // The lag stays current while the forwarder backs off (it is not the forwarder's last look).
    wait_metric(&gw, "edgegate_audit_forward_lag_records", 20.0).await;
    assert_eq!(metric(&gw.metrics().await, "edgegate_audit_forward_lag_records"), 20.0);

    let lag_then = metric(&gw.metrics().await, "edgegate_audit_forward_lag_seconds");

    // The centre comes back, first refusing (503: not acknowledged), then accepting.
    let collector = Collector::start_on(port).await;
    collector.status.store(503, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(collector.seqs().is_empty());
    // The age grows with the clock, not in steps at the forwarder's looks (which back off
    // to 2 s and more here) — nor only while a writer happens to be awake on an idle node.
    let lag_now = metric(&gw.metrics().await, "edgegate_audit_forward_lag_seconds");
    assert!(lag_now >= lag_then + 1.4, "lag {lag_then} s, then 1.5 s later {lag_now} s");
    collector.status.store(200, Ordering::Relaxed);
    wait_delivered(&collector, 20).await;
    wait_metric(&gw, "edgegate_audit_records_forwarded_total", 20.0).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&gw.metrics().await, "edgegate_audit_forward_lag_records") != 0.0 {
        assert!(Instant::now() < deadline, "the lag never fell to 0 after delivery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&gw.metrics().await, "edgegate_audit_forward_lag_seconds"), 0.0);

    // More traffic, then kill -9 mid-run: committed records survive and are forwarded
    // after the restart, none lost, the chain intact.
    for i in 0..15 {
        assert_eq!(c.get(gw.url(&format!("/s/{i}"))).send().await.expect("request").status(), 200);
    }
    wait_metric(&gw, "edgegate_audit_records_written_total", 35.0).await;
    let dir = gw.kill().await;
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await;
    for i in 0..5 {
        assert_eq!(c.get(gw.url(&format!("/t/{i}"))).send().await.expect("request").status(), 200);
    }
    wait_delivered(&collector, 40).await;
    let dup = collector.seen.lock().expect("lock").values().filter(|n| **n > 1).count();
    assert!(dup <= 7, "at-least-once: at most the batch in flight at the kill is sent twice, got {dup}");
    assert!(collector.seen.lock().expect("lock").keys().all(|(node, _)| node == "edge-fw"));
    let dir = gw.stop().await;
    let db = dir.path().join("config/audit.db");
    let (code, out, err) = edgegate(&["audit", "verify", "--db", db.to_str().expect("path")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("records 1..=40"), "{out}");
}

/// A gateway with one public route to a pod of its own, its audit log configured by `audit`
/// (the inside of the `audit:` map). The pod is returned to be kept alive.
async fn audited_gateway(audit: &str) -> (edgegate::pod::Pod, Gateway) {
    let p = pod("svc").await;
    let yaml = config(&format!(
        "upstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}]\naudit: {{{audit}}}\n",
        group("svc", &[p.addr])
    ));
    (p, Gateway::start(&yaml).await)
}

/// `n` requests (`/r/0`, `/r/1`, …) answered by `gw`, and their records committed.
async fn answered(gw: &Gateway, n: usize) {
    let c = client();
    for i in 0..n {
        assert_eq!(c.get(gw.url(&format!("/r/{i}"))).send().await.expect("request").status(), 200);
    }
    wait_metric(gw, "edgegate_audit_records_written_total", n as f64).await;
}

/// Times each of the gateway's threads named `name` has been scheduled (the third field of
/// `/proc/PID/task/TID/schedstat`), summed.
fn times_scheduled(pid: u32, name: &str) -> u64 {
    let mut n = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir").flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).expect("schedstat");
            n += stat.split_whitespace().nth(2).and_then(|v| v.parse::<u64>().ok()).expect("run count");
        }
    }
    n
}

// An idle gateway's audit writers sleep until there is something to write — before, each
// woke every 10 ms (~200 wake-ups a second between them, each costing tens of microseconds
// on a virtual machine) — and the first record after an idle spell wakes them at once: it
// is committed within the commit interval, not after a safety-net timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_audit_writers_sleep_and_the_next_record_wakes_them() {
    let (_pod, gw) = audited_gateway("db: logs/audit.db, commit_interval: 20ms, checkpoint_interval: 1h").await;
    let c = client();
    assert_eq!(c.get(gw.url("/first")).send().await.expect("request").status(), 200);
    wait_metric(&gw, "edgegate_audit_records_written_total", 1.0).await;
    // The WAL checkpoint a second after that commit, then nothing is due.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (writer, catch_up) = (times_scheduled(gw.pid(), "audit-writer"), times_scheduled(gw.pid(), "audit-catchup"));
    let rescue = times_scheduled(gw.pid(), "audit-rescue");
    let copier = times_scheduled(gw.pid(), "audit-walcopy");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let woke_writer = times_scheduled(gw.pid(), "audit-writer") - writer;
    let woke_catch_up = times_scheduled(gw.pid(), "audit-catchup") - catch_up;
    let woke_rescue = times_scheduled(gw.pid(), "audit-rescue") - rescue;
    let woke_copier = times_scheduled(gw.pid(), "audit-walcopy") - copier;
    // The background writer parks (5 s safety net); the catch-up writer looks at the queue
    // once a second, and the rescue writer, which keeps the log, at the sink's gauges once
    // a second, and so does the WAL copier (with nothing to copy). Polling every 10 ms
    // would be ~300 each.
    assert!(woke_writer <= 2, "the idle background writer was scheduled {woke_writer} times in 3 s");
    assert!(woke_catch_up <= 8, "the idle catch-up writer was scheduled {woke_catch_up} times in 3 s");
    assert!(woke_rescue <= 8, "the idle rescue writer was scheduled {woke_rescue} times in 3 s");
    assert!(copier > 0, "the WAL copier runs");
    assert!(woke_copier <= 8, "the idle WAL copier was scheduled {woke_copier} times in 3 s");

    // Each record after an idle spell is committed well within the second a missed
    // wake-up would cost (the catch-up writer's next look) — five times over.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        assert_eq!(c.get(gw.url(&format!("/after-idle/{i}"))).send().await.expect("request").status(), 200);
        loop {
            if metric(&gw.metrics().await, "edgegate_audit_records_written_total") >= f64::from(i + 2) {
                break;
            }
            let waited = sent.elapsed();
            assert!(waited < Duration::from_millis(400), "record {i} after an idle spell not committed in {waited:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let _dir = gw.stop().await;
}

// The log says which config served each request: a row of the log names one config, so the
// records before a reload carry the old config's fingerprint and those after it the new one's,
// as the admin endpoint reported each, and the log verifies across the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_on_either_side_of_a_reload_name_the_config_that_served_them() {
    let p = pod("svc").await;
    let yaml = |extra: &str| {
        config(&format!(
            "upstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}{extra}]\n\
             audit: {{db: logs/audit.db, node: edge-reload-1, commit_interval: 1s}}\n",
            group("svc", &[p.addr])
        ))
    };
    let gw = Gateway::launch(&yaml(""), Launch { no_watch: true, ..Launch::default() }).await;
    let c = client();
    let before = gw.admin_json("/-/config").await["hash"].as_str().expect("hash").to_owned();
    for i in 0..3 {
        assert_eq!(c.get(gw.url(&format!("/before/{i}"))).send().await.expect("request").status(), 200);
    }
    // Within the same commit interval: the writer's transaction holds records of both.
    gw.write_config(&yaml(", {name: extra, match: {path_prefix: /extra/}, upstream: svc, public: true}"));
    let outcome: serde_json::Value =
        c.post(gw.admin_url("/-/reload")).send().await.expect("reload").json().await.expect("JSON");
    assert_eq!(outcome["result"], "applied", "{outcome}");
    let after = gw.admin_json("/-/config").await["hash"].as_str().expect("hash").to_owned();
    assert_ne!(before, after);
    for i in 0..3 {
        assert_eq!(c.get(gw.url(&format!("/after/{i}"))).send().await.expect("request").status(), 200);
    }
    wait_metric(&gw, "edgegate_audit_records_written_total", 6.0).await;
    let db = gw.dir.path().join("config/logs/audit.db");
    let seen: Vec<(String, String, String)> = export(&db)
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (text("path"), text("config"), text("node"))
        })
        .collect();
    let expect: Vec<(String, String, String)> = ["before", "after"]
        .iter()
        .zip([&before, &after])
        .flat_map(|(when, hash)| (0..3).map(move |i| (format!("/{when}/{i}"), hash.clone(), "edge-reload-1".into())))
        .collect();
    assert_eq!(seen, expect);
    // SQL sees the same, and no row of the log holds records of two configs.
    let out = output(Command::new("sqlite3").arg(&db).arg(
        "SELECT COUNT(DISTINCT config) FROM audit_records; \
         SELECT COUNT(*) FROM record_rows r WHERE EXISTS (SELECT 1 FROM audit_records a \
         WHERE a.seq BETWEEN r.first_seq AND r.last_seq AND a.config <> r.config);",
    ));
    assert_eq!(String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>(), ["2", "0"]);
    let _dir = gw.stop().await;
    let (code, out, err) = edgegate(&["audit", "verify", "--db", db.to_str().expect("path")]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_records_and_the_rest_still_verifies() {
    let (_pod, gw) = audited_gateway("db: logs/audit.db, retention: 1s, checkpoint_records: 5").await;
    let c = client();
    for i in 0..20 {
        assert_eq!(c.get(gw.url(&format!("/old/{i}"))).send().await.expect("request").status(), 200);
    }
    wait_metric(&gw, "edgegate_audit_records_written_total", 20.0).await;
    // Past the retention period, newer records arrive and the old ones go.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // In a directory of its own, the log is not in the config watcher's way: no warning.
    assert!(!gw.stdout().contains(WATCHED_WARNING), "{}", gw.stdout());
    let db = gw.dir.path().join("config/logs/audit.db");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(c.get(gw.url("/new")).send().await.expect("request").status(), 200);
        let paths: Vec<String> = export(&db).iter().filter_map(|r| r["path"].as_str().map(str::to_owned)).collect();
        if !paths.iter().any(|p| p.starts_with("/old/")) {
            break;
        }
        assert!(Instant::now() < deadline, "old records never removed: {paths:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _dir = gw.stop().await;
    let (code, out, err) = edgegate(&["audit", "verify", "--db", db.to_str().expect("path")]);
    assert_eq!(code, 0, "{out}{err}");
    // Retention cut at a checkpoint at or after the last old record (newer ones expire too).
    let anchor: u64 = out
        .split("retention anchor at ")
        .nth(1)
        .and_then(|t| t.trim_end_matches(|c: char| !c.is_ascii_digit()).split(')').next()?.parse().ok())
        .expect("anchor in verify's report");
    assert!(anchor >= 20, "{out}");
}

/// Every routed request is recorded, a client's junk ones too: a flood of them (~250 bytes
/// a record, tens of thousands a second) would fill the node's disk within hours, stopping
/// the log (and so, by the shipped policy, every citizen) and the node's pods with it. Past
/// `audit.max_size` the oldest records go, whatever their age, and what is left verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_cannot_grow_the_log_past_its_size() {
    let max = 256 * 1024;
    let (_pod, gw) = audited_gateway("db: logs/audit.db, max_size: 256KiB, checkpoint_records: 50").await;
    let db = gw.dir.path().join("config/logs/audit.db");
    let addr = gw.addr();
    let flood = (0..4).map(|t| {
        tokio::spawn(async move {
            let mut ka = KeepAlive::connect(addr).await;
            // Below `limits.keepalive_requests` (1,000), which closes the connection.
            for i in 0..900 {
                assert_eq!(ka.get(&format!("/junk/{t}/{i}")).await, 200);
            }
        })
    });
    for task in flood.collect::<Vec<_>>() {
        task.await.expect("flood");
    }
    wait_metric(&gw, "edgegate_audit_records_written_total", 3_600.0).await;
    // 3,600 records take ~0.9 MB; within a few size checks the oldest are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = gw.metrics().await;
        let bytes = metric(&m, "edgegate_audit_db_bytes");
        if metric(&m, "edgegate_audit_records_pruned_total{reason=\"size\"}") > 0.0
            && bytes > 0.0
            && bytes <= max as f64
        {
            break;
        }
        assert!(Instant::now() < deadline, "the log stayed past its size: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c_get(&gw, "/after").await, 200);
    wait_metric(&gw, "edgegate_audit_records_written_total", 3_601.0).await;
    let _dir = gw.stop().await;
    let records = export(&db);
    assert!(records.len() < 2_000, "most of the flood is gone: {} records left", records.len());
    assert_eq!(records.last().and_then(|r| r["path"].as_str()), Some("/after"), "the newest stay");
    let (code, out, err) = edgegate(&["audit", "verify", "--db", db.to_str().expect("path")]);
    assert_eq!(code, 0, "what is left verifies: {out}{err}");
}

/// Forwarded, a record leaves the node only once the collector has it: past
/// `audit.max_size`, records the collector has not acknowledged stay, and the gateway says
/// why the log grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_size_a_log_keeps_what_the_collector_has_not_acknowledged() {
    let dead = closed_port();
    let (_pod, gw) = audited_gateway(&format!(
        "db: logs/audit.db, max_size: 64KiB, checkpoint_records: 50, forward: {{url: \"http://{dead}/ingest\"}}"
    ))
    .await;
    let mut ka = KeepAlive::connect(gw.addr()).await;
    for i in 0..900 {
        assert_eq!(ka.get(&format!("/kept/{i}")).await, 200);
    }
    wait_metric(&gw, "edgegate_audit_records_written_total", 900.0).await;
    gw.wait_for_log("not yet acknowledged by the collector", Duration::from_secs(10)).await;
    let m = gw.metrics().await;
    assert!(metric(&m, "edgegate_audit_db_bytes") > 64.0 * 1024.0, "{m}");
    assert_eq!(metric(&m, "edgegate_audit_records_pruned_total{reason=\"size\"}"), 0.0, "{m}");
    let db = gw.dir.path().join("config/logs/audit.db");
    let _dir = gw.stop().await;
    assert_eq!(export(&db).len(), 900, "every record is kept");
}

/// Redaction turns each value into `REDACTED`: a query of thousands of one-byte values
/// made a record three times what the client sent. A record keeps the first 1,024 bytes
/// of the query and its length as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_keeps_the_start_of_a_long_query_and_its_length() {
    let (_pod, gw) = audited_gateway("db: logs/audit.db").await;
    let junk = "a=1&".repeat(3_000);
    let request = format!("GET /x?{junk} HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n");
    assert_eq!(raw_exchange(gw.addr(), request.as_bytes()).await.0, Some(200));
    assert_eq!(c_get(&gw, "/y?id=42&flag").await, 200);
    wait_metric(&gw, "edgegate_audit_records_written_total", 2.0).await;
    let db = gw.dir.path().join("config/logs/audit.db");
    let _dir = gw.stop().await;
    let records = export(&db);
    let query = records[0]["query"].as_str().expect("query");
    assert!(query.starts_with("a=REDACTED&a=REDACTED&") && query.ends_with("…[12000 bytes]"), "{query}");
    assert!(query.len() <= 1_024 + 20, "{} bytes", query.len());
    assert_eq!(records[1]["query"], "id=REDACTED&flag");
}

async fn c_get(gw: &Gateway, path: &str) -> u16 {
    client().get(gw.url(path)).send().await.expect("request").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_notices_when_its_log_is_edited_behind_its_back() {
    let (_pod, gw) =
        audited_gateway("db: audit.db, verify_interval: 1s, verify_full_interval: 4s, checkpoint_records: 2").await;
    answered(&gw, 5).await;
    let c = client();
    // The background verifier walks the log every second while it grows.
    wait_metric(&gw, "edgegate_audit_verified_records", 5.0).await;
    let text = gw.metrics().await;
    assert_eq!(metric(&text, "edgegate_audit_verify_errors_total"), 0.0, "a good log is no error");
    assert!(metric(&text, "edgegate_audit_verify_last_success_timestamp_seconds") > 1.7e9);
    let status = gw.admin_json("/-/config").await;
    assert_eq!(status["audit"]["verify"]["ok"], true, "{status}");
    // Between whole walks (every 4 s here) the verifier hashes what was appended since its
    // last good walk, not the whole log again.
    for i in 5..7 {
        assert_eq!(c.get(gw.url(&format!("/r/{i}"))).send().await.expect("request").status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = &gw.admin_json("/-/config").await["audit"]["verify"];
        if v["records"] == 7 && v["whole"] == false {
            assert!(v["walked"].as_u64().is_some_and(|w| w < 7), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "no walk of only the new records: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Someone with access to the node's disk rewrites a record.
    let db = gw.dir.path().join("config/audit.db");
    let row_2 = row_of(&db, 2);
    let out = output(Command::new("sqlite3").arg(&db).arg(
        "UPDATE record_rows SET records = json_set(records, '$[' || (2 - first_seq) || '][7]', '/r/innocent') \
         WHERE 2 BETWEEN first_seq AND last_seq;",
    ));
    assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
    // An old record: the next whole walk finds it.
    wait_metric(&gw, "edgegate_audit_verify_errors_total", 1.0).await;
    let status = gw.admin_json("/-/config").await;
    assert_eq!(status["audit"]["verify"]["ok"], false, "{status}");
    let error = status["audit"]["verify"]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with(&format!("record {row_2}:")) && error.contains("edited"), "{status}");
    // Serving and recording go on: the evidence is kept, not acted on.
    assert_eq!(c.get(gw.url("/r/after")).send().await.expect("request").status(), 200);
    wait_metric(&gw, "edgegate_audit_records_written_total", 8.0).await;
    let dir = gw.stop().await;
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let logs = read("stdout.log") + &read("stderr.log");
    assert!(
        logs.lines().any(|l| l.contains("audit log does not verify") && l.contains(&format!("record {row_2}:"))),
        "an error line names the record"
    );
}

/// The first record of the row of the log at `db` that holds record `seq` (the sqlite3 client).
fn row_of(db: &Path, seq: u64) -> u64 {
    let out = output(
        Command::new("sqlite3")
            .arg(db)
            .arg(format!("SELECT first_seq FROM record_rows WHERE {seq} BETWEEN first_seq AND last_seq;")),
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a row holds the record")
}
