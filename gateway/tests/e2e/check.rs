//! `edgegate check` (and `run` on a bad file): exit codes and messages that name the
//! offending fields.

use std::process::Command;

use crate::support::{output, run_until_exit, BIN};

fn check(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edgegate.yaml");
    std::fs::write(&path, yaml).expect("write");
    let out = output(Command::new(BIN).arg("check").arg("--config").arg(&path));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shipped_demo_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/examples/demo.yaml");
    let out = output(Command::new(BIN).args(["check", "--config", path]));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 listeners, 2 upstream groups, 3 routes)"));
}

#[test]
fn bad_config_lists_every_error_and_exits_2() {
    let (code, stdout, stderr) = check(
        r#"
listeners:
  - {name: public, address: "0.0.0.0:8080"}
  - {name: public, address: "0.0.0.0:8080"}
upstreams:
  gov-service: {endpoints: [{address: "10.42.0.15"}]}
  empty: {endpoints: []}
routes:
  - {name: services, match: {path_prefix: /api/}, upstream: gov-servce}
  - {name: services, match: {path_prefix: /b/, methods: [GET]}, upstream: gov-service}
  - {name: typo, match: {host: a.gov.cn, pth: /x}, upstream: gov-service}
"#,
    );
    assert_eq!(code, 2, "stdout: {stdout} stderr: {stderr}");
    for needle in [
        r#"listeners[1].name: duplicate listener name "public""#,
        "listeners[1].address: address 0.0.0.0:8080 conflicts with listeners[0].address",
        r#"upstreams.gov-service.endpoints[0].address: unparseable address "10.42.0.15""#,
        "upstreams.empty.endpoints: must list at least one endpoint",
        r#"routes[0].upstream: unknown upstream "gov-servce""#,
        r#"routes[1].name: duplicate route name "services""#,
        "routes[2].match.pth: unknown field `pth`",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn unreadable_file_is_an_error() {
    let out = output(Command::new(BIN).args(["check", "--config", "/nonexistent/edgegate.yaml"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file /nonexistent/edgegate.yaml"));
}

#[test]
fn run_refuses_an_invalid_config_before_binding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edgegate.yaml");
    std::fs::write(&path, "listeners: [{name: p, address: \"127.0.0.1:0\"}]\nroutes: [{name: r, upstream: ghost}]\n")
        .expect("write");
    let (code, stderr) = run_until_exit(&path);
    assert_eq!(code, Some(2));
    assert!(stderr.contains(r#"routes[0].upstream: unknown upstream "ghost""#), "{stderr}");
    assert!(stderr.contains("last-known-good.yaml"), "names the missing fallback too: {stderr}");
}

#[test]
fn version_flag() {
    let out = output(Command::new(BIN).arg("--version"));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("edgegate {}", env!("CARGO_PKG_VERSION")));
}

/// Every subcommand's every argument says what it is (`-h`: one line per argument).
#[test]
fn every_cli_argument_has_help_text() {
    for args in [
        &["run"][..],
        &["check"],
        &["demo"],
        &["token"],
        &["audit", "verify"],
        &["audit", "export"],
        &["audit", "keygen"],
        &["policy", "test"],
        &["policy", "eval"],
    ] {
        let out = output(Command::new(BIN).args(args).arg("-h"));
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let arguments = help
            .lines()
            .skip_while(|l| !l.starts_with("Arguments:") && !l.starts_with("Options:"))
            .filter(|l| l.starts_with("  ") && !l.trim_start().starts_with("-h, --help"));
        let mut seen = 0;
        for line in arguments {
            seen += 1;
            // `  --name <NAME>  Description`: the flag, then two or more spaces, then text.
            let described = line.trim_start().split_once("  ").is_some_and(|(_, text)| !text.trim().is_empty());
            assert!(described, "edgegate {}: {line:?} has no help text\n{help}", args.join(" "));
        }
        assert!(seen > 0, "{args:?}: no arguments found in\n{help}");
    }
}

#[test]
fn a_duration_without_a_unit_says_which_forms_work() {
    let (code, _, stderr) = check(
        "listeners: [{name: p, address: '127.0.0.1:0'}]\nupstreams: {a: {endpoints: [{address: '127.0.0.1:9'}]}}\nroutes: [{name: r, upstream: a, public: true, timeouts: {read: 10}}]\n",
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("routes[0].timeouts.read: 10 has no unit"), "{stderr}");
    assert!(stderr.contains("500ms, 2s, 10m") && stderr.contains("10s or 10ms"), "{stderr}");
    let (_, _, stderr) = check(
        "listeners: [{name: p, address: '127.0.0.1:0'}]\nupstreams: {a: {endpoints: [{address: '127.0.0.1:9'}]}}\nroutes: [{name: r, upstream: a, public: true, timeouts: {read: 10 seconds please}}]\n",
    );
    assert!(stderr.contains(r#"routes[0].timeouts.read: invalid duration "10 seconds please""#), "{stderr}");
    assert!(stderr.contains("500ms, 2s, 10m"), "{stderr}");
}

/// A policy directory with the shipped policy and a config whose third route names a rule
/// with a typo.
fn policy_typo_config() -> tempfile::TempDir {
    let dir = crate::support::policy_dir(&crate::support::Issuer::new());
    std::fs::write(
        dir.path().join("config/edgegate.yaml"),
        "listeners: [{name: p, address: '127.0.0.1:0', behind_tls: true}]\nupstreams: {a: {endpoints: [{address: '127.0.0.1:9'}]}}\npolicies: {dir: policy}\nroutes:\n  - {name: r0, match: {path_prefix: /a/}, upstream: a, public: true}\n  - {name: r1, match: {path_prefix: /b/}, upstream: a, policy: data.government.digital.allow, identity: optional}\n  - {name: r2, match: {path_prefix: /c/}, upstream: a, policy: data.government.digital.alow, identity: optional}\n",
    )
    .expect("config");
    dir
}

#[test]
fn a_policy_rule_typo_names_the_route_and_the_rules_that_exist() {
    let dir = policy_typo_config();
    let out = output(Command::new(BIN).arg("check").arg("--config").arg(dir.path().join("config/edgegate.yaml")));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(r#"routes[2].policy: "data.government.digital.alow" is not a rule"#), "{stderr}");
    assert!(stderr.contains("rules there: data.government.digital.allow, data.government.digital.deny"), "{stderr}");
    assert!(!stderr.contains("routes[1].policy"), "the correct route is not blamed: {stderr}");
}

#[test]
fn policy_eval_says_when_a_query_names_nothing_and_which_input_is_missing() {
    let dir = policy_typo_config();
    let input = dir.path().join("input.json");
    std::fs::write(&input, r#"{"user": {"role": "citizen"}}"#).expect("input");
    let eval = |query: &str, input: &std::path::Path| {
        output(
            Command::new(BIN)
                .args(["policy", "eval", "--dir"])
                .arg(dir.path().join("config/policy"))
                .arg("--input")
                .arg(input)
                .args(["--query", query]),
        )
    };
    let out = eval("data.government.digital.allow", &input);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"value\": false"));
    let out = eval("data.government.digital.alow", &input);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("data.government.digital.alow is undefined")
            && stderr.contains("data.government.digital.allow"),
        "{stderr}"
    );
    let missing = dir.path().join("nope.json");
    let out = eval("data.government.digital.allow", &missing);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("--input {}: cannot read", missing.display())), "{stderr}");
}

/// `policy eval` and `policy test` evaluate with regorus' interpreter, which recurses once
/// for each rule a rule calls: a chain of thousands of rules overflowed the main thread's
/// stack and the process aborted (SIGABRT, no answer). They run on a thread with room for
/// the longest chains a policy directory holds, and answer.
#[test]
fn policy_eval_and_test_answer_on_a_chain_of_ten_thousand_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 10_000;
    let mut rego: String = (0..n).map(|i| format!("r{i} := r{}\n", i + 1)).collect();
    rego = format!("package chain\nimport rego.v1\n{rego}r{n} := input.x\nallow if r0 == 1\n");
    std::fs::write(dir.path().join("chain.rego"), rego).expect("policy");
    let test = "package chain_test\nimport rego.v1\ntest_allow if data.chain.allow with input as {\"x\": 1}\n";
    std::fs::write(dir.path().join("chain_test.rego"), test).expect("test");
    let input = dir.path().join("input.json");
    std::fs::write(&input, r#"{"x": 1}"#).expect("input");
    let out = output(
        Command::new(BIN)
            .args(["policy", "eval", "--dir"])
            .arg(dir.path())
            .arg("--input")
            .arg(&input)
            .args(["--query", "data.chain.allow"]),
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"value\": true"));
    let out = output(Command::new(BIN).args(["policy", "test"]).arg(dir.path()));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("PASS: 1/1"), "{}", String::from_utf8_lossy(&out.stdout));
}

/// `edgegate config schema` describes every shipped config (the examples, the demo's,
/// the deployment's) and refuses what `check` refuses by shape: unknown fields, a
/// duration without a unit, a misspelt enum value.
#[test]
fn the_json_schema_accepts_every_shipped_config_and_refuses_bad_shapes() {
    let out = output(Command::new(BIN).args(["config", "schema"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let as_json = |yaml: &str| -> serde_json::Value {
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(yaml).expect("YAML")).expect("JSON")
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut shipped: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("config/examples"))
        .expect("examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    shipped.push(root.join("deploy/base/edgegate.yaml"));
    assert!(shipped.len() >= 2);
    for path in &shipped {
        let doc = as_json(&std::fs::read_to_string(path).expect("read"));
        let errors: Vec<String> =
            validator.iter_errors(&doc).map(|e| format!("{} at {}", e, e.instance_path)).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
    }
    // The full demo's generated config too.
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = edgegate::demo::prepare(dir.path()).expect("demo");
    let doc = as_json(&std::fs::read_to_string(&demo.config_path).expect("demo config"));
    assert!(validator.is_valid(&doc), "the demo config");

    let base = "listeners: [{name: p, address: '127.0.0.1:0'}]\n";
    for bad in [
        "listeners: [{name: p, adress: '127.0.0.1:0'}]\n",
        &format!("{base}routes: [{{name: r, upstream: a, timeouts: {{read: 10}}}}]\n"),
        &format!(
            "{base}upstreams: {{a: {{endpoints: [{{address: '10.0.0.1:80'}}], balancer: {{policy: fastest}}}}}}\n"
        ),
        &format!("{base}logging: {{acces_log: false}}\n"),
        "routes: []\n",
    ] {
        assert!(!validator.is_valid(&as_json(bad)), "the schema accepted {bad:?}");
    }
}

/// The Redis level's files are read by `check` as by `run`, relative to the config's
/// directory: a key file holding too few bytes to be a key, and a CA bundle holding no
/// certificate, are refused with their fields named.
#[test]
fn check_reads_the_redis_levels_key_and_ca_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edgegate.yaml");
    std::fs::write(
        &path,
        "listeners: [{name: public, address: \"127.0.0.1:8080\"}]\nupstreams: {a: {endpoints: [{address: \"10.0.0.1:80\"}]}}\nroutes: [{name: r, upstream: a, public: true}]\ncache: {redis: {url: \"redis://cache.centre:6379\", key_file: l2.key}}\n",
    )
    .expect("write config");
    let run = || output(Command::new(BIN).arg("check").arg("--config").arg(&path));
    std::fs::write(dir.path().join("l2.key"), "changeme\n").expect("write key");
    let short = run();
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert_eq!(short.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cache.redis.key_file:") && stderr.contains("the key is 8 bytes; at least 32"), "{stderr}");
    std::fs::write(dir.path().join("l2.key"), "q8Xv2Lr6Tn0Ws4Yk1Hb7Jd3Mf9Pc5Ga2Ue8Zo6Ri0=\n").expect("write key");
    let good = run();
    assert_eq!(good.status.code(), Some(0), "{}", String::from_utf8_lossy(&good.stderr));
    let yaml = std::fs::read_to_string(&path).expect("read config");
    std::fs::write(&path, yaml.replace("redis://cache.centre:6379\"", "rediss://cache.centre:6380\", ca: centre.pem"))
        .expect("write config");
    std::fs::write(dir.path().join("centre.pem"), "not a certificate\n").expect("write ca");
    let no_ca = run();
    let stderr = String::from_utf8_lossy(&no_ca.stderr);
    assert_eq!(no_ca.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cache.redis.ca:") && stderr.contains("no PEM certificate"), "{stderr}");
}
