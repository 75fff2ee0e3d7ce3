//! Routing by host (exact, wildcard), path (prefix, longest prefix, exact) and method.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_and_method() {
    let names = ["exact-host", "wildcard", "api", "api-v2", "status", "forms"];
    let mut pods = Vec::new();
    for n in names {
        pods.push(pod(n).await);
    }
    let mut ups = String::from("upstreams:\n");
    for (n, p) in names.iter().zip(&pods) {
        ups.push_str(&group(n, &[p.addr]));
    }
    let gw = Gateway::start(&config(&format!(
        "{ups}routes:
  - {{name: exact-host, match: {{host: zwfw.example.gov.cn}}, upstream: exact-host, public: true}}
  - {{name: wildcard, match: {{host: \"*.districts.example.gov.cn\"}}, upstream: wildcard, public: true}}
  - {{name: api, match: {{path_prefix: /api/}}, upstream: api, public: true}}
  - {{name: api-v2, match: {{path_prefix: /api/v2/}}, upstream: api-v2, public: true}}
  - {{name: status, match: {{path: /api/status}}, upstream: status, public: true}}
  - {{name: forms, match: {{path_prefix: /forms/, methods: [POST]}}, upstream: forms, public: true}}
"
    )))
    .await;
    let c = client();

    let service_for = |host: &'static str, method: reqwest::Method, path: &'static str| {
        let c = c.clone();
        let url = gw.url(path);
        async move {
            let resp = c.request(method, url).header("host", host).body("x").send().await.expect("request");
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.expect("JSON body");
            match status {
                200 => body["service"].as_str().expect("service").to_owned(),
                s => format!("{s} {}", body["error"].as_str().unwrap_or("?")),
            }
        }
    };
    use reqwest::Method as M;
    assert_eq!(service_for("zwfw.example.gov.cn", M::GET, "/anything").await, "exact-host");
    assert_eq!(
        service_for("ZWFW.Example.gov.cn:8080", M::GET, "/api/x").await,
        "exact-host",
        "host is case-insensitive, port ignored"
    );
    assert_eq!(service_for("north.districts.example.gov.cn", M::GET, "/").await, "wildcard");
    assert_eq!(service_for("a.b.districts.example.gov.cn", M::GET, "/").await, "wildcard");
    assert_eq!(
        service_for("districts.example.gov.cn", M::GET, "/").await,
        "404 no_route",
        "wildcard excludes the bare suffix"
    );
    assert_eq!(service_for("other.gov.cn", M::GET, "/api/x").await, "api");
    assert_eq!(service_for("other.gov.cn", M::GET, "/api/v2/forms").await, "api-v2", "longest prefix wins");
    assert_eq!(service_for("other.gov.cn", M::GET, "/api/status").await, "status", "exact path beats prefixes");
    assert_eq!(service_for("other.gov.cn", M::GET, "/api/status/more").await, "api");
    assert_eq!(service_for("other.gov.cn", M::POST, "/forms/permit").await, "forms");
    assert_eq!(service_for("other.gov.cn", M::GET, "/forms/permit").await, "405 method_not_allowed");

    let resp = c.get(gw.url("/forms/permit")).send().await.expect("request");
    assert_eq!(resp.headers()["allow"], "POST");

    // Each pod saw exactly the requests routed to it: 404/405 never reached one.
    let counts: Vec<usize> = pods.iter().map(|p| p.requests()).collect();
    assert_eq!(counts, [2, 2, 2, 1, 1, 1], "per-pod request counts for {names:?}");
}
