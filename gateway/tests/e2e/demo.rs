//! `edgegate demo`'s full product tour, prepared exactly as the command prepares it (its
//! fixed ports and pod addresses swapped for free ones): every curl line it prints
//! answers as printed.

use std::process::Command;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_https_cache_policy_admin_and_audit_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = edgegate::demo::prepare(&dir.path().join("config")).expect("prepare the demo");
    let (p1, p2, office) = (pod("permits").await, pod("permits").await, pod("office-hours").await);
    let yaml = std::fs::read_to_string(&demo.config_path)
        .expect("demo config")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:8443", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace("127.0.0.1:18081", &p1.addr.to_string())
        .replace("127.0.0.1:18082", &p2.addr.to_string())
        .replace("127.0.0.1:18083", &office.addr.to_string());
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await;
    let secure = gw.listeners["secure"];
    let https = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&demo.ca_cert).expect("demo certificate")).expect("PEM"),
        )
        .resolve("localhost", secure)
        .build()
        .expect("client");
    let port = secure.port();
    let get = |path: &str, token: Option<&str>| {
        let mut req = https.get(format!("https://localhost:{port}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.expect("https request") }
    };

    // HTTPS with the certificate made at start (the printed --cacert line), HSTS on it.
    let resp = get("/api/permits/42", None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["strict-transport-security"], "max-age=86400");

    // The cached route: MISS, then HIT.
    let cache = |resp: &reqwest::Response| resp.headers()["x-cache"].to_str().expect("x-cache").to_owned();
    let c = client();
    assert_eq!(cache(&c.get(gw.url("/api/office-hours")).send().await.expect("req")), "MISS");
    assert_eq!(cache(&c.get(gw.url("/api/office-hours")).send().await.expect("req")), "HIT");

    // The printed tokens: citizen 200, admin 403, expired 401; a citizen in plain text 403.
    assert_eq!(get("/api/citizen/permits", Some(&demo.citizen)).await.status(), 200);
    assert_eq!(get("/api/citizen/permits", Some(&demo.admin)).await.status(), 403);
    assert_eq!(get("/api/citizen/permits", Some(&demo.expired)).await.status(), 401);
    let plain = c.get(gw.url("/api/citizen/permits")).bearer_auth(&demo.citizen).send().await.expect("req");
    assert_eq!(plain.status(), 403, "not encrypted");

    // The printed purge line empties the cached route.
    let purge = c.delete(gw.admin_url("/-/cache?prefix=127.0.0.1/api/office-hours")).send().await.expect("purge");
    assert_eq!(purge.status(), 200);
    assert_eq!(cache(&c.get(gw.url("/api/office-hours")).send().await.expect("req")), "MISS", "purged");

    // More tokens from the printed `edgegate token` line are accepted too.
    let out = output(Command::new(BIN).arg("token").arg("--key").arg(&demo.issuer_key).args([
        "--kid",
        "demo-1",
        "--claims",
        r#"{"sub":"citizen-7","iss":"https://id.demo.localhost","aud":"edgegate-demo","role":"citizen"}"#,
    ]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let minted = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(get("/api/citizen/permits", Some(&minted)).await.status(), 200);

    // The audit log recorded every routed request and verifies.
    let dir = gw.stop().await;
    let db = dir.path().join("config/state/audit.db");
    let out = output(Command::new(BIN).args(["audit", "verify", "--db"]).arg(&db));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok: records 1..="),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
