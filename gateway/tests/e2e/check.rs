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
