//! HTTPS: certificates by SNI (exact, wildcard, default), HTTP/2 through ALPN, HSTS,
//! certificate swap without restart, a broken key rejected while the old keeps serving.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

pub(crate) struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub(crate) fn new() -> Ca {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "edgegate test CA");
        Ca { cert: params.self_signed(&key).expect("ca cert"), key }
    }

    /// The CA's own certificate, PEM-encoded.
    pub(crate) fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's own certificate, DER-encoded (a client's trust root).
    pub(crate) fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// Writes a leaf certificate for `names` and its key as `dir/stem.crt|key`; returns its DER.
    pub(crate) fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().expect("leaf key");
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("leaf cert");
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).expect("write cert");
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).expect("write key");
        cert.der().to_vec()
    }
}

impl Ca {
    /// [`Ca::issue`] for the fixed test-only RSA 2048 key (`fixtures/`).
    pub(crate) fn issue_rsa(&self, dir: &Path, stem: &str, names: &[&str]) -> Vec<u8> {
        let pem = include_str!("fixtures/test-only-rsa2048.key");
        let key = KeyPair::from_pem_and_sign_algo(pem, &rcgen::PKCS_RSA_SHA256).expect("RSA key");
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("leaf cert");
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).expect("write cert");
        std::fs::write(dir.join(format!("{stem}.key")), pem).expect("write key");
        cert.der().to_vec()
    }
}

/// The listener line of a config served from [`a_gov_test_dir`]: HTTPS with `a.gov.test`'s
/// certificate.
pub(crate) const TLS_LISTENER: &str =
    "listeners: [{name: public, address: \"127.0.0.1:0\", tls: {certificates: [{cert: a.crt, key: a.key}]}}]\n";

/// A gateway directory whose `config/` holds a certificate for `a.gov.test` from `ca`
/// (`a.crt`, `a.key`), as [`TLS_LISTENER`] names them.
pub(crate) fn a_gov_test_dir(ca: &Ca) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("config")).expect("mkdir");
    ca.issue(&dir.path().join("config"), "a", &["a.gov.test"]);
    dir
}

pub(crate) fn https_client(ca: &Ca, addr: SocketAddr, accept_any: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_info(true)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).expect("ca pem"))
        .danger_accept_invalid_certs(accept_any);
    for name in ["a.gov.test", "x.b.gov.test", "unknown.gov.test"] {
        b = b.resolve(name, addr);
    }
    b.build().expect("client")
}

fn served_cert(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .expect("TLS info")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_certificates_and_they_reload_without_restart() {
    let ca = Ca::new();
    let p = pod("svc").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tls_dir = dir.path().join("config/tls");
    std::fs::create_dir_all(&tls_dir).expect("mkdir");
    let a_der = ca.issue(&tls_dir, "a", &["a.gov.test"]);
    let b_der = ca.issue(&tls_dir, "b", &["*.b.gov.test"]);
    let yaml = format!(
        r#"listeners:
  - name: public
    address: "127.0.0.1:0"
    tls: {{certificates: [{{cert: tls/a.crt, key: tls/a.key}}, {{cert: tls/b.crt, key: tls/b.key}}], hsts: 365days}}
admin: {{address: "127.0.0.1:0"}}
runtime: {{threads: 1}}
upstreams: {{svc: {{endpoints: [{{address: "{}"}}]}}}}
routes: [{{name: r, upstream: svc, public: true}}]
"#,
        p.addr
    );
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), no_watch: true, ..Launch::default() }).await;
    let port = gw.addr().port();
    let addr = gw.addr();

    let c = https_client(&ca, addr, false);
    let resp = c.get(format!("https://a.gov.test:{port}/api/x")).send().await.expect("https a");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN negotiates h2");
    assert_eq!(served_cert(&resp), a_der, "exact name");
    assert_eq!(resp.headers()["strict-transport-security"], "max-age=31536000");
    let echo: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");

    let resp = c.get(format!("https://x.b.gov.test:{port}/")).send().await.expect("https b");
    assert_eq!(served_cert(&resp), b_der, "wildcard name");

    // An unknown name gets the default (first) certificate, which then fails verification.
    assert!(c.get(format!("https://unknown.gov.test:{port}/")).send().await.is_err());
    let lenient = https_client(&ca, addr, true);
    let resp = lenient.get(format!("https://unknown.gov.test:{port}/")).send().await.expect("lenient");
    assert_eq!(served_cert(&resp), a_der, "default certificate");

    // Plain HTTP on the TLS port is not served.
    assert!(client().get(format!("http://{addr}/")).send().await.map_or(true, |r| r.status() != 200));

    // New certificate for a.gov.test: picked up by new connections after a reload.
    let a2_der = ca.issue(&tls_dir, "a", &["a.gov.test"]);
    let outcome: serde_json::Value =
        client().post(gw.admin_url("/-/reload")).send().await.expect("reload").json().await.expect("JSON");
    assert_eq!(outcome["result"], "applied", "{outcome}");
    let resp =
        https_client(&ca, addr, false).get(format!("https://a.gov.test:{port}/")).send().await.expect("https a2");
    assert_eq!(served_cert(&resp), a2_der, "swapped certificate, same process");

    // A broken key is rejected and the current certificate keeps serving.
    std::fs::write(tls_dir.join("a.key"), "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
        .expect("break key");
    let resp = client().post(gw.admin_url("/-/reload")).send().await.expect("reload");
    assert_eq!(resp.status(), 422);
    let outcome: serde_json::Value = resp.json().await.expect("JSON");
    assert!(outcome["errors"].to_string().contains("listeners[0].tls.certificates[0]"), "{outcome}");
    let resp =
        https_client(&ca, addr, false).get(format!("https://a.gov.test:{port}/")).send().await.expect("https a2");
    assert_eq!(served_cert(&resp), a2_der);

    let metrics = gw.metrics().await;
    assert!(metrics.contains("edgegate_tls_certificate_expiry_timestamp_seconds{listener=\"public\""), "{metrics}");
    let handshakes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"edgegate_tls_handshakes_total{listener="public",version="TLSv1.3"} "#))
        .and_then(|v| v.parse().ok())
        .expect("handshake counter");
    assert!(handshakes >= 5, "{handshakes} TLS 1.3 handshakes counted");
}

#[test]
fn check_rejects_mismatched_and_expired_certificates() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("tempdir");
    ca.issue(dir.path(), "one", &["one.gov.test"]);
    ca.issue(dir.path(), "two", &["two.gov.test"]);
    // Expired certificate.
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["old.gov.test".to_string()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let old = params.signed_by(&key, &ca.cert, &ca.key).expect("cert");
    std::fs::write(dir.path().join("old.crt"), old.pem()).expect("write");
    std::fs::write(dir.path().join("old.key"), key.serialize_pem()).expect("write");
    let cfg = dir.path().join("edgegate.yaml");
    std::fs::write(
        &cfg,
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n    tls: {certificates: [{cert: one.crt, key: two.key}, {cert: old.crt, key: old.key}]}\n",
    )
    .expect("write");
    let out = output(std::process::Command::new(BIN).arg("check").arg("--config").arg(&cfg));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listeners[0].tls.certificates[0]") && stderr.contains("does not match"), "{stderr}");
    assert!(stderr.contains("listeners[0].tls.certificates[1]") && stderr.contains("expired"), "{stderr}");
}

/// A TLS 1.1-only ClientHello: legacy version 0x0302, no supported_versions extension.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02];
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // no session id
                   // Suites include one the server supports (ECDHE-ECDSA-AES128-GCM-SHA256), so the
                   // version is the only reason to refuse.
    hello.extend_from_slice(&[0x00, 0x06, 0xc0, 0x2b, 0xc0, 0x13, 0x00, 0x2f]);
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00, (hello.len() >> 8) as u8, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, (handshake.len() >> 8) as u8, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_is_refused_and_plain_http_redirects() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Ca::new();
    let p = pod("svc").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tls_dir = dir.path().join("config");
    std::fs::create_dir_all(&tls_dir).expect("mkdir");
    ca.issue(&tls_dir, "a", &["a.gov.test"]);
    let yaml = format!(
        r#"listeners:
  - {{name: public, address: "127.0.0.1:0", tls: {{certificates: [{{cert: a.crt, key: a.key}}]}}}}
  - {{name: redirect, address: "127.0.0.1:0", redirect_https: 8443}}
admin: {{address: "127.0.0.1:0"}}
runtime: {{threads: 1}}
upstreams: {{svc: {{endpoints: [{{address: "{}"}}]}}}}
routes: [{{name: r, upstream: svc, public: true}}]
"#,
        p.addr
    );
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await;

    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(&tls11_client_hello()).await.expect("hello");
    let mut answer = [0u8; 7];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut answer))
        .await
        .expect("answer")
        .unwrap_or(0);
    assert!(n == 0 || answer[0] == 0x15, "TLS 1.1 must get an alert or a closed connection, got {:?}", &answer[..n]);
    if n == 7 {
        assert_eq!(answer[5], 2, "fatal alert");
        assert!([40, 70].contains(&answer[6]), "handshake_failure or protocol_version, got {}", answer[6]);
    }

    let redirect = gw.listeners["redirect"];
    let resp = raw_request(redirect, "GET /api/permits?lang=zh HTTP/1.1\r\nHost: zwfw.example.gov.cn\r\n\r\n").await;
    assert_eq!(resp.status, 308);
    assert_eq!(resp.header("location"), Some("https://zwfw.example.gov.cn:8443/api/permits?lang=zh"));
    assert_eq!(resp.json()["error"], "https_required");
    assert_eq!(p.requests(), 0);
}

#[test]
fn check_warns_about_certificates_close_to_expiry() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["soon.gov.test".to_string()]).expect("params");
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(7);
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("cert");
    std::fs::write(dir.path().join("soon.crt"), cert.pem()).expect("write");
    std::fs::write(dir.path().join("soon.key"), key.serialize_pem()).expect("write");
    let cfg = dir.path().join("edgegate.yaml");
    std::fs::write(&cfg, "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n    tls: {certificates: [{cert: soon.crt, key: soon.key}]}\n")
        .expect("write");
    let out = output(std::process::Command::new(BIN).arg("check").arg("--config").arg(&cfg));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: listener public:") && stderr.contains("soon.crt expires in 6 days"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_groups_can_use_verified_tls() {
    let ca = Ca::new();
    let p = pod("svc").await;
    // The TLS upstream: another edgegate terminating TLS in front of the pod.
    let inner_dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(inner_dir.path().join("config")).expect("mkdir");
    ca.issue(&inner_dir.path().join("config"), "a", &["a.gov.test"]);
    let inner = Gateway::launch(
        &format!(
            "listeners: [{{name: public, address: \"127.0.0.1:0\", tls: {{certificates: [{{cert: a.crt, key: a.key}}]}}}}]\nadmin: {{address: \"127.0.0.1:0\"}}\nruntime: {{threads: 1}}\nupstreams: {{svc: {{endpoints: [{{address: \"{}\"}}]}}}}\nroutes: [{{name: r, upstream: svc, public: true}}]\n",
            p.addr
        ),
        Launch { dir: Some(inner_dir), ..Launch::default() },
    )
    .await;

    let front_dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(front_dir.path().join("config")).expect("mkdir");
    std::fs::write(front_dir.path().join("config/ca.pem"), ca.cert.pem()).expect("ca");
    let front_yaml = |sni: &str| {
        config(&format!(
            "upstreams:\n  inner: {{endpoints: [{{address: \"{}\"}}], tls: {{sni: {sni}, ca: ca.pem}}, retry: {{attempts: 0}}}}\nroutes: [{{name: r, upstream: inner, public: true}}]\n",
            inner.addr()
        ))
    };
    let front = Gateway::launch(
        &front_yaml("a.gov.test"),
        Launch { dir: Some(front_dir), no_watch: true, ..Launch::default() },
    )
    .await;
    let resp = client().get(front.url("/api/x")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "the hop to the upstream was TLS");

    // A name the upstream's certificate does not carry fails verification: 502, never plain text.
    front.write_config(&front_yaml("wrong.gov.test"));
    let outcome: serde_json::Value =
        client().post(front.admin_url("/-/reload")).send().await.expect("reload").json().await.expect("JSON");
    assert_eq!(outcome["result"], "applied", "{outcome}");
    let resp = client().get(front.url("/api/x")).send().await.expect("request");
    assert_eq!(resp.status(), 502);
    assert_eq!(p.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_sees_data_encrypted_exactly_on_tls() {
    use jsonwebtoken::Algorithm;
    let ca = Ca::new();
    let issuer = Issuer::new();
    let p = pod("svc").await;
    let dir = policy_dir(&issuer);
    ca.issue(&dir.path().join("config"), "a", &["a.gov.test"]);
    let yaml = policy_yaml(
        "  - {name: public, address: \"127.0.0.1:0\", tls: {certificates: [{cert: a.crt, key: a.key}]}}
  - {name: plain, address: \"127.0.0.1:0\"}
",
        p.addr,
        "  - {name: services, upstream: svc, policy: data.government.digital.allow}\n",
        "",
    );
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await;
    let token = issuer.token(Algorithm::ES256, serde_json::json!({}));
    let https = https_client(&ca, gw.addr(), false);
    let port = gw.addr().port();
    let resp = https.get(format!("https://a.gov.test:{port}/api/x")).bearer_auth(&token).send().await.expect("https");
    assert_eq!(resp.status(), 200, "citizen over TLS");
    let plain =
        client().get(format!("http://{}/api/x", gw.listeners["plain"])).bearer_auth(&token).send().await.expect("http");
    assert_eq!(plain.status(), 403, "the same citizen in plain text is refused");
    assert_eq!(p.requests(), 1);
}

/// An edgegate terminating TLS (certificate for `a.gov.test` from `ca`) in front of `pod`:
/// a TLS upstream for the gateway under test.
async fn tls_upstream(ca: &Ca, pod: &edgegate::pod::Pod) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("config")).expect("mkdir");
    ca.issue(&dir.path().join("config"), "a", &["a.gov.test"]);
    Gateway::launch(
        &format!(
            "listeners: [{{name: public, address: \"127.0.0.1:0\", tls: {{certificates: [{{cert: a.crt, key: a.key}}]}}}}]\nadmin: {{address: \"127.0.0.1:0\"}}\nruntime: {{threads: 1}}\nupstreams: {{svc: {{endpoints: [{{address: \"{}\"}}]}}}}\nroutes: [{{name: r, upstream: svc, public: true}}]\n",
            pod.addr
        ),
        Launch { dir: Some(dir), ..Launch::default() },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstreams_are_health_checked_over_tls_and_follow_their_ca_bundle() {
    let (ca, other_ca) = (Ca::new(), Ca::new());
    let p = pod("svc").await;
    let inner = tls_upstream(&ca, &p).await;

    // The CA bundle starts out wrong: verification fails, 502.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("config/ca")).expect("mkdir");
    let bundle = dir.path().join("config/ca/bundle.pem");
    std::fs::write(&bundle, other_ca.cert.pem()).expect("ca");
    let yaml = config(&format!(
        "upstreams:\n  inner: {{endpoints: [{{address: \"{}\"}}], tls: {{sni: a.gov.test, ca: ca/bundle.pem}}, retry: {{attempts: 0}}, health: {{path: /healthz, interval: 100ms, timeout: 100ms, unhealthy_threshold: 2}}}}\nroutes:\n  - {{name: swr, match: {{path_prefix: /swr/}}, upstream: inner, public: true, cache: {{ttl: 1s, stale_while_revalidate: 60s}}}}\n  - {{name: r, upstream: inner, public: true}}\n",
        inner.addr()
    ));
    let front = Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await;
    assert_eq!(client().get(front.url("/api/x")).send().await.expect("request").status(), 502);
    assert_eq!(p.requests(), 0);
    // The health checks verify the certificate like traffic does: the endpoint goes down.
    front.wait_for_log("failed its health checks", std::time::Duration::from_secs(10)).await;
    assert_eq!(p.health_checks(), 0, "no probe got through a TLS hop it could not verify");

    // Only the CA bundle changes: the watcher sees it and the reload applies it.
    std::fs::write(&bundle, ca.cert.pem()).expect("ca");
    front.wait_for_status("/api/x", 200, std::time::Duration::from_secs(5)).await;
    let status = front.admin_json("/-/config").await;
    assert_eq!((status["generation"].as_u64(), status["last_reload"]["trigger"].as_str()), (Some(2), Some("watch")));

    // Health checks reach the pod through the TLS hop, with the group's SNI and CA, and the
    // endpoint stays healthy.
    let checks_before = p.health_checks();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p.health_checks() < checks_before + 5 {
        assert!(std::time::Instant::now() < deadline, "health checks did not get through TLS");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    front.wait_for_log("passed its health checks again", std::time::Duration::from_secs(10)).await;
    let resp = client().get(front.url("/api/x")).send().await.expect("request");
    assert_eq!(resp.status(), 200);

    // stale-while-revalidate refreshes in the background over the same TLS hop.
    let x_cache = |url: String| async move {
        let r = client().get(url).send().await.expect("request");
        (r.status().as_u16(), r.headers().get("x-cache").and_then(|v| v.to_str().ok()).map(str::to_owned))
    };
    assert_eq!(x_cache(front.url("/swr/list")).await, (200, Some("MISS".into())));
    let fetched = p.requests();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // the entry's ttl passes
    assert_eq!(x_cache(front.url("/swr/list")).await, (200, Some("STALE".into())));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while p.requests() == fetched {
        assert!(std::time::Instant::now() < deadline, "no background refresh reached the pod");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while x_cache(front.url("/swr/list")).await != (200, Some("HIT".into())) {
        assert!(std::time::Instant::now() < deadline, "the refreshed entry was never stored");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(p.requests(), fetched + 1, "one refresh, then hits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_the_same_head_limit() {
    let ca = Ca::new();
    let p = pod("svc").await;
    p.record_targets();
    let dir = a_gov_test_dir(&ca);
    let yaml = format!(
        "{TLS_LISTENER}admin: {{address: \"127.0.0.1:0\"}}\nlimits: {{header_bytes: 8KiB, h2_max_concurrent_streams: 10}}\nupstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}]\n",
        group("svc", &[p.addr])
    );
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await;
    let https = https_client(&ca, gw.addr(), false);
    let port = gw.addr().port();
    let ok = https.get(format!("https://a.gov.test:{port}/small")).header("x-pad", "a".repeat(2_000)).send().await;
    let ok = ok.expect("a small head over HTTP/2");
    assert_eq!((ok.status().as_u16(), ok.version()), (200, reqwest::Version::HTTP_2));
    // A decoded header list over limits.header_bytes is refused: never a 200, never the pod.
    let big = https.get(format!("https://a.gov.test:{port}/big")).header("x-pad", "a".repeat(12_000)).send().await;
    match big {
        Ok(resp) => assert!(resp.status().as_u16() >= 400, "{:?}", resp.status()),
        Err(e) => assert!(e.is_request() || e.is_connect() || e.to_string().contains("error"), "{e}"),
    }
    assert_eq!(p.targets(), vec!["/small".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_is_on_every_https_response_and_never_on_plain_http() {
    let ca = Ca::new();
    let p = pod("svc").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tls_dir = dir.path().join("config/tls");
    std::fs::create_dir_all(&tls_dir).expect("mkdir");
    ca.issue(&tls_dir, "a", &["a.gov.test"]);
    let yaml = format!(
        r#"listeners:
  - name: public
    address: "127.0.0.1:0"
    tls: {{certificates: [{{cert: tls/a.crt, key: tls/a.key}}], hsts: 365days}}
  - {{name: plain, address: "127.0.0.1:0", redirect_https: 443}}
admin: {{address: "127.0.0.1:0"}}
runtime: {{threads: 1}}
upstreams:
  svc: {{endpoints: [{{address: "{}"}}]}}
  dead: {{endpoints: [{{address: "{}"}}]}}
routes:
  - {{name: cached, match: {{path_prefix: /cached/}}, upstream: svc, public: true, cache: {{ttl: 60s}}}}
  - {{name: limited, match: {{path_prefix: /limited/}}, upstream: svc, public: true, rate_limit: {{rate: 1, burst: 1}}}}
  - {{name: broken, match: {{path_prefix: /broken/}}, upstream: dead, public: true}}
  - {{name: closed, match: {{path_prefix: /closed/}}, upstream: svc}}
"#,
        p.addr,
        closed_port()
    );
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), no_watch: true, ..Launch::default() }).await;
    let port = gw.listeners["public"].port();
    let c = https_client(&ca, gw.listeners["public"], false);
    // Proxied, cache miss and hit, the gateway's own 403/404/429/502: every answer says it.
    for (path, status, cache) in [
        ("/cached/a", 200, Some("MISS")),
        ("/cached/a", 200, Some("HIT")),
        ("/nowhere", 404, None),
        ("/closed/x", 403, None),
        ("/limited/a", 200, None),
        ("/limited/a", 429, None),
        ("/broken/x", 502, None),
    ] {
        let resp = c.get(format!("https://a.gov.test:{port}{path}")).send().await.expect("https");
        assert_eq!(resp.status(), status, "{path}");
        if let Some(state) = cache {
            assert_eq!(resp.headers()["x-cache"], state, "{path}");
        }
        assert_eq!(
            resp.headers().get("strict-transport-security").map(|v| v.to_str().unwrap_or_default()),
            Some("max-age=31536000"),
            "{path} ({status}) without HSTS: {:?}",
            resp.headers()
        );
    }
    // Plain HTTP must not carry it (RFC 6797 §7.2): the redirect goes without.
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!("http://{}/x", gw.listeners["plain"]))
        .send()
        .await
        .expect("plain");
    assert_eq!(resp.status(), 308);
    assert!(resp.headers().get("strict-transport-security").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_a_tls_handshake_are_capped_and_closed_at_head_timeout() {
    // TCP connections to the HTTPS listener that never send a ClientHello. Before, each was
    // held for Pingora's fixed 60 s handshake timeout and counted in neither
    // `max_connections` nor `max_connections_per_client`: their number had no bound.
    // The same with the handshakes on a thread of their own: the handshake's task there is
    // ended with the connection, not left holding the socket.
    for runtime in ["", "runtime: {tls_handshake_threads: 1}\n"] {
        silent_connections_are_capped_and_closed(runtime).await;
    }
}

async fn silent_connections_are_capped_and_closed(runtime: &str) {
    let ca = Ca::new();
    let p = pod("svc").await;
    let yaml = format!(
        "{TLS_LISTENER}admin: {{address: \"127.0.0.1:0\"}}\nlimits: {{max_connections: 5, head_timeout: 1s}}\n\
         {runtime}upstreams:\n{}routes: [{{name: r, upstream: svc, public: true}}]\n",
        group("svc", &[p.addr])
    );
    let gw = Gateway::launch(&yaml, Launch { dir: Some(a_gov_test_dir(&ca)), ..Launch::default() }).await;
    let open = "edgegate_client_connections{listener=\"public\"}";
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tokio::net::TcpStream::connect(gw.addr()).await.expect("connect"));
    }
    // Counted from the accept, before any handshake.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while metric(&gw.metrics().await, open) < 5.0 {
        assert!(std::time::Instant::now() < deadline, "not counted:\n{}", gw.metrics().await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A sixth is closed at once, well before the head timeout would close it.
    let started = std::time::Instant::now();
    let mut sixth = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), sixth.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    assert!(started.elapsed() < std::time::Duration::from_millis(800), "closed after {:?}", started.elapsed());
    assert_eq!(metric(&gw.metrics().await, "edgegate_connections_refused_total{listener=\"public\"}"), 1.0);
    // The silent five are closed at `head_timeout` (1 s), not after a minute.
    for mut s in silent {
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{runtime}: {read:?}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    // Their places are given back: an HTTPS client is served.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while metric(&gw.metrics().await, open) > 0.0 {
        assert!(std::time::Instant::now() < deadline, "places kept:\n{}", gw.metrics().await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let c = https_client(&ca, gw.addr(), false);
    let resp = c.get(format!("https://a.gov.test:{}/x", gw.addr().port())).send().await.expect("HTTPS");
    assert_eq!(resp.status(), 200);
    // Each cut handshake counted by its reason: the silent five at the timeout, and a
    // client speaking plain HTTP to the HTTPS listener an error (the sixth, closed at
    // accept, never began one).
    let mut plain = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    plain.write_all(b"GET /x HTTP/1.1\r\nHost: a.gov.test\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    let failures = |reason: &str| format!("edgegate_tls_handshake_failures_total{{reason=\"{reason}\"}}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while metric(&gw.metrics().await, &failures("error")) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "{runtime}: not counted:\n{}", gw.metrics().await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let m = gw.metrics().await;
    assert_eq!((metric(&m, &failures("timeout")), metric(&m, &failures("error"))), (5.0, 1.0), "{runtime}");
}

/// Verifies as rustls' WebPKI verifier does, but tells the server it can check only
/// `schemes` (what a client that cannot check ECDSA signatures offers).
#[derive(Debug)]
struct Offering {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    schemes: Vec<rustls::SignatureScheme>,
}

impl rustls::client::danger::ServerCertVerifier for Offering {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.clone()
    }
}

/// A gateway in front of `p` whose TLS listener serves `certificates` (a YAML list naming
/// `ec.crt`/`ec.key` and `rsa.crt`/`rsa.key`, both issued by `ca` for `a.gov.test`), with the
/// two certificates' DER.
async fn with_certificates(ca: &Ca, p: &edgegate::pod::Pod, certificates: &str) -> (Gateway, Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("mkdir");
    let ec = ca.issue(&config, "ec", &["a.gov.test"]);
    let rsa = ca.issue_rsa(&config, "rsa", &["a.gov.test"]);
    let yaml = format!(
        "listeners: [{{name: public, address: \"127.0.0.1:0\", tls: {{certificates: {certificates}}}}}]\n\
         admin: {{address: \"127.0.0.1:0\"}}\n\
         upstreams: {{svc: {{endpoints: [{{address: \"{}\"}}]}}}}\n\
         routes: [{{name: r, upstream: svc, public: true}}]\n",
        p.addr
    );
    (Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await, ec, rsa)
}

/// The certificate `addr` serves `a.gov.test` to a client that can check signatures of
/// `schemes` only (`None`: every scheme rustls can check), or the handshake's error.
async fn served_to(addr: SocketAddr, ca: &Ca, schemes: Option<&[rustls::SignatureScheme]>) -> Result<Vec<u8>, String> {
    use rustls::SignatureScheme as S;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca.der())).expect("CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .expect("verifier");
    let all = rustls::client::danger::ServerCertVerifier::supported_verify_schemes(webpki.as_ref());
    let schemes = schemes.map_or(all, <[S]>::to_vec);
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Offering { inner: webpki, schemes }))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("a.gov.test").expect("name");
    let s = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let certs = s.get_ref().1.peer_certificates().expect("certificates");
    Ok(certs[0].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_ecdsa_and_rsa_certificates_gives_each_client_the_first_it_can_check() {
    use rustls::SignatureScheme as S;
    const RSA_ONLY: &[S] = &[S::RSA_PSS_SHA256, S::RSA_PKCS1_SHA256];
    const ECDSA_ONLY: &[S] = &[S::ECDSA_NISTP256_SHA256];
    let ca = Ca::new();
    let p = pod("svc").await;
    let launch = |order| with_certificates(&ca, &p, order);
    // Which of the two a client was served, by name.
    let which = |served: Result<Vec<u8>, String>, ec: &[u8], rsa: &[u8]| match served {
        Ok(der) if der == ec => "ECDSA".to_owned(),
        Ok(der) if der == rsa => "RSA".to_owned(),
        Ok(_) => "another certificate".to_owned(),
        Err(e) => format!("no handshake: {e}"),
    };
    let (gw, ec, rsa) = launch("[{cert: ec.crt, key: ec.key}, {cert: rsa.crt, key: rsa.key}]").await;
    let a = gw.addr();
    assert_eq!(which(served_to(a, &ca, None).await, &ec, &rsa), "ECDSA", "a client that checks both: the first");
    assert_eq!(which(served_to(a, &ca, Some(ECDSA_ONLY)).await, &ec, &rsa), "ECDSA");
    assert_eq!(which(served_to(a, &ca, Some(RSA_ONLY)).await, &ec, &rsa), "RSA", "a client without ECDSA");

    // The order is the operator's: RSA listed first goes to every client that can check it.
    let (gw, ec, rsa) = launch("[{cert: rsa.crt, key: rsa.key}, {cert: ec.crt, key: ec.key}]").await;
    assert_eq!(which(served_to(gw.addr(), &ca, None).await, &ec, &rsa), "RSA");
    assert_eq!(which(served_to(gw.addr(), &ca, Some(ECDSA_ONLY)).await, &ec, &rsa), "ECDSA");
    // With only an ECDSA certificate, a client that cannot check it fails its handshake.
    let (gw, _, _) = launch("[{cert: ec.crt, key: ec.key}]").await;
    assert!(served_to(gw.addr(), &ca, Some(RSA_ONLY)).await.is_err());
}

/// A client that offers X25519MLKEM768 (as current browsers and mobile TLS stacks do, with
/// an X25519 share beside it) gets the post-quantum hybrid, in one round trip; one that
/// offers X25519 first keeps it, without a retry; one with only P-256, or speaking TLS 1.2
/// (where the hybrid is not defined), gets what it offered. Each is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_the_post_quantum_hybrid_gets_it_and_others_keep_theirs() {
    use rustls::crypto::ring::kx_group;
    use rustls::{HandshakeKind, NamedGroup};
    let ca = Ca::new();
    let p = pod("svc").await;
    let (gw, _, _) = with_certificates(&ca, &p, "[{cert: ec.crt, key: ec.key}]").await;
    let hybrid = edgegate::tls_keys::provider().kx_groups[0];
    assert_eq!(hybrid.name(), NamedGroup::X25519MLKEM768);
    let handshake = |groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>, tls12: bool| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(ca.der())).expect("CA");
        let provider = rustls::crypto::CryptoProvider { kx_groups: groups, ..rustls::crypto::ring::default_provider() };
        let versions: &[&'static rustls::SupportedProtocolVersion] =
            if tls12 { &[&rustls::version::TLS12] } else { &[&rustls::version::TLS13] };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let addr = gw.addr();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let name = rustls::pki_types::ServerName::try_from("a.gov.test").expect("name");
            let mut tls =
                tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("handshake");
            let (kind, group) = {
                let c = tls.get_ref().1;
                (c.handshake_kind(), c.negotiated_key_exchange_group().map(|g| g.name()))
            };
            tls.write_all(b"GET /x HTTP/1.1\r\nHost: a.gov.test\r\nConnection: close\r\n\r\n").await.expect("write");
            let mut answer = Vec::new();
            tls.read_to_end(&mut answer).await.expect("read");
            let status = String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned();
            (kind, group, status)
        }
    };
    let ok = "HTTP/1.1 200 OK".to_owned();
    let full = Some(HandshakeKind::Full);
    assert_eq!(
        handshake(vec![hybrid, kx_group::X25519], false).await,
        (full, Some(NamedGroup::X25519MLKEM768), ok.clone()),
        "a browser's offer"
    );
    assert_eq!(handshake(vec![hybrid], false).await, (full, Some(NamedGroup::X25519MLKEM768), ok.clone()));
    assert_eq!(
        handshake(vec![kx_group::X25519, hybrid], false).await,
        (full, Some(NamedGroup::X25519), ok.clone()),
        "X25519 offered first: taken, no retry"
    );
    assert_eq!(handshake(vec![kx_group::SECP256R1], false).await, (full, Some(NamedGroup::secp256r1), ok.clone()));
    assert_eq!(handshake(vec![hybrid, kx_group::X25519], true).await, (full, Some(NamedGroup::X25519), ok));
}

/// The collectors edgegate sends to — the audit log's centre and the OpenTelemetry endpoint
/// — reached over `https://` and verified against the system's CA certificates as
/// `SSL_CERT_FILE` names them (as for TLS upstreams). That bundle also holds a certificate
/// the TLS library cannot take (framed as PEM, its DER a bare integer): it is skipped, and
/// costs neither collector its TLS. Here the collectors sit behind another edgegate that
/// terminates TLS with a certificate for `127.0.0.1` from the test CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collectors_over_https_are_verified_against_the_system_bundle_an_odd_certificate_skipped() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind collector");
    let collector = listener.local_addr().expect("addr");
    let records = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let spans = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (r, s) = (Arc::clone(&records), Arc::clone(&spans));
    serve_posts(listener, move |head, body| {
        if head.starts_with("post /ingest ") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)
                .expect("gzip JSON lines");
            for line in text.lines() {
                let record: serde_json::Value = serde_json::from_str(line).expect("JSON line");
                r.lock().expect("lock").push(record["path"].as_str().unwrap_or_default().to_owned());
            }
        } else if head.starts_with("post /v1/traces ") {
            let doc: serde_json::Value = serde_json::from_slice(&body).expect("OTLP JSON");
            let n = doc["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().map_or(0, Vec::len);
            s.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        200
    });
    let ca = Ca::new();
    let front_dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(front_dir.path().join("config")).expect("mkdir");
    ca.issue(&front_dir.path().join("config"), "ip", &["127.0.0.1"]);
    let front = Gateway::launch(
        &format!(
            "listeners: [{{name: public, address: \"127.0.0.1:0\", tls: {{certificates: [{{cert: ip.crt, key: ip.key}}]}}}}]\nadmin: {{address: \"127.0.0.1:0\"}}\nruntime: {{threads: 1}}\nupstreams: {{centre: {{endpoints: [{{address: \"{collector}\"}}]}}}}\nroutes: [{{name: centre, upstream: centre, public: true}}]\n"
        ),
        Launch { dir: Some(front_dir), ..Launch::default() },
    )
    .await;

    let bundle_dir = tempfile::tempdir().expect("tempdir");
    let bundle = bundle_dir.path().join("ca-certificates.crt");
    let odd = "-----BEGIN CERTIFICATE-----\nAgEA\n-----END CERTIFICATE-----\n";
    std::fs::write(&bundle, format!("{odd}{}", ca.pem())).expect("write bundle");
    let https = format!("https://{}", front.addr());
    let p = pod("svc").await;
    let yaml = config(&format!(
        "tracing: {{sample_ratio: 1.0, otlp: {{endpoint: \"{https}/v1/traces\", interval: 100ms}}}}\nupstreams:\n{}routes: [{{name: api, upstream: svc, public: true}}]\naudit: {{db: audit.db, node: edge-tls, forward: {{url: \"{https}/ingest\", batch: 10, interval: 100ms}}}}\n",
        group("svc", &[p.addr])
    ));
    let env = vec![("SSL_CERT_FILE".to_owned(), bundle.display().to_string())];
    let gw = Gateway::launch(&yaml, Launch { env, ..Launch::default() }).await;
    let c = client();
    for i in 0..3 {
        assert_eq!(c.get(gw.url(&format!("/r/{i}"))).send().await.expect("request").status(), 200);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while records.lock().expect("lock").len() < 3 || spans.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "records {:?}, spans {}; the gateway said:\n{}",
            records.lock().expect("lock"),
            spans.load(std::sync::atomic::Ordering::Relaxed),
            gw.stdout()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(*records.lock().expect("lock"), ["/r/0", "/r/1", "/r/2"]);
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "edgegate_audit_forward_errors_total"), 0.0, "{}", gw.stdout());
    let said = gw.stdout().lines().filter(|l| l.contains("\"skipped\":1") && l.contains("edgegate::collector")).count();
    assert_eq!(said, 2, "the odd certificate is said, once for each collector:\n{}", gw.stdout());
}
