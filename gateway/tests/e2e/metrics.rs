//! `/metrics` as an operator's Prometheus sees it: exact counts for known traffic, no
//! high-cardinality label, a scrape `promtool` accepts, and the shipped dashboard and
//! rules naming only metrics a gateway with every feature on really exports.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;

use crate::support::*;

/// The sample lines of a scrape (no comments).
fn samples(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty())
}

/// Polls until every `(series, value)` holds (metrics are recorded just after a response
/// goes out); fails naming what differs.
async fn expect_exact(gw: &Gateway, expected: &[(String, f64)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = gw.metrics().await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(s, v)| metric_value(&text, s) != Some(*v))
            .map(|(s, v)| format!("{s}: want {v}, got {:?}", metric_value(&text, s)))
            .collect();
        if wrong.is_empty() {
            return text;
        }
        assert!(Instant::now() < deadline, "{wrong:#?}\nin:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Labels a series may carry: all bounded by config, never per request.
const ALLOWED_LABELS: &[&str] = &[
    "cpu_level",
    "route",
    "status_class",
    "result",
    "upstream",
    "endpoint",
    "locality",
    "listener",
    "version",
    "status",
    "reason",
    "certificate",
    "name",
    "le",
];

fn label_pairs(line: &str) -> Vec<(String, String)> {
    let Some(open) = line.find('{') else { return Vec::new() };
    let close = line.rfind('}').expect("closing brace");
    let mut out = Vec::new();
    let mut rest = &line[open + 1..close];
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim_start_matches(',').to_owned();
        let after = &rest[eq + 2..];
        let mut end = 0;
        let bytes = after.as_bytes();
        while end < bytes.len() && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\')) {
            end += 1;
        }
        out.push((name, after[..end].to_owned()));
        rest = &after[(end + 1).min(after.len())..];
    }
    out
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new("promtool");
    cmd.args(args);
    let out = match stdin {
        Some(text) => {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("scrape.txt");
            std::fs::write(&file, text).expect("write scrape");
            output(cmd.stdin(std::fs::File::open(&file).expect("open scrape")))
        }
        None => output(&mut cmd),
    };
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_traffic_gives_exact_counts_and_bounded_labels() {
    let issuer = Issuer::new();
    let p = pod("svc").await;
    let dead = closed_port();
    let yaml = policy_yaml(
        BEHIND_TLS_LISTENER,
        p.addr,
        "  - {name: services, match: {path_prefix: /api/}, upstream: svc, policy: data.government.digital.allow}\n  - {name: cached, match: {path_prefix: /cached/}, upstream: svc, public: true, cache: {ttl: 60s}}\n  - {name: broken, match: {path_prefix: /broken/}, upstream: dead, public: true}\n",
        "",
    )
    .replace("upstreams:\n", &format!("upstreams:\n  dead: {{endpoints: [{{address: \"{dead}\"}}]}}\n"));
    let gw = Gateway::launch(&yaml, Launch { dir: Some(policy_dir(&issuer)), ..Launch::default() }).await;
    let c = client();
    let citizen = issuer.token(Algorithm::ES256, serde_json::json!({"sub": "citizen-7"}));
    let admin = issuer.token(Algorithm::ES256, serde_json::json!({"role": "admin"}));
    let get = |path: &str, token: Option<&str>| get_status(&c, gw.url(path), token, Some("req-metrics-1"));
    for (path, token, status) in [
        ("/api/permits/1?id=9", Some(&citizen), 200),
        ("/api/permits/2", Some(&citizen), 200),
        ("/api/permits/3", Some(&admin), 403),
        ("/api/permits/4", None, 401),
        ("/nowhere", None, 404),
        ("/cached/a", None, 200),
        ("/cached/a", None, 200),
        ("/broken/x", None, 502),
    ] {
        assert_eq!(get(path, token.map(String::as_str)).await, status, "{path}");
    }
    let ep = format!("upstream=\"svc\",endpoint=\"{}\",locality=\"local\"", p.addr);
    let dead_ep = format!("upstream=\"dead\",endpoint=\"{dead}\",locality=\"local\"");
    let expected: Vec<(String, f64)> = [
        (r#"edgegate_requests_total{route="services",status_class="2xx"}"#.to_owned(), 2.0),
        (r#"edgegate_requests_total{route="services",status_class="4xx"}"#.to_owned(), 2.0),
        (r#"edgegate_requests_total{route="services",status_class="5xx"}"#.to_owned(), 0.0),
        (r#"edgegate_requests_total{route="-",status_class="4xx"}"#.to_owned(), 1.0),
        (r#"edgegate_requests_total{route="cached",status_class="2xx"}"#.to_owned(), 2.0),
        (r#"edgegate_requests_total{route="broken",status_class="5xx"}"#.to_owned(), 1.0),
        (r#"edgegate_request_duration_seconds_count{route="services",status_class="2xx"}"#.to_owned(), 2.0),
        (r#"edgegate_request_duration_seconds_count{route="services",status_class="4xx"}"#.to_owned(), 2.0),
        (r#"edgegate_request_duration_seconds_bucket{route="services",status_class="4xx",le="+Inf"}"#.to_owned(), 2.0),
        (r#"edgegate_request_duration_seconds_count{route="broken",status_class="5xx"}"#.to_owned(), 1.0),
        (r#"edgegate_policy_decisions_total{result="allow",route="services"}"#.to_owned(), 2.0),
        (r#"edgegate_policy_decisions_total{result="deny",route="services"}"#.to_owned(), 1.0),
        (r#"edgegate_policy_decisions_total{result="unauthenticated",route="services"}"#.to_owned(), 1.0),
        (r#"edgegate_cache_lookups_total{result="hit",route="cached"}"#.to_owned(), 1.0),
        (r#"edgegate_cache_lookups_total{result="miss",route="cached"}"#.to_owned(), 1.0),
        // Two allowed requests and the cache miss reached the pod; the hit did not.
        (format!("edgegate_upstream_requests_total{{{ep},result=\"response\"}}"), 3.0),
        (format!("edgegate_upstream_requests_total{{{ep},result=\"5xx\"}}"), 0.0),
        (format!("edgegate_upstream_duration_seconds_count{{{ep}}}"), 3.0),
        (format!("edgegate_upstream_requests_total{{{dead_ep},result=\"connect_error\"}}"), 1.0),
        (format!("edgegate_upstream_duration_seconds_count{{{dead_ep}}}"), 0.0),
        (r#"edgegate_route_inflight_requests{route="services"}"#.to_owned(), 0.0),
        (r#"edgegate_route_inflight_requests{route="cached"}"#.to_owned(), 0.0),
        ("edgegate_inflight_requests".to_owned(), 0.0),
        // The build serving: its version and the CPU level it was built for (this test's
        // binary is built as the default build is, or names its level alike).
        (
            format!(
                "edgegate_build_info{{cpu_level=\"{}\",version=\"{}\"}}",
                edgegate::cpu::level(),
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
    ]
    .into_iter()
    .collect();
    let text = expect_exact(&gw, &expected).await;
    // Refusals by reason: the 401, 403, 404 and 502 were written by the gateway itself.
    let replies = |status: &str| -> f64 {
        samples(&text)
            .filter(|l| l.starts_with("edgegate_gateway_replies_total{") && l.contains(&format!("status=\"{status}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!((replies("401"), replies("403"), replies("404"), replies("502")), (1.0, 1.0, 1.0, 1.0), "{text}");
    // A class a route never answered has no histogram: no empty series per route.
    assert!(!text.contains(r#"edgegate_request_duration_seconds_count{route="services",status_class="1xx"}"#));

    // No label outside the bounded set, and no value that is a path, user, client or request id.
    for line in samples(&text) {
        for (name, value) in label_pairs(line) {
            assert!(ALLOWED_LABELS.contains(&name.as_str()), "label {name:?} is not allowed: {line}");
            for forbidden in ["/api/", "/cached/", "citizen-7", "req-metrics-1", "id=9"] {
                assert!(!value.contains(forbidden), "{forbidden} leaked into a label: {line}");
            }
            assert_ne!(value, "127.0.0.1", "a client address as a label: {line}");
        }
    }
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics:\n{out}");
}

/// Metric names a PromQL expression refers to (recording rules, `edgegate:…`, excluded).
fn referenced_names(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':') {
            i += 1;
        }
        let word = &expr[start..i];
        if (word.starts_with("edgegate_") || word.starts_with("process_")) && !word.contains(':') {
            into.insert(word.to_owned());
        }
        if i == start {
            i += 1;
        }
    }
}

fn json_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => json_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_exprs(v, out)),
        _ => {}
    }
}

fn monitoring(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring").join(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_rules_name_only_metrics_a_gateway_exports() {
    // The rule files are valid, and the operator's copy says the same as the plain one.
    let rules_path = monitoring("rules.yml");
    let (ok, out) = promtool(&["check", "rules", rules_path.to_str().expect("path")], None);
    assert!(ok, "promtool check rules:\n{out}");
    // The alerts fire on the series they are meant for, and stay quiet within budget.
    let tests_path = monitoring("rules.test.yml");
    let (ok, out) = promtool(&["test", "rules", tests_path.to_str().expect("path")], None);
    assert!(ok, "promtool test rules:\n{out}");
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&rules_path).expect("rules.yml")).expect("YAML");
    let operator: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(monitoring("prometheusrule.yaml")).expect("prometheusrule"))
            .expect("YAML");
    assert_eq!(operator["spec"]["groups"], rules["groups"], "prometheusrule.yaml drifted from rules.yml");

    let mut names = BTreeSet::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            referenced_names(rule["expr"].as_str().expect("expr"), &mut names);
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring("dashboard.json")).expect("dashboard")).expect("JSON");
    let mut exprs = Vec::new();
    json_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 30, "the dashboard has its panels' queries: {}", exprs.len());
    for e in &exprs {
        referenced_names(e, &mut names);
    }
    // Template variables query through label_values(…).
    referenced_names(dashboard["templating"].to_string().as_str(), &mut names);

    // A gateway with every feature on: TLS, policy, cache with Redis, global rate limit,
    // audit with forwarding — and traffic through each, so every family has a sample.
    let issuer = Issuer::new();
    let redis = RedisServer::start().await;
    let p = pod("svc").await;
    let dir = policy_dir(&issuer);
    let ca = crate::tls::Ca::new();
    let tls_dir = dir.path().join("config/tls");
    std::fs::create_dir_all(&tls_dir).expect("mkdir");
    ca.issue(&tls_dir, "site", &["site.gov.test"]);
    let yaml = policy_yaml(
        "  - {name: public, address: \"127.0.0.1:0\", behind_tls: true}\n  - {name: secure, address: \"127.0.0.1:0\", tls: {certificates: [{cert: tls/site.crt, key: tls/site.key}]}}\n",
        p.addr,
        "  - {name: services, match: {path_prefix: /api/}, upstream: svc, policy: data.government.digital.allow}\n  - {name: cached, match: {path_prefix: /cached/}, upstream: svc, public: true, cache: {ttl: 60s}, rate_limit: {rate: 1000, global: true, nodes: 2}}\n",
        &format!(
            "cache: {{memory: 16MiB, redis: {{url: \"{}\", timeout: 100ms}}}}\naudit: {{db: audit.db, forward: {{url: \"http://{}/ingest\"}}}}\n",
            redis.url(),
            closed_port()
        ),
    );
    // A group discovered from the cluster too (its API server unreachable here).
    let yaml = yaml.replace(
        "upstreams:\n",
        "upstreams:\n  found: {discovery: {kubernetes: {namespace: gov, service: permits, port: http}}}\n",
    );
    let env = vec![(edgegate::discovery::API_URL_ENV.to_owned(), format!("http://{}", closed_port()))];
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), env, ..Launch::default() }).await;
    let c = client();
    let citizen = issuer.token(Algorithm::ES256, serde_json::json!({"sub": "citizen-7"}));
    assert_eq!(c.get(gw.url("/api/x")).bearer_auth(&citizen).send().await.expect("request").status(), 200);
    for path in ["/cached/a", "/cached/a", "/cached/b"] {
        assert_eq!(c.get(gw.url(path)).send().await.expect("request").status(), 200);
    }
    assert_eq!(c.get(gw.url("/nowhere")).send().await.expect("request").status(), 404);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = gw.metrics().await;
        let exported: BTreeSet<&str> = samples(&text)
            .map(|l| l.split(['{', ' ']).next().unwrap_or_default())
            .flat_map(|n| {
                let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| n.strip_suffix(s));
                [Some(n), base].into_iter().flatten()
            })
            .collect();
        let missing: Vec<&String> = names.iter().filter(|n| !exported.contains(n.as_str())).collect();
        if missing.is_empty() {
            break text;
        }
        assert!(Instant::now() < deadline, "named by the dashboard or rules but not exported: {missing:?}\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(names.len() > 40, "{names:?}");
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics:\n{out}");
}
