//! One policy decision for the shipped policy: build the input document and evaluate
//! `data.government.digital.allow` on this thread's RVM.
//!
//! Run: cargo bench -p edgegate-benches --bench policy_decision
//!
//! Target (issue 5): ≤ 2 µs per decision.

use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use edgegate_filters::identity::User;
use edgegate_filters::policy::{input, PolicySet, Request, RequestFields};

const ALLOW: &str = "data.government.digital.allow";

// The gateway's allocator, so allocation costs are the production ones (until 2026-12-06
// this benchmark ran on the system allocator).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy");
    let set = PolicySet::load(&dir, &[ALLOW]).expect("shipped policy compiles");
    let mut headers = http::HeaderMap::new();
    for (k, v) in [("accept", "application/json"), ("user-agent", "zwfw-app/5.2"), ("accept-language", "zh-CN")] {
        headers.insert(k, http::HeaderValue::from_static(v));
    }
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), "citizen-42".into());
    claims.insert("role".into(), "citizen".into());
    let citizen = User::new("citizen-42".into(), Some("citizen".into()), &claims);
    let request = |user: Option<&'static User>| Request {
        action: "service_request",
        user,
        data_encrypted: true,
        audit_enabled: true,
        method: "GET",
        host: "zwfw.example.gov.cn",
        path: "/api/permits/residence/123",
        query: Some("lang=zh"),
        headers: Box::leak(Box::new(headers.clone())),
        route: "services",
        source_ip: Some("10.42.3.7".parse().expect("ip")),
    };
    let citizen: &'static User = Box::leak(Box::new(citizen));
    let allow_req = request(Some(citizen));
    assert_eq!(set.allows(ALLOW, input(&allow_req, &set.request)), Ok(true));

    let mut group = c.benchmark_group("policy_decision");
    let needs = &set.request;
    group.bench_function("input_build", |b| b.iter(|| black_box(input(black_box(&allow_req), needs))));
    group.bench_function("input_build+decide/citizen", |b| {
        b.iter(|| set.allows(ALLOW, input(black_box(&allow_req), needs)))
    });
    // The same citizen's decision remembered (a verified token's later request with the
    // same input): what the access step does instead of building the input and deciding.
    let asked = edgegate_filters::policy::Asked {
        decision: ALLOW,
        action: "service_request",
        route: "services",
        method: "GET",
        host: "zwfw.example.gov.cn",
        path: "/api/permits/residence/123",
        headers: allow_req.headers,
        query: allow_req.query,
        encrypted: true,
        audit: true,
        ip: Some("10.42.3.7".parse().expect("ip")),
    };
    set.remember(Some(citizen), &asked, true);
    assert_eq!(set.remembered(Some(citizen), &asked), Some(true));
    group.bench_function("remembered/citizen", |b| {
        b.iter(|| set.remembered(black_box(Some(citizen)), black_box(&asked)))
    });
    // A request without a token on an `identity: optional` route, its decision remembered
    // by the worker: the slot's hash and the question compared.
    set.remember(None, &asked, false);
    assert_eq!(set.remembered(None, &asked), Some(false));
    group.bench_function("remembered/anonymous", |b| b.iter(|| set.remembered(black_box(None), black_box(&asked))));
    let anon_req = request(None);
    group.bench_function("input_build+decide/anonymous", |b| {
        b.iter(|| set.allows(ALLOW, input(black_box(&anon_req), needs)))
    });
    group.bench_function("input_build+decide/citizen, full input", |b| {
        b.iter(|| set.allows(ALLOW, input(black_box(&allow_req), &RequestFields::ALL)))
    });
    // A hostile query within `limits.header_bytes` (16 KiB): one parameter 4,000 times,
    // 2,000 parameters each once, or as many distinct names as fit (every two-letter name,
    // 4,096 of them in 12 KiB), for a policy that reads `input.request`.
    let repeated: &'static str = Box::leak("a=&".repeat(4_000).into_boxed_str());
    let distinct: &'static str = Box::leak((0..2_000).map(|i| format!("p{i}=1&")).collect::<String>().into_boxed_str());
    let letters = || (b'A'..=b'Z').chain(b'a'..=b'z').chain(b'0'..=b'9').chain([b'-', b'_']).map(char::from);
    let short: String = letters().flat_map(|a| letters().map(move |b| format!("{b}{a}&"))).collect();
    let short: &'static str = Box::leak(short.into_boxed_str());
    let cases = [("one key 4,000 times", repeated), ("2,000 keys", distinct), ("4,096 two-letter keys", short)];
    for (name, query) in cases {
        let hostile = Request { query: Some(query), ..request(Some(citizen)) };
        group.bench_function(format!("input_build, full input, query of {name}"), |b| {
            b.iter(|| black_box(input(black_box(&hostile), &RequestFields::ALL)))
        });
    }
    // A policy that reads the request's method and path (as most route rules would): the
    // input built with those two fields only, beside the whole request section.
    let paths = tempfile::tempdir().expect("tempdir");
    let rule = "package t\nimport rego.v1\n\
        allow if { input.user.role == \"citizen\"; input.request.method == \"GET\"; startswith(input.request.path, \"/api/\") }\n";
    std::fs::write(paths.path().join("p.rego"), rule).expect("write");
    let by_path = PolicySet::load(paths.path(), &["data.t.allow"]).expect("compiles");
    assert_eq!(by_path.allows("data.t.allow", input(&allow_req, &by_path.request)), Ok(true));
    for (name, fields) in [("method and path", &by_path.request), ("full input", &RequestFields::ALL)] {
        group.bench_function(format!("input_build+decide/citizen, a rule on the method and path, {name}"), |b| {
            b.iter(|| by_path.allows("data.t.allow", input(black_box(&allow_req), fields)))
        });
    }
    // A policy that reads one header by name: the input built with that header alone (as
    // edgegate builds it), beside the whole header map (as it did before it told named
    // reads apart), and the decision remembered (the question keyed by the header's value).
    let by_header = tempfile::tempdir().expect("tempdir");
    let rule = "package t\nimport rego.v1\n\
        allow if { input.user.role == \"citizen\"; startswith(input.request.headers[\"user-agent\"], \"zwfw-app/\") }\n";
    std::fs::write(by_header.path().join("p.rego"), rule).expect("write");
    let by_header = PolicySet::load(by_header.path(), &["data.t.allow"]).expect("compiles");
    assert!(by_header.remembers());
    let whole_headers = RequestFields { headers: edgegate_filters::policy::Names::All, ..RequestFields::default() };
    for (name, fields) in [("that header", &by_header.request), ("every header", &whole_headers)] {
        assert_eq!(by_header.allows("data.t.allow", input(&allow_req, fields)), Ok(true));
        group.bench_function(format!("input_build+decide/citizen, a rule on a named header, {name}"), |b| {
            b.iter(|| by_header.allows("data.t.allow", input(black_box(&allow_req), fields)))
        });
    }
    let asked_header = edgegate_filters::policy::Asked { decision: "data.t.allow", ..asked };
    by_header.remember(Some(citizen), &asked_header, true);
    assert_eq!(by_header.remembered(Some(citizen), &asked_header), Some(true));
    group.bench_function("remembered/citizen, a rule on a named header", |b| {
        b.iter(|| by_header.remembered(black_box(Some(citizen)), black_box(&asked_header)))
    });
    // A decision by the local hour in a named zone (a zone's offset from regorus' time
    // builtins; since regorus patch 100 from jiff's bundled database), beside the same rule
    // in UTC, which looks nothing up: what finding the zone adds to a decision.
    let zones = tempfile::tempdir().expect("tempdir");
    let rules = "package t\nimport rego.v1\n\
        by_zone if time.clock([time.now_ns(), \"Asia/Shanghai\"])[0] >= 0\n\
        by_utc if time.clock([time.now_ns(), \"UTC\"])[0] >= 0\n";
    std::fs::write(zones.path().join("p.rego"), rules).expect("write");
    let timed = PolicySet::load(zones.path(), &["data.t.by_zone", "data.t.by_utc"]).expect("compiles");
    for (name, rule) in [("Asia/Shanghai", "data.t.by_zone"), ("UTC", "data.t.by_utc")] {
        assert_eq!(timed.allows(rule, input(&anon_req, &timed.request)), Ok(true));
        group.bench_function(format!("decide/the hour in {name}"), |b| {
            b.iter(|| timed.allows(rule, input(black_box(&anon_req), &timed.request)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
