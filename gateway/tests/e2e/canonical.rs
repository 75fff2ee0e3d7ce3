//! The canonical request, attacked from outside with raw bytes (a client library would
//! normalise these paths away before sending): traversal and encoding tricks aimed from a
//! public route at a policy route are refused or decided on the canonical path, and the
//! pod only ever receives canonical paths — the very path the policy saw.

use edgegate_filters::normalise::CanonicalRequest;
use jsonwebtoken::Algorithm;

use crate::support::*;

/// Allows a citizen only when the path and host the policy sees are the ones the client
/// says it expects the pod to receive.
const SAME_PATH_POLICY: &str = r#"package edgegate.test

import rego.v1

default allow := false

allow if {
    input.user.role == "citizen"
    input.request.path == input.request.headers["x-expect-path"]
    input.request.host == "zwfw.example.gov.cn"
}
"#;

const HOST: &str = "zwfw.example.gov.cn";

/// A recording pod behind a gateway with the public, secret, files and cached routes.
async fn setup() -> (Issuer, edgegate::pod::Pod, Gateway) {
    let issuer = Issuer::new();
    let p = pod("svc").await;
    p.record_targets();
    let gw = gateway(&p, &issuer).await;
    (issuer, p, gw)
}

async fn gateway(p: &edgegate::pod::Pod, issuer: &Issuer) -> Gateway {
    let dir = policy_dir(issuer);
    std::fs::write(dir.path().join("config/policy/same_path.rego"), SAME_PATH_POLICY).expect("policy");
    let routes = format!(
        "  - {{name: public, match: {{host: {HOST}, path_prefix: /public/}}, upstream: svc, public: true}}
  - {{name: secret, match: {{host: {HOST}, path_prefix: /secret/}}, upstream: svc, policy: data.edgegate.test.allow}}
  - {{name: files, match: {{host: {HOST}, path_prefix: /files/}}, upstream: svc, public: true, path: {{allow_encoded_slash: true}}}}
  - {{name: cached, match: {{host: {HOST}, path_prefix: /cached/}}, upstream: svc, public: true, cache: {{ttl: 60s}}}}
"
    );
    let yaml = policy_yaml("  - {name: public, address: \"127.0.0.1:0\"}\n", p.addr, &routes, "");
    Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await
}

fn get(target: &str, host: &str, extra: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_encoding_tricks_never_reach_the_pod() {
    let (issuer, p, gw) = setup().await;

    // Aimed at /secret/ through the public prefix: decided on the canonical path, which
    // is the policy route, so without a token it is 401 — never the public route's 200.
    for target in [
        "/public/../secret/plans.txt",
        "/public/%2e%2e/secret/plans.txt",
        "/public/%2E%2E/secret/plans.txt",
        "/public/.%2e/secret/plans.txt",
        "/public/%2e./secret/plans.txt",
        "/public//../secret/plans.txt",
        "/public/./../secret/plans.txt",
        "/public/a/b/../../../secret/plans.txt",
        "/public/%2e%2e/%73ecret/plans.txt",
        "http://zwfw.example.gov.cn/public/../secret/plans.txt",
    ] {
        let r = raw_request(gw.addr(), &get(target, HOST, "")).await;
        assert_eq!((r.status, r.json()["error"].as_str()), (401, Some("unauthenticated")), "{target}");
        assert!(r.json()["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{target}");
    }

    // Refused outright with a 400 that says why.
    for (target, code) in [
        ("/public/..%2fsecret/plans.txt", "path_traversal"),
        ("/public/..%2Fsecret/plans.txt", "path_traversal"),
        ("/public/..%5csecret/plans.txt", "path_traversal"),
        ("/public/%2fsecret", "path_encoded_slash"),
        ("/public/%5csecret", "path_encoded_slash"),
        ("/public/%252e%252e/secret/plans.txt", "path_double_encoding"),
        ("/public/%25%32%65%25%32%65/secret/plans.txt", "path_double_encoding"),
        ("/public/..;/secret/plans.txt", "path_traversal"),
        ("/public/..%3b/secret/plans.txt", "path_traversal"),
        ("/public/%ef%bc%8e%ef%bc%8e/secret/plans.txt", "path_lookalike_dot_segment"),
        ("/public/%00/x", "path_encoded_control"),
        ("/public/%0d%0ax", "path_encoded_control"),
        ("/public/%zz", "bad_path_escape"),
        ("/../secret/plans.txt", "path_traversal"),
        ("/public/../../secret/plans.txt", "path_traversal"),
        ("/%2e%2e/secret/plans.txt", "path_traversal"),
        ("//../secret/plans.txt", "path_traversal"),
    ] {
        let r = raw_request(gw.addr(), &get(target, HOST, "")).await;
        assert_eq!((r.status, r.json()["error"].as_str()), (400, Some(code)), "{target}");
    }
    // Raw backslashes and bytes outside printable ASCII: refused, by the HTTP parser or by
    // the canonicaliser, but refused.
    for target in ["/public\\..\\secret/plans.txt", "/public/..\\secret/plans.txt", "/public/caf\u{e9}"] {
        let r = raw_request(gw.addr(), &get(target, HOST, "")).await;
        assert_eq!(r.status, 400, "{target:?}");
    }
    assert_eq!(p.requests(), 0, "nothing refused reached the pod: {:?}", p.targets());

    // The public route still answers, with the canonical path and the query as sent.
    for (target, upstream) in [
        ("/public/./forms/../permits", "/public/permits"),
        ("/public/%7euser", "/public/~user"),
        ("/public//x///y", "/public/x/y"),
        ("/public/%e4%b8%ad?q=%2e%2e/../&a=b", "/public/%E4%B8%AD?q=%2e%2e/../&a=b"),
        ("/files/a%2fb", "/files/a%2Fb"),
    ] {
        let r = raw_request(gw.addr(), &get(target, HOST, "")).await;
        assert_eq!(r.status, 200, "{target}");
        let path = upstream.split('?').next().unwrap_or(upstream);
        assert_eq!(r.json()["path"], path, "{target}");
    }
    // Even where encoded slashes are allowed, a dot segment hidden behind one is not.
    let r = raw_request(gw.addr(), &get("/files/..%2f..%2fsecret/plans.txt", HOST, "")).await;
    assert_eq!(r.status, 400);

    // A citizen's token: the policy allows only if the path it is shown is the one the pod
    // then receives.
    let token = issuer.token(Algorithm::ES256, serde_json::json!({}));
    for target in ["/public/../secret/plans.txt", "/secret/./plans.txt", "/secret/%70lans.txt"] {
        let auth = format!("Authorization: Bearer {token}\r\nX-Expect-Path: /secret/plans.txt\r\n");
        let r = raw_request(gw.addr(), &get(target, HOST, &auth)).await;
        assert_eq!(r.status, 200, "{target}: the policy saw the canonical path");
        assert_eq!(r.json()["path"], "/secret/plans.txt");
        // Told to expect the raw path, the policy denies: it never sees the raw one.
        let auth = format!("Authorization: Bearer {token}\r\nX-Expect-Path: {target}\r\n");
        let r = raw_request(gw.addr(), &get(target, HOST, &auth)).await;
        assert_eq!(r.status, 403, "{target}");
    }

    let targets = p.targets();
    assert_eq!(
        targets.iter().filter(|t| t.as_str() == "/secret/plans.txt").count(),
        3,
        "each allowed citizen request reached the pod once, canonical: {targets:?}"
    );
    for t in &targets {
        let path = t.split('?').next().unwrap_or(t);
        let canonical = CanonicalRequest::new(None, path.as_bytes()).expect("pod saw a valid path");
        assert_eq!(canonical.path(), path, "the pod saw a non-canonical path");
    }
    assert!(targets.iter().all(|t| t.starts_with('/')), "no absolute-form target reached the pod: {targets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_variants_route_cache_and_authorise_alike() {
    let (issuer, p, gw) = setup().await;

    let variants =
        ["zwfw.example.gov.cn", "ZWFW.Example.gov.cn.", "zwfw.example.gov.cn:80", "Zwfw.Example.Gov.Cn.:8080"];
    // One cached entry serves every spelling of the host; a port other than the scheme's
    // default reaches the pod, so it has an entry of its own.
    for (host, cache) in variants.iter().zip(["MISS", "HIT", "HIT", "MISS"]) {
        let r = raw_request(gw.addr(), &get("/cached/./list", host, "")).await;
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(r.header("x-cache"), Some(cache), "{host}");
    }
    assert_eq!(p.targets(), vec!["/cached/list".to_owned(); 2], "one upstream fetch per host and port");

    // The policy is shown the canonical host whatever the spelling.
    let token = issuer.token(Algorithm::ES256, serde_json::json!({}));
    for host in variants {
        let auth = format!("Authorization: Bearer {token}\r\nX-Expect-Path: /secret/x\r\n");
        let r = raw_request(gw.addr(), &get("/secret/x", host, &auth)).await;
        assert_eq!(r.status, 200, "{host}");
    }
    // Hosts that are not names are refused before routing.
    for host in ["zwfw%2eexample.gov.cn", "zwfw.example.gov.cn:99999", "zwfw.example.gov.cn:x", "[::1"] {
        let r = raw_request(gw.addr(), &get("/public/x", host, "")).await;
        assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("bad_host")), "{host}");
    }
    // Two cached fetches (the plain host, `:8080`) and the four policy requests.
    assert_eq!(p.requests(), 6);
}
