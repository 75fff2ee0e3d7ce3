use super::*;
use std::time::Duration;

const GOOD: &str = r#"
listeners:
  - {name: public, address: "0.0.0.0:8080"}
admin: {address: "127.0.0.1:9901"}
upstreams:
  gov-service:
    endpoints:
      - {address: "10.42.0.15:8080", locality: local}
      - {address: "10.42.1.20:8080", locality: remote, weight: 3}
routes:
  - name: services
    match: {host: zwfw.example.gov.cn, path_prefix: /api/, methods: [GET, POST]}
    upstream: gov-service
    timeouts: {connect: 500ms, read: 5s}
  - name: wildcard
    match: {host: "*.example.gov.cn", path: /exact}
    upstream: gov-service
shutdown: {grace_period: 15s}
logging: {access_log: false}
"#;

fn errors_of(text: &str) -> Vec<String> {
    match Config::from_yaml(text) {
        Ok(_) => panic!("config unexpectedly valid"),
        Err(e) => e.field_errors().iter().map(ToString::to_string).collect(),
    }
}

fn has(errors: &[String], needle: &str) -> bool {
    errors.iter().any(|e| e.contains(needle))
}

#[test]
fn valid_config_builds_runtime_types() {
    let c = Config::from_yaml(GOOD).expect("valid");
    assert_eq!(c.listeners[0].address, "0.0.0.0:8080".parse().expect("addr"));
    let (id, group) = c.upstream("gov-service").expect("group");
    assert_eq!(group.endpoints.len(), 2);
    assert_eq!(group.endpoints[1].locality, Locality::Remote);
    assert_eq!(group.endpoints[1].weight.get(), 3);
    let r = &c.routes[0];
    assert_eq!(r.upstream, id);
    assert_eq!(r.host, HostMatch::Exact("zwfw.example.gov.cn".into()));
    assert_eq!(r.path, PathMatch::Prefix("/api/".into()));
    assert!(r.methods.contains("GET") && r.methods.contains("POST") && !r.methods.contains("DELETE"));
    assert_eq!(r.timeouts.connect, Duration::from_millis(500));
    assert_eq!(r.timeouts.read, Duration::from_secs(5));
    assert_eq!(r.timeouts.write, RouteTimeouts::default().write);
    assert_eq!(c.routes[1].host, HostMatch::Suffix("example.gov.cn".into()));
    assert_eq!(c.routes[1].path, PathMatch::Exact("/exact".into()));
    assert!(c.routes[1].methods.contains("PATCH"));
    assert_eq!(c.shutdown.grace_period, Duration::from_secs(15));
    assert!(!c.logging.access_log);
}

#[test]
fn defaults_apply_when_sections_are_left_out() {
    let c = Config::from_yaml("listeners: [{name: p, address: '127.0.0.1:0'}]").expect("valid");
    assert_eq!(c.admin.address.to_string(), DEFAULT_ADMIN_ADDRESS);
    assert_eq!(c.shutdown.grace_period, DEFAULT_GRACE_PERIOD);
    assert!(c.logging.access_log);
    assert!(c.routes.is_empty());
}

#[test]
fn every_error_is_reported_with_its_field_path() {
    let errors = errors_of(
        r#"
listeners:
  - {name: public, address: "0.0.0.0:8080"}
  - {name: public, address: "127.0.0.1:8080"}
  - {name: other, address: "not-an-address"}
upstreams:
  empty: {endpoints: []}
  gov-service:
    endpoints: [{address: "10.0.0.1:80"}, {address: "10.0.0.1:80", weight: 0}]
routes:
  - {name: a, match: {path_prefix: /a}, upstream: gov-servce}
  - {name: a, match: {path_prefix: /b}, upstream: gov-service}
  - {name: c, match: {host: "bad host!", methods: [FETCH]}, upstream: gov-service}
"#,
    );
    for needle in [
        r#"listeners[1].name: duplicate listener name "public""#,
        "listeners[1].address: address 127.0.0.1:8080 conflicts with listeners[0].address",
        r#"listeners[2].address: unparseable address "not-an-address""#,
        "upstreams.empty.endpoints: must list at least one endpoint",
        "upstreams.gov-service.endpoints[1].address: duplicate endpoint 10.0.0.1:80",
        "upstreams.gov-service.endpoints[1].weight: weight 0 out of range",
        r#"routes[0].upstream: unknown upstream "gov-servce""#,
        r#"routes[1].name: duplicate route name "a" (also routes[0])"#,
        r#"routes[2].match.host: invalid host "bad host!""#,
        r#"routes[2].match.methods[0]: unknown method "FETCH""#,
    ] {
        assert!(has(&errors, needle), "missing {needle:?} in {errors:#?}");
    }
    assert_eq!(errors.len(), 10, "{errors:#?}");
}

#[test]
fn unknown_fields_and_wrong_types_name_their_path_and_do_not_hide_other_errors() {
    let errors = errors_of(
        r#"
listeners:
  - {name: public, adress: "0.0.0.0:8080"}
  - {name: second, address: 8080}
upstreams:
  svc: {endpoints: [{address: "10.0.0.1:80", locality: nearby}]}
routes:
  - {name: r, match: {host: a.gov, hots: b}, upstream: svc}
  - {name: t, upstream: nope, timeouts: {read: soon}}
runtime: {threads: many}
colour: blue
"#,
    );
    assert!(has(&errors, "listeners[0].adress: unknown field `adress`"), "{errors:#?}");
    assert!(has(&errors, "listeners[1].address: invalid type: integer `8080`, expected a string"), "{errors:#?}");
    assert!(has(&errors, "upstreams.svc.endpoints[0].locality: unknown variant `nearby`"), "{errors:#?}");
    assert!(has(&errors, "routes[0].match.hots: unknown field `hots`"), "{errors:#?}");
    assert!(has(&errors, r#"routes[1].timeouts.read: invalid duration "soon""#), "{errors:#?}");
    assert!(has(&errors, "runtime.threads: invalid type: string \"many\""), "{errors:#?}");
    assert!(has(&errors, "colour: unknown field"), "{errors:#?}");
    assert_eq!(errors.len(), 7, "no knock-on errors: {errors:#?}");
}

/// A duration past 100 years is refused where it is written: `check` called a timeout of
/// `18446744073709551615s` valid, and the gateway then panicked on every connection (its
/// deadline overflowed the clock). 100 years itself is accepted.
#[test]
fn a_duration_past_a_hundred_years_is_refused_by_field() {
    for (timeouts, field) in [
        ("{connect: 18446744073709551615s, read: 5s}", "routes[0].timeouts.connect"),
        ("{connect: 500ms, read: 101y}", "routes[0].timeouts.read"),
    ] {
        let errors = errors_of(&GOOD.replace("{connect: 500ms, read: 5s}", timeouts));
        assert!(has(&errors, &format!("{field}: invalid duration")), "{errors:#?}");
        assert!(has(&errors, "longer than 100 years"), "{errors:#?}");
        assert_eq!(errors.len(), 1, "{errors:#?}");
    }
    let c = Config::from_yaml(&GOOD.replace("{connect: 500ms, read: 5s}", "{connect: 100y, read: 36525d}"))
        .expect("100 years is the longest, and allowed");
    assert_eq!(c.routes[0].timeouts.read, raw::MOST_DURATION);
}

#[test]
fn a_route_to_a_broken_upstream_is_not_reported_twice() {
    let errors = errors_of(
        r#"
listeners: [{name: p, address: "127.0.0.1:0"}]
upstreams:
  svc: {endpoints: [{address: "10.0.0.1:80", bogus: 1}]}
routes: [{name: r, upstream: svc}]
"#,
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(has(&errors, "upstreams.svc.endpoints[0].bogus: unknown field `bogus`"));
}

#[test]
fn listener_conflicts_with_admin_and_wildcard_addresses() {
    let errors = errors_of(
        r#"
listeners:
  - {name: a, address: "127.0.0.1:9901"}
  - {name: b, address: "0.0.0.0:7000"}
  - {name: c, address: "10.1.1.1:7000"}
  - {name: d, address: "127.0.0.1:0"}
  - {name: e, address: "127.0.0.1:0"}
"#,
    );
    assert!(has(&errors, "listeners[0].address: address 127.0.0.1:9901 conflicts with admin.address"));
    assert!(has(&errors, "listeners[2].address: address 10.1.1.1:7000 conflicts with listeners[1].address"));
    assert_eq!(errors.len(), 2, "port 0 never conflicts: {errors:#?}");
}

#[test]
fn unreachable_duplicate_route_is_an_error_but_disjoint_methods_are_fine() {
    let base = r#"
listeners: [{name: p, address: "127.0.0.1:0"}]
upstreams: {svc: {endpoints: [{address: "10.0.0.1:80"}]}}
routes:
"#;
    let ok = format!("{base}  - {{name: r1, match: {{path_prefix: /x, methods: [GET]}}, upstream: svc}}\n  - {{name: r2, match: {{path_prefix: /x, methods: [POST]}}, upstream: svc}}\n");
    Config::from_yaml(&ok).expect("disjoint methods on one path are valid");
    let bad = format!("{base}  - {{name: r1, match: {{path_prefix: /x}}, upstream: svc}}\n  - {{name: r2, match: {{path_prefix: /x, methods: [POST]}}, upstream: svc}}\n");
    let errors = errors_of(&bad);
    assert!(has(&errors, "routes[1].match: same host, path and methods as routes[0]"), "{errors:#?}");
}

#[test]
fn path_rules() {
    let base = "listeners: [{name: p, address: '127.0.0.1:0'}]\nupstreams: {svc: {endpoints: [{address: '10.0.0.1:80'}]}}\nroutes:\n";
    let errors = errors_of(&format!("{base}  - {{name: a, match: {{path_prefix: api}}, upstream: svc}}\n  - {{name: b, match: {{path_prefix: /a, path: /a}}, upstream: svc}}\n"));
    assert!(has(&errors, r#"routes[0].match.path_prefix: invalid path "api""#));
    assert!(has(&errors, "routes[1].match: path_prefix and path are mutually exclusive"));
}

#[test]
fn syntax_errors_and_empty_files_are_reported() {
    assert!(has(&errors_of("listeners: [unclosed"), "YAML syntax"));
    assert!(has(&errors_of(""), "empty"));
    assert!(has(&errors_of("- a\n- b\n"), "expected a mapping at the top level, found a list"));
    assert!(has(&errors_of("admin: {address: '127.0.0.1:1'}"), "listeners: missing"));
}

/// The YAML scanner walked every open flow collection on each token, so nesting made a
/// scan quadratic: 100,000 nested `[` (200 KB) held a reload or `check` for 30 s, a 1 MiB
/// file for minutes. Nesting past 128 is now refused as it is scanned, naming where.
#[test]
fn flow_collections_nested_past_128_are_refused_as_they_are_scanned() {
    for (open, close) in [("[", "]"), ("{", "}"), ("[{", "}]")] {
        let text = format!("routes: {}1{}\n", open.repeat(100_000), close.repeat(100_000));
        let errors = errors_of(&text);
        assert!(
            has(&errors, "YAML syntax: flow collections nested more than 128 deep at line 1 column"),
            "{errors:#?}"
        );
    }
    // Nesting the scanner takes is left to the deserialiser's own limit.
    let errors = errors_of(&format!("routes: {}{}\n", "[".repeat(128), "]".repeat(128)));
    assert!(has(&errors, "YAML syntax: recursion limit exceeded"), "{errors:#?}");
}

#[test]
fn method_set_semantics() {
    let mut s = MethodSet::NONE;
    assert!(s.insert("GET"));
    assert!(!s.insert("FETCH"));
    assert!(s.contains("GET") && !s.contains("POST") && !s.contains("PURGE"));
    assert!(MethodSet::ANY.contains("PURGE"));
    assert_eq!(s.names().collect::<Vec<_>>(), vec!["GET"]);
}

#[test]
fn upstream_balancing_health_outlier_and_retry_settings() {
    let c = Config::from_yaml(
        r#"
listeners: [{name: p, address: "127.0.0.1:0"}]
upstreams:
  svc:
    endpoints: [{address: "10.0.0.1:80"}]
    balancer: {policy: round_robin, decay: 5s, default_rtt: 10ms, remote_factor: 2.5}
    health: {path: /healthz, interval: 1s, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 2}
    outlier: {consecutive_failures: 3, base_ejection_time: 1s, max_ejection_time: 10s, max_ejection_percent: 30}
    retry: {attempts: 1, on_status: [503], budget_ratio: 0.1, min_per_second: 5}
  plain: {endpoints: [{address: "10.0.0.2:80"}]}
"#,
    )
    .expect("valid");
    let (_, g) = c.upstream("svc").expect("svc");
    assert_eq!(g.balancer.policy, Policy::RoundRobin);
    assert_eq!(g.balancer.decay, Duration::from_secs(5));
    assert_eq!(g.balancer.remote_factor, 2.5);
    let h = g.health.as_ref().expect("health");
    assert_eq!(
        (h.path.as_str(), h.interval, h.timeout, h.healthy_threshold),
        ("/healthz", Duration::from_secs(1), Duration::from_millis(200), 1)
    );
    assert_eq!(g.outlier.consecutive_failures, 3);
    assert_eq!(g.outlier.max_ejection_percent, 30);
    assert_eq!(g.retry, RetryPolicy { attempts: 1, on_status: vec![503], budget_ratio: 0.1, min_per_second: 5 });
    let (_, plain) = c.upstream("plain").expect("plain");
    assert_eq!(plain.balancer, Balancer::default());
    assert_eq!(plain.health, None);
    assert_eq!(plain.outlier, Outlier::default());
    assert_eq!(plain.retry, RetryPolicy::default());
}

#[test]
fn upstream_setting_errors_name_their_fields() {
    // Every setting wrong at once; the unknown policy is a type error that hides the
    // semantic checks of the group, so it is tested alone first.
    let bad = r#"
listeners: [{name: p, address: "127.0.0.1:0"}]
upstreams:
  svc:
    endpoints: [{address: "10.0.0.1:80"}]
    balancer: {policy: fastest, remote_factor: 0.5}
    health: {path: healthz, interval: 1s, timeout: 2s, unhealthy_threshold: 0}
    outlier: {consecutive_failures: 0, base_ejection_time: 30s, max_ejection_time: 10s, max_ejection_percent: 150}
    retry: {attempts: 9, on_status: [404], budget_ratio: 2}
"#;
    let errors = errors_of(bad);
    assert!(has(&errors, "upstreams.svc.balancer.policy: unknown variant `fastest`"), "{errors:#?}");
    let errors = errors_of(&bad.replace("policy: fastest, ", ""));
    for needle in [
        "upstreams.svc.balancer.remote_factor: 0.5 out of range",
        r#"upstreams.svc.health.path: invalid path "healthz""#,
        "upstreams.svc.health.timeout: 2s is longer than the interval 1s",
        "upstreams.svc.health.unhealthy_threshold: must be at least 1",
        "upstreams.svc.outlier.consecutive_failures: must be at least 1",
        "upstreams.svc.outlier.max_ejection_time: must not be shorter than base_ejection_time",
        "upstreams.svc.outlier.max_ejection_percent: 150 is more than 100",
        "upstreams.svc.retry.attempts: 9 is more than 5",
        "upstreams.svc.retry.on_status[0]: 404 is not a 5xx status",
        "upstreams.svc.retry.budget_ratio: 2 out of range",
    ] {
        assert!(has(&errors, needle), "missing {needle:?} in {errors:#?}");
    }
    assert_eq!(errors.len(), 10, "{errors:#?}");
}

#[test]
fn upstream_tls_needs_a_name_to_verify() {
    let errors = errors_of(
        "listeners: [{name: p, address: '127.0.0.1:0'}]\nupstreams:\n  a: {endpoints: [{address: '10.0.0.1:443'}], tls: {ca: ca.pem}}\n",
    );
    assert!(has(&errors, "upstreams.a.tls.sni: required to verify"), "{errors:#?}");
    let c = Config::from_yaml(
        "listeners: [{name: p, address: '127.0.0.1:0'}]\nupstreams:\n  a: {endpoints: [{address: '10.0.0.1:443'}], tls: {verify: false}}\n  b: {endpoints: [{address: '10.0.0.2:443'}], tls: {sni: pods.gov.cn}}\n",
    )
    .expect("valid");
    assert_eq!(c.upstreams[0].tls, Some(UpstreamTls { sni: String::new(), ca: None, verify: false }));
    assert_eq!(c.upstreams[1].tls.as_ref().map(|t| (t.sni.as_str(), t.verify)), Some(("pods.gov.cn", true)));
}

#[test]
fn route_paths_must_be_canonical_to_be_reachable() {
    for (path, reason) in [
        ("/a/../b/", "no '.' or '..' segments"),
        ("/a/./b", "no '.' or '..' segments"),
        ("/a//b", "no '//'"),
        ("/%7Euser/", "write the character itself"),
        ("/%7euser/", "two upper-case hex digits"),
        ("/a%2fb", "two upper-case hex digits"),
        ("/a%00", "encoded control characters"),
        ("/a\\b", "without spaces"),
    ] {
        let yaml = GOOD.replace("path_prefix: /api/", &format!("path_prefix: {path:?}"));
        let errors = errors_of(&yaml);
        assert!(
            has(&errors, "routes[0].match.path_prefix: invalid path") && has(&errors, reason),
            "{path}: {errors:?}"
        );
    }
    // Canonical escapes of reserved and non-ASCII characters are fine, and so is a
    // trailing slash.
    let yaml = GOOD.replace("path_prefix: /api/", "path_prefix: \"/api/%E4%B8%AD/\"");
    assert_eq!(Config::from_yaml(&yaml).expect("valid").routes[0].path, PathMatch::Prefix("/api/%E4%B8%AD/".into()));
}

#[test]
fn encoded_slashes_are_a_per_route_opt_in() {
    let c = Config::from_yaml(GOOD).expect("valid");
    assert!(!c.routes[0].allow_encoded_slash, "refused by default");
    let yaml = GOOD.replace(
        "    timeouts: {connect: 500ms, read: 5s}",
        "    timeouts: {connect: 500ms, read: 5s}\n    path: {allow_encoded_slash: true}",
    );
    let c = Config::from_yaml(&yaml).expect("valid");
    assert!(c.routes[0].allow_encoded_slash && !c.routes[1].allow_encoded_slash);
    let typo = GOOD.replace(
        "    timeouts: {connect: 500ms, read: 5s}",
        "    timeouts: {connect: 500ms, read: 5s}\n    path: {allow_encoded_slashes: true}",
    );
    assert!(Config::from_yaml(&typo).is_err(), "unknown fields are errors");
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let open = GOOD.replace("admin: {address: \"127.0.0.1:9901\"}", "admin: {address: \"0.0.0.0:9901\"}");
    let errors = errors_of(&open);
    assert!(
        has(&errors, "admin.token_file: required when admin.address (0.0.0.0:9901) is not a loopback address"),
        "{errors:?}"
    );
    let closed = GOOD
        .replace("admin: {address: \"127.0.0.1:9901\"}", "admin: {address: \"0.0.0.0:9901\", token_file: admin.token}");
    let c = Config::from_yaml(&closed).expect("valid");
    assert_eq!(c.admin.token_file.as_deref(), Some(std::path::Path::new("admin.token")));
    assert!(c.dependencies().iter().any(|d| d.field == "admin.token_file"), "a rotated token is a config change");
    assert!(Config::from_yaml(GOOD).expect("valid").admin.token_file.is_none(), "loopback needs none");
}

#[test]
fn a_redis_off_loopback_needs_a_key() {
    let with = |redis: &str| format!("{GOOD}cache: {{redis: {redis}}}\n");
    let errors = errors_of(&with("{url: \"redis://:s3cret@10.1.2.3:6379/0\"}"));
    assert!(
        has(
            &errors,
            "cache.redis.key_file: required when cache.redis.url (redis://…@10.1.2.3:6379/0) is not a loopback address"
        ),
        "{errors:?}"
    );
    assert!(!format!("{errors:?}").contains("s3cret"), "the password is not repeated: {errors:?}");
    let keyed = Config::from_yaml(&with("{url: \"redis://cache.centre:6379\", key_file: l2.key}")).expect("valid");
    let redis = keyed.redis.as_ref().expect("redis");
    assert_eq!(redis.key_file.as_deref(), Some(std::path::Path::new("l2.key")));
    // The key is read once, at start: a reload naming another keeps the running one.
    let mut rotated =
        Config::from_yaml(&with("{url: \"redis://cache.centre:6379\", key_file: new.key}")).expect("valid");
    assert_eq!(rotated.keep_start_time_settings(&keyed), vec!["cache.redis"]);
    assert_eq!(rotated.redis.as_ref().and_then(|r| r.key_file.as_deref()), Some(std::path::Path::new("l2.key")));
    for local in ["redis://127.0.0.1:6379", "redis://localhost", "redis://[::1]:6379/1", "redis://u:p@127.0.0.2"] {
        let c = Config::from_yaml(&with(&format!("{{url: \"{local}\"}}"))).expect(local);
        assert!(c.redis.as_ref().is_some_and(|r| r.key_file.is_none()), "{local} needs no key");
    }
    // A rotation: the previous key beside the new one; alone it is refused.
    let rotating =
        Config::from_yaml(&with("{url: \"redis://cache.centre:6379\", key_file: new.key, previous_key_file: l2.key}"))
            .expect("valid");
    assert_eq!(
        rotating.redis.as_ref().and_then(|r| r.previous_key_file.as_deref()),
        Some(std::path::Path::new("l2.key"))
    );
    let errors = errors_of(&with("{url: \"redis://127.0.0.1:6379\", previous_key_file: l2.key}"));
    assert!(has(&errors, "cache.redis.previous_key_file: only beside cache.redis.key_file"), "{errors:?}");
    let tls = Config::from_yaml(&with("{url: \"rediss://cache.centre:6380\", key_file: l2.key, ca: centre-ca.pem}"))
        .expect("valid");
    assert_eq!(tls.redis.as_ref().and_then(|r| r.ca.as_deref()), Some(std::path::Path::new("centre-ca.pem")));
    let errors = errors_of(&with("{url: \"redis://127.0.0.1:6379\", ca: centre-ca.pem}"));
    assert!(has(&errors, "cache.redis.ca: only with a rediss:// URL"), "{errors:?}");
    for remote in ["redis://[2001:db8::1]:6379", "redis://127.0.0.1.example:6379", "redis://127.0.0.1@10.0.0.1"] {
        assert!(
            has(&errors_of(&with(&format!("{{url: \"{remote}\"}}"))), "cache.redis.key_file: required"),
            "{remote}"
        );
    }
}

#[test]
fn trusted_proxies_are_address_blocks() {
    let c = Config::from_yaml(&format!("{GOOD}trusted_proxies: [10.0.0.0/8, '2001:db8::/32', 192.168.1.7]\n"))
        .expect("valid");
    let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
    let t = &c.trusted_proxies;
    assert!(t[0].contains(ip("10.255.0.1")) && !t[0].contains(ip("11.0.0.1")));
    assert!(t[1].contains(ip("2001:db8:1::5")) && !t[1].contains(ip("2001:db9::1")));
    assert!(t[2].contains(ip("192.168.1.7")) && !t[2].contains(ip("192.168.1.8")));
    assert!(!t[0].contains(ip("::ffff:11.0.0.1")) && t[0].contains(ip("::ffff:10.0.0.1")), "v4-mapped v6 peers");
    let errors = errors_of(&format!("{GOOD}trusted_proxies: [10.0.0.0/33, everyone]\n"));
    assert!(has(&errors, "trusted_proxies[0]: invalid address block \"10.0.0.0/33\""), "{errors:?}");
    assert!(has(&errors, "trusted_proxies[1]: invalid address block \"everyone\""), "{errors:?}");
}

#[test]
fn body_limits_are_global_with_per_route_overrides() {
    let c = Config::from_yaml(GOOD).expect("valid");
    assert_eq!((c.limits.body, c.routes[0].body_limit), (DEFAULT_BODY_LIMIT, None));
    let yaml = format!(
        "{}limits: {{body: 4MiB}}\n",
        GOOD.replace(
            "    timeouts: {connect: 500ms, read: 5s}",
            "    timeouts: {connect: 500ms, read: 5s}\n    limits: {body: 100MB}"
        )
    );
    let c = Config::from_yaml(&yaml).expect("valid");
    assert_eq!((c.limits.body, c.routes[0].body_limit, c.routes[1].body_limit), (4 << 20, Some(100_000_000), None));
    let errors = errors_of(&format!("{GOOD}limits: {{body: lots}}\n"));
    assert!(has(&errors, "limits.body: invalid size \"lots\""), "{errors:?}");
    let errors = errors_of(&GOOD.replace(
        "    timeouts: {connect: 500ms, read: 5s}",
        "    timeouts: {connect: 500ms, read: 5s}\n    limits: {body: 0}",
    ));
    assert!(has(&errors, "routes[0].limits.body: invalid size \"0\""), "{errors:?}");
}

#[test]
fn head_limits_are_global_only() {
    let c = Config::from_yaml(&format!("{GOOD}limits: {{header_bytes: 32KiB, headers: 150}}\n")).expect("valid");
    assert_eq!((c.limits.header_bytes, c.limits.headers), (32 * 1024, 150));
    let d = Config::from_yaml(GOOD).expect("valid");
    assert_eq!((d.limits.header_bytes, d.limits.headers), (DEFAULT_HEADER_BYTES, DEFAULT_HEADERS));
    let errors = errors_of(&GOOD.replace(
        "    timeouts: {connect: 500ms, read: 5s}",
        "    timeouts: {connect: 500ms, read: 5s}\n    limits: {headers: 10}",
    ));
    assert!(has(&errors, "routes[0].limits.headers: global only"), "{errors:?}");
    assert!(has(&errors_of(&format!("{GOOD}limits: {{headers: 0}}\n")), "limits.headers: must be at least 1"));
}

#[test]
fn send_timeout_and_token_check_wait_have_their_defaults_are_global_and_positive() {
    type Field = fn(&Config) -> Duration;
    let fields: [(&str, u64, Field); 2] =
        [("send_timeout", 60, |c| c.limits.send_timeout), ("token_check_wait", 5, |c| c.limits.token_check_wait)];
    for (field, default, get) in fields {
        assert_eq!(get(&Config::from_yaml(GOOD).expect("valid")), Duration::from_secs(default), "{field}");
        let c = Config::from_yaml(&format!("{GOOD}limits: {{{field}: 250ms}}\n")).expect("valid");
        assert_eq!(get(&c), Duration::from_millis(250), "{field}");
        let errors = errors_of(&format!("{GOOD}limits: {{{field}: 0s}}\n"));
        assert!(has(&errors, &format!("limits.{field}: must be greater than 0")), "{errors:?}");
        let errors = errors_of(&GOOD.replace(
            "    timeouts: {connect: 500ms, read: 5s}",
            &format!("    timeouts: {{connect: 500ms, read: 5s}}\n    limits: {{{field}: 5m}}"),
        ));
        assert!(has(&errors, &format!("routes[0].limits.{field}: global only")), "{errors:?}");
    }
}

#[test]
fn the_per_client_and_stalled_response_caps_default_to_a_thousand_are_global_and_at_least_one() {
    type Field = fn(&Config) -> usize;
    let caps: [(&str, Field); 2] = [
        ("max_connections_per_client", |c| c.limits.max_connections_per_client),
        ("max_stalled_responses", |c| c.limits.max_stalled_responses),
    ];
    for (name, field) in caps {
        assert_eq!(field(&Config::from_yaml(GOOD).expect("valid")), 1000, "{name}");
        let c = Config::from_yaml(&format!("{GOOD}limits: {{{name}: 64}}\n")).expect("valid");
        assert_eq!(field(&c), 64, "{name}");
        let errors = errors_of(&format!("{GOOD}limits: {{{name}: 0}}\n"));
        assert!(has(&errors, &format!("limits.{name}: must be at least 1")), "{errors:?}");
        let errors = errors_of(&format!("{GOOD}limits: {{{name}: -1}}\n"));
        assert!(has(&errors, &format!("limits.{name}")), "{errors:?}");
        let errors = errors_of(&GOOD.replace(
            "    timeouts: {connect: 500ms, read: 5s}",
            &format!("    timeouts: {{connect: 500ms, read: 5s}}\n    limits: {{{name}: 5}}"),
        ));
        assert!(has(&errors, &format!("routes[0].limits.{name}: global only")), "{errors:?}");
    }
}

#[test]
fn rate_limits_name_their_key() {
    let with = |rl: &str| {
        GOOD.replace(
            "    timeouts: {connect: 500ms, read: 5s}",
            &format!("    timeouts: {{connect: 500ms, read: 5s}}\n    rate_limit: {rl}"),
        )
    };
    let c = Config::from_yaml(&with("{rate: 50}")).expect("valid");
    assert_eq!(
        c.routes[0].rate_limit,
        Some(RateLimit { rate: 50, burst: 50, key: RateLimitKey::ClientIp, global_nodes: None })
    );
    let c = Config::from_yaml(&with("{rate: 5, burst: 20, key: \"header:X-Api-Key\"}")).expect("valid");
    assert_eq!(c.routes[0].rate_limit.as_ref().map(|r| &r.key), Some(&RateLimitKey::Header("x-api-key".into())));
    assert_eq!(
        Config::from_yaml(&with("{rate: 5, key: user}")).expect("valid").routes[0].rate_limit.as_ref().map(|r| &r.key),
        Some(&RateLimitKey::User)
    );
    assert!(has(&errors_of(&with("{rate: 0}")), "routes[0].rate_limit.rate: must be at least 1"));
    assert!(has(&errors_of(&with("{rate: 5, key: cookie}")), "routes[0].rate_limit.key: unknown key \"cookie\""));
    // A fleet-wide budget below one request a second per gateway cannot be kept.
    let redis = "cache: {redis: {url: \"redis://127.0.0.1:6379\"}}\n";
    let global = |rl: &str| format!("{}{redis}", with(rl));
    assert!(Config::from_yaml(&global("{rate: 1000, global: true, nodes: 500}")).is_ok());
    let errors = errors_of(&global("{rate: 100, global: true, nodes: 500}"));
    assert!(has(&errors, "routes[0].rate_limit.rate: 100 is below nodes (500)"), "{errors:?}");
}

#[test]
fn a_client_address_has_budgets_of_new_connections_and_new_tokens() {
    let c = Config::from_yaml(GOOD).expect("valid");
    assert_eq!(c.limits.new_connections_per_client, ClientRate { rate: 100, burst: 500 });
    let c = Config::from_yaml(&format!("{GOOD}limits: {{new_connections_per_client: {{rate: 20}}}}\n")).expect("valid");
    assert_eq!(c.limits.new_connections_per_client, ClientRate { rate: 20, burst: 80 }, "burst: 4 × rate");
    for (raw, error) in [
        ("{rate: 0}", "limits.new_connections_per_client.rate: must be at least 1 a second"),
        ("{rate: 5, burst: 0}", "limits.new_connections_per_client.burst: must be at least 1"),
    ] {
        let errors = errors_of(&format!("{GOOD}limits: {{new_connections_per_client: {raw}}}\n"));
        assert!(has(&errors, error), "{errors:?}");
    }
    let errors = errors_of(&GOOD.replace(
        "    timeouts: {connect: 500ms, read: 5s}",
        "    timeouts: {connect: 500ms, read: 5s}\n    limits: {new_connections_per_client: {rate: 5}}",
    ));
    assert!(has(&errors, "routes[0].limits.new_connections_per_client: global only"), "{errors:?}");

    let jwt = |extra: &str| format!("{GOOD}identity: {{jwt: {{issuer: i, audience: a, keys: jwks.json{extra}}}}}\n");
    let c = Config::from_yaml(&jwt("")).expect("valid");
    assert_eq!(c.jwt.map(|j| j.new_tokens_per_client), Some(ClientRate { rate: 50, burst: 1000 }));
    let c = Config::from_yaml(&jwt(", new_tokens_per_client: {rate: 5, burst: 7}")).expect("valid");
    assert_eq!(c.jwt.map(|j| j.new_tokens_per_client), Some(ClientRate { rate: 5, burst: 7 }));
    let errors = errors_of(&jwt(", new_tokens_per_client: {rate: 0}"));
    assert!(has(&errors, "identity.jwt.new_tokens_per_client.rate: must be at least 1 a second"), "{errors:?}");
}

#[test]
fn audit_is_off_without_a_db_and_its_fields_are_checked() {
    let off = Config::from_yaml(GOOD).expect("valid");
    assert_eq!(off.audit.db, None);
    let on = Config::from_yaml(&format!(
        "{GOOD}audit: {{db: audit.db, retention: 30d, on_failure: allow, fields: {{query: keep}}, forward: {{url: \"https://c.example/ingest\"}}}}\n"
    ))
    .expect("valid");
    assert_eq!(on.audit.db.as_deref(), Some(std::path::Path::new("audit.db")));
    assert_eq!(on.audit.max_size, 10 << 30, "10GiB unless set");
    let sized = Config::from_yaml(&format!("{GOOD}audit: {{db: audit.db, max_size: 512MiB}}\n")).expect("valid");
    assert_eq!(sized.audit.max_size, 512 << 20);
    let errors = errors_of(&format!("{GOOD}audit: {{db: audit.db, max_size: 4KiB}}\n"));
    assert!(has(&errors, "audit.max_size: must be at least 64KiB"), "{errors:?}");
    assert_eq!(on.audit.retention, Duration::from_secs(30 * 86_400));
    assert!(!on.audit.deny_on_failure && on.audit.keep_query && on.audit.synchronous_full);
    assert_eq!(on.audit.forward.as_ref().map(|f| (f.batch, f.interval)), Some((1000, Duration::from_secs(1))));
    // The log's own checks: what was appended hourly, the whole log every 30 days.
    assert_eq!(
        (on.audit.verify_interval, on.audit.verify_full_interval),
        (Duration::from_secs(3_600), Duration::from_secs(30 * 86_400))
    );
    assert!(has(
        &errors_of(&format!("{GOOD}audit: {{db: audit.db, verify_full_interval: 0s}}\n")),
        "audit.verify_full_interval: must be greater than 0"
    ));
    // A record waits at most 100 ms for others to share its commit, unless told otherwise;
    // never 0 (a commit per record) nor longer than 5 s.
    assert_eq!(on.audit.commit_interval, Duration::from_millis(100));
    let set = Config::from_yaml(&format!("{GOOD}audit: {{db: audit.db, commit_interval: 250ms}}\n")).expect("valid");
    assert_eq!(set.audit.commit_interval, Duration::from_millis(250));
    for (interval, needle) in [
        ("0s", "audit.commit_interval: must be greater than 0"),
        ("1m", "audit.commit_interval: 60000 ms is longer than 5 s"),
    ] {
        let errors = errors_of(&format!("{GOOD}audit: {{db: audit.db, commit_interval: {interval}}}\n"));
        assert!(has(&errors, needle), "{needle} not in {errors:#?}");
    }

    let errors = errors_of(&format!(
        "{GOOD}audit: {{enabled: true, synchronous: sometimes, on_failure: ignore, checkpoint_records: 0, node: \"a b\", forward: {{url: \"ftp://x\"}}}}\n"
    ));
    for needle in [
        "audit.enabled: removed: policies see whether the audit sink is accepting records",
        "audit.synchronous: \"sometimes\": expected full or normal",
        "audit.on_failure: \"ignore\": expected deny or allow",
        "audit.checkpoint_records: must be at least 1",
        "audit.node: \"a b\"",
        "audit.forward.url: \"ftp://x\": expected an http:// or https:// URL",
        "audit.db: required when audit.forward or audit.signing_key is set",
    ] {
        assert!(has(&errors, needle), "{needle} not in {errors:#?}");
    }
    assert!(has(
        &errors_of(&format!("{GOOD}limits: {{head_timeout: 0s, max_connections: 0}}\n")),
        "limits.head_timeout: must be greater than 0"
    ));
    assert!(has(
        &errors_of(&format!("{GOOD}limits: {{max_connections: 0}}\n")),
        "limits.max_connections: must be at least 1"
    ));
}

#[test]
fn tracing_samples_a_share_and_exports_to_an_http_collector() {
    let base = "listeners: [{name: p, address: '127.0.0.1:0'}]\n";
    let c = Config::from_yaml(&format!(
        "{base}tracing: {{sample_ratio: 0.01, otlp: {{endpoint: 'http://otel:4318/v1/traces'}}}}"
    ))
    .expect("valid");
    assert_eq!(c.tracing.sample_ppm, 10_000);
    let otlp = c.tracing.otlp.expect("otlp");
    assert_eq!((otlp.batch, otlp.interval), (DEFAULT_OTLP_BATCH, DEFAULT_OTLP_INTERVAL));
    let plain = Config::from_yaml(base).expect("valid");
    assert_eq!((plain.tracing.sample_ppm, plain.tracing.otlp), (0, None), "none sampled, nothing exported by default");
    for (bad, field, says) in [
        ("{sample_ratio: 1.5}", "tracing.sample_ratio", "from 0.0 to 1.0"),
        ("{sample_ratio: -0.1}", "tracing.sample_ratio", "from 0.0 to 1.0"),
        ("{otlp: {batch: 10}}", "tracing.otlp.endpoint", "required"),
        ("{otlp: {endpoint: 'otel:4318'}}", "tracing.otlp.endpoint", "http:// or https://"),
        ("{otlp: {endpoint: 'http://otel', batch: 0}}", "tracing.otlp.batch", "at least 1"),
        ("{otlp: {endpoint: 'http://otel', interval: 0s}}", "tracing.otlp.interval", "greater than 0"),
    ] {
        let errors = errors_of(&format!("{base}tracing: {bad}"));
        assert!(errors.iter().any(|e| e.starts_with(field) && e.contains(says)), "{bad}: {errors:?}");
    }
}

#[test]
fn an_upstream_group_may_take_its_endpoints_from_a_service() {
    let base = "listeners: [{name: p, address: '127.0.0.1:0'}]\n";
    let c = Config::from_yaml(&format!(
        "{base}upstreams:\n  svc: {{discovery: {{kubernetes: {{namespace: gov-services, service: permits, port: http}}}}}}\n  num: {{discovery: {{kubernetes: {{namespace: gov, service: s, port: 8080}}}}}}\n"
    ))
    .expect("valid");
    let (_, g) = c.upstream("svc").expect("svc");
    assert!(g.endpoints.is_empty(), "none until the cluster answers");
    assert_eq!(
        g.discovery,
        Some(KubernetesDiscovery {
            namespace: "gov-services".into(),
            service: "permits".into(),
            port: DiscoveryPort::Name("http".into())
        })
    );
    assert_eq!(
        c.upstream("num").expect("num").1.discovery.as_ref().map(|d| &d.port),
        Some(&DiscoveryPort::Number(8080))
    );
    for (bad, field, says) in [
        ("{}", "upstreams.g.endpoints", "or set discovery"),
        ("{discovery: {}}", "upstreams.g.discovery", "expected kubernetes"),
        ("{discovery: {kubernetes: {service: s, port: 80}}}", "upstreams.g.discovery.kubernetes.namespace", "required"),
        (
            "{discovery: {kubernetes: {namespace: Gov, service: s, port: 80}}}",
            "upstreams.g.discovery.kubernetes.namespace",
            "DNS label",
        ),
        ("{discovery: {kubernetes: {namespace: g, service: s}}}", "upstreams.g.discovery.kubernetes.port", "required"),
        (
            "{discovery: {kubernetes: {namespace: g, service: s, port: 70000}}}",
            "upstreams.g.discovery.kubernetes.port",
            "out of range",
        ),
        (
            "{endpoints: [{address: '10.0.0.1:80'}], discovery: {kubernetes: {namespace: g, service: s, port: 80}}}",
            "upstreams.g.discovery",
            "either endpoints or discovery",
        ),
    ] {
        let errors = errors_of(&format!("{base}upstreams:\n  g: {bad}\n"));
        assert!(errors.iter().any(|e| e.starts_with(field) && e.contains(says)), "{bad}: {errors:?}");
    }
}

#[test]
fn tls_session_resumption_defaults_bounds_and_restart() {
    let with = |tls: &str| {
        GOOD.replace(
            r#"- {name: public, address: "0.0.0.0:8080"}"#,
            &format!(r#"- {{name: public, address: "0.0.0.0:8443", tls: {{certificates: [{{cert: a.crt, key: a.key}}]{tls}}}}}"#),
        )
    };
    let tls_of = |c: &Config| c.listeners[0].tls.clone().expect("tls");
    let defaults = Config::from_yaml(&with("")).expect("valid");
    assert!(tls_of(&defaults).session_tickets, "tickets on unless turned off");
    assert_eq!(tls_of(&defaults).session_cache, DEFAULT_TLS_SESSION_CACHE);
    let off = Config::from_yaml(&with(", session_tickets: false, session_cache: 0")).expect("valid");
    assert!(!tls_of(&off).session_tickets);
    assert_eq!(tls_of(&off).session_cache, 0);
    let errors = errors_of(&with(", session_cache: 1000001"));
    assert!(
        has(&errors, "listeners[0].tls.session_cache: 1000001 sessions is more than the most, 1000000"),
        "{errors:?}"
    );
    let errors = errors_of(&with(", session_cache: -1"));
    assert!(has(&errors, "listeners[0].tls.session_cache"), "{errors:?}");
    let fleet = Config::from_yaml(&with(", session_ticket_keys: tls/tickets.keys")).expect("valid");
    assert_eq!(tls_of(&fleet).session_ticket_keys.as_deref(), Some(std::path::Path::new("tls/tickets.keys")));
    assert_eq!(tls_of(&defaults).session_ticket_keys, None, "keys of the process's own unless set");
    let errors = errors_of(&with(", session_tickets: false, session_ticket_keys: k"));
    assert!(has(&errors, "listeners[0].tls.session_ticket_keys: set, but session_tickets is false"), "{errors:?}");
    assert!(has(
        &errors_of(&with(", session_ticket_keys: ' '")),
        "listeners[0].tls.session_ticket_keys: must not be empty"
    ));
    // Fixed when the listener is set up: a reload that changes either keeps the running ones.
    let mut changed = Config::from_yaml(&with(", session_tickets: false")).expect("valid");
    assert_eq!(changed.keep_start_time_settings(&defaults), vec!["listeners"]);
    assert!(tls_of(&changed).session_tickets);
    let mut keyed = Config::from_yaml(&with(", session_ticket_keys: other.keys")).expect("valid");
    assert_eq!(keyed.keep_start_time_settings(&fleet), vec!["listeners"]);
    assert_eq!(tls_of(&keyed).session_ticket_keys.as_deref(), Some(std::path::Path::new("tls/tickets.keys")));
}

#[test]
fn tls_handshake_threads_default_bound_and_restart() {
    let with = |runtime: &str| {
        GOOD.replace("logging: {access_log: false}", &format!("logging: {{access_log: false}}\nruntime: {runtime}"))
    };
    assert_eq!(Config::from_yaml(GOOD).expect("valid").runtime.tls_handshake_threads, 0, "on the workers unless set");
    let one = Config::from_yaml(&with("{threads: 2, tls_handshake_threads: 1}")).expect("valid");
    assert_eq!(one.runtime.tls_handshake_threads, 1);
    let errors = errors_of(&with("{tls_handshake_threads: 100000}"));
    assert!(has(&errors, "runtime.tls_handshake_threads: 100000 is more than"), "{errors:?}");
    let mut two = Config::from_yaml(&with("{threads: 2, tls_handshake_threads: 2}")).expect("valid");
    assert_eq!(two.keep_start_time_settings(&one), vec!["runtime.tls_handshake_threads"]);
    assert_eq!(two.runtime.tls_handshake_threads, 1, "the running value kept until a restart");
}

#[test]
fn workers_do_not_steal_unless_asked() {
    let with = |runtime: &str| {
        GOOD.replace("logging: {access_log: false}", &format!("logging: {{access_log: false}}\nruntime: {runtime}"))
    };
    assert!(!Config::from_yaml(GOOD).expect("valid").runtime.work_stealing, "no work stealing unless set");
    assert!(!Config::from_yaml(&with("{threads: 2}")).expect("valid").runtime.work_stealing);
    let stealing = Config::from_yaml(&with("{threads: 2, work_stealing: true}")).expect("valid");
    assert!(stealing.runtime.work_stealing);
    let mut not = Config::from_yaml(&with("{threads: 2}")).expect("valid");
    assert_eq!(not.keep_start_time_settings(&stealing), vec!["runtime.work_stealing"]);
    assert!(not.runtime.work_stealing, "the running value kept until a restart");
}

// A collector's URL may carry a `user:password@` (basic auth): no message repeats it.
#[test]
fn a_credential_in_a_url_is_never_repeated() {
    for (url, shown) in [
        ("https://edge:s3cret@centre.example/ingest", "https://…@centre.example/ingest"),
        ("http://edge:s3cret@[2001:db8::1]:8080/v1/traces?x=1", "http://…@[2001:db8::1]:8080/v1/traces?x=1"),
        ("redis://:s3cret@10.1.2.3:6379/0", "redis://…@10.1.2.3:6379/0"),
        ("https://centre.example/ingest", "https://centre.example/ingest"),
        // An `@` after the authority is the path's, not a credential.
        ("https://centre.example/by/a@b", "https://centre.example/by/a@b"),
        ("https://edge:s3c@ret@centre.example/", "https://…@centre.example/"),
    ] {
        assert_eq!(crate::url_for_message(url), shown);
    }
    let errors = errors_of(&format!(
        "{GOOD}audit: {{db: a.db, forward: {{url: \"ftp://edge:s3cret@centre/ingest\"}}}}\ntracing: {{otlp: {{endpoint: \"grpc://edge:s3cret@otel:4317\"}}}}\n"
    ));
    assert!(
        has(&errors, "audit.forward.url: \"ftp://…@centre/ingest\": expected an http:// or https:// URL"),
        "{errors:?}"
    );
    assert!(
        has(&errors, "tracing.otlp.endpoint: \"grpc://…@otel:4317\": expected an http:// or https:// URL"),
        "{errors:?}"
    );
    assert!(!format!("{errors:?}").contains("s3cret"), "the password is not repeated: {errors:?}");
}
