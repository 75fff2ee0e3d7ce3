//! What can be checked of the deployment without a cluster: the image builds and runs the
//! binary this workspace makes with the DaemonSet's arguments; the shipped gateway config
//! is valid once the Secrets it names exist; the Gatekeeper templates (Rego v0, as
//! Gatekeeper 3.15 runs it) admit the example workload and refuse the bad ones, evaluated
//! with regorus over admission reviews. (`scripts/validate-deploy.sh` renders and
//! schema-checks the manifests.)

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{output, BIN};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every document of a multi-document YAML file.
fn documents(path: &str) -> Vec<serde_yaml::Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

fn strings(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence().expect("a list").iter().map(|s| s.as_str().expect("a string").to_owned()).collect()
}

/// The image copies the binary `scripts/build-pgo.sh` makes (or, with `PGO=0`, `cargo build
/// --release -p edgegate`), and its default command is the DaemonSet's.
#[test]
fn the_image_runs_the_workspace_binary_with_the_daemonsets_arguments() {
    let containerfile = read("deploy/Containerfile");
    let lines: Vec<&str> = containerfile.lines().map(str::trim).collect();
    assert!(lines.contains(&"WORKDIR /src"), "the build stage works in /src");
    assert!(lines.contains(&"ARG PGO=1"), "profile-guided unless asked otherwise");
    // Both branches put the binary at /out/edgegate, from where each build leaves it: cargo
    // at target/<profile>/<bin name> (this test's binary is the same target's debug build of
    // that name), scripts/build-pgo.sh at target/pgo/edgegate, built --locked too; and the
    // builds for CPU levels beside it as edgegate-<level>, the name the default build looks
    // for (gateway/src/cpu.rs).
    assert!(containerfile.contains("scripts/build-pgo.sh && cp target/pgo/edgegate /out/edgegate"));
    assert!(containerfile
        .contains("cargo build --release --locked -p edgegate && cp target/release/edgegate /out/edgegate"));
    assert!(lines.contains(&"ARG EDGEGATE_LEVELS=x86-64-v3"), "the x86-64-v3 build beside the default one");
    // The launcher, the entrypoint, static against musl (no loader, and no CPUID probe of the
    // caches before main: a fraction of a millisecond to start), beside the builds it chooses
    // between; only the gateway's binaries may bind 443. The build stage has the musl target.
    assert!(containerfile.contains(r#"rustup target add "$(rustc -vV | sed -n 's/^host: \(.*\)-gnu$/\1-musl/p')""#));
    assert!(containerfile.contains(r#"musl="${host%-gnu}-musl""#));
    assert!(containerfile.contains("cargo build --release --locked -p edgegate-launch --target \"$musl\""));
    assert!(containerfile.contains(r#"cp "target/launch/$musl/release/edgegate-launch" /out/"#));
    assert!(containerfile.contains(r#"cp "target/pgo/edgegate-$level" /out/"#));
    assert!(containerfile.contains(r#"cp "target/$level/$host/release/edgegate" "/out/edgegate-$level""#));
    assert!(lines.contains(&"RUN for f in /usr/local/bin/edgegate /usr/local/bin/edgegate-x86-64*; do \\"));
    assert!(lines.contains(&r#"[ ! -e "$f" ] || setcap cap_net_bind_service=+ep "$f"; done \"#));
    assert!(BIN.ends_with("/target/debug/edgegate"), "{BIN}");
    let pgo = read("scripts/build-pgo.sh");
    assert!(pgo.contains("out=\"$root/target/pgo\""), "build-pgo.sh's output directory");
    assert!(pgo.contains("cp \"$out/$host/release/edgegate\" \"$out/edgegate\""), "build-pgo.sh's binary");
    assert!(pgo.contains("cp \"$out-$level/$host/release/edgegate\" \"$out/edgegate-$level\""), "a level's binary");
    assert_eq!(pgo.matches("cargo build --release --locked -p edgegate ").count(), 2, "both builds --locked");
    let copy = lines.iter().find(|l| l.starts_with("COPY --from=build ")).expect("a COPY from the build stage");
    let (from, to) = (copy.split_whitespace().nth(2).expect("source path"), copy.split_whitespace().nth(3));
    assert_eq!((from, to), ("/out/", Some("/usr/local/bin/")));
    assert!(lines.contains(&"USER 65532:65532"), "runs as uid 65532");
    let entrypoint = lines.iter().find(|l| l.starts_with("ENTRYPOINT ")).expect("ENTRYPOINT");
    assert_eq!(*entrypoint, r#"ENTRYPOINT ["/usr/local/bin/edgegate-launch"]"#);
    let cmd: Vec<String> = serde_json::from_str(lines.iter().find_map(|l| l.strip_prefix("CMD ")).expect("CMD"))
        .expect("CMD in exec form");
    let daemonset = documents("deploy/base/daemonset.yaml");
    let container = &daemonset[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(strings(&container["args"]), cmd, "the DaemonSet passes what the image would run");
    assert_eq!(container["securityContext"]["runAsUser"], 65532);
    assert_eq!(strings(&container["securityContext"]["capabilities"]["add"]), ["NET_BIND_SERVICE"]);
    assert_eq!(strings(&container["securityContext"]["capabilities"]["drop"]), ["ALL"]);
    // The arguments parse: `run`'s config and state flags are what the binary takes.
    let out = output(Command::new(BIN).args(&cmd).arg("--help"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The shipped config, with the Secrets' files where the DaemonSet mounts them (here a
/// temporary directory): missing ones are named, and with them `edgegate check` passes.
#[test]
fn the_deployed_config_is_valid_once_its_secrets_exist() {
    let base = repo("deploy/base");
    let out = output(Command::new(BIN).arg("check").arg("--config").arg(base.join("edgegate.yaml")));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for missing in [
        "admin.token_file: cannot read /etc/edgegate-admin/token",
        "listeners[0].tls.certificates[0]: cert: cannot read /etc/edgegate-tls/tls.crt: No such file or directory",
    ] {
        assert!(stderr.contains(missing), "{missing} not named in:\n{stderr}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(&base).expect("deploy/base") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
    }
    // The Secrets as docs/deploy.md makes them.
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).expect("mkdir");
    std::fs::write(secrets.join("token"), "0123456789abcdef0123456789abcdef\n").expect("token");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["zwfw.example.gov.cn".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    std::fs::write(secrets.join("tls.crt"), cert.pem()).expect("cert");
    std::fs::write(secrets.join("tls.key"), key.serialize_pem()).expect("key");
    let cfg = dir.path().join("edgegate.yaml");
    let s = secrets.display();
    let yaml = std::fs::read_to_string(&cfg)
        .expect("read")
        .replace("/etc/edgegate-admin/token", &format!("{s}/token"))
        .replace("/etc/edgegate-audit/signing.key", &format!("{s}/signing.key"))
        .replace("/etc/edgegate-tls/", &format!("{s}/"))
        .replace("/var/lib/edgegate/", &format!("{}/", dir.path().display()));
    std::fs::write(&cfg, yaml).expect("write");
    // The audit signing key is checked next: first missing, then made as the docs say.
    let out = output(Command::new(BIN).arg("check").arg("--config").arg(&cfg));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("audit.signing_key: cannot read {s}/signing.key")), "{stderr}");
    let out = output(Command::new(BIN).args(["audit", "keygen", "--out"]).arg(secrets.join("signing.key")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = output(Command::new(BIN).arg("check").arg("--config").arg(&cfg));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // The deployed policy decides alike on alike input: `check` says its decisions are
    // remembered.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("policies: decisions are remembered for the same input"), "{stdout}");
}

#[test]
fn deployed_policy_is_the_shipped_policy() {
    // kustomize cannot reach outside deploy/base, so the ConfigMap carries a copy.
    assert_eq!(
        read("config/policy/government.rego"),
        read("deploy/base/government.rego"),
        "deploy/base/government.rego drifted from config/policy/government.rego"
    );
}

/// Violations of one template for `object` under the parameters of its constraint.
fn violations(template: &serde_yaml::Value, constraint: &serde_yaml::Value, object: &serde_json::Value) -> Vec<String> {
    let rego = template["spec"]["targets"][0]["rego"].as_str().expect("rego");
    let package = rego.lines().find_map(|l| l.strip_prefix("package ")).expect("package").trim();
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(true);
    engine.add_policy("template.rego".into(), rego.into()).expect("the template's Rego parses as v0");
    let parameters: serde_json::Value =
        serde_json::to_value(&constraint["spec"]["parameters"]).expect("parameters as JSON");
    let input = serde_json::json!({
        "review": {"kind": {"kind": object["kind"]}, "operation": "CREATE", "object": object},
        "parameters": parameters,
    });
    engine.set_input(regorus::Value::from_json_str(&input.to_string()).expect("input"));
    let result = engine.eval_rule(format!("data.{package}.violation")).expect("evaluates");
    let json: serde_json::Value = serde_json::from_str(&result.to_json_str().expect("JSON")).expect("JSON");
    json.as_array()
        .map_or_else(Vec::new, |set| set.iter().map(|v| v["msg"].as_str().expect("msg").to_owned()).collect())
}

#[test]
fn gatekeeper_admits_the_example_workload_and_refuses_bad_ones() {
    let templates = documents("deploy/gatekeeper/templates/templates.yaml");
    let constraints = documents("deploy/gatekeeper/constraints/constraints.yaml");
    assert_eq!(templates.len(), 3);
    // Each constraint is of a kind a template defines, and spares the system and edgegate.
    let pairs: Vec<(&serde_yaml::Value, &serde_yaml::Value)> = constraints
        .iter()
        .map(|c| {
            let t = templates
                .iter()
                .find(|t| t["spec"]["crd"]["spec"]["names"]["kind"] == c["kind"])
                .unwrap_or_else(|| panic!("no template for {:?}", c["kind"]));
            let excluded = strings(&c["spec"]["match"]["excludedNamespaces"]);
            for ns in ["kube-system", "gatekeeper-system", "edgegate"] {
                assert!(excluded.iter().any(|e| e == ns), "{:?} must exclude {ns}", c["kind"]);
            }
            assert_eq!(c["spec"]["enforcementAction"], "deny");
            (t, c)
        })
        .collect();
    assert_eq!(pairs.len(), 3);
    let all = |object: &serde_json::Value| -> Vec<String> {
        pairs.iter().flat_map(|(t, c)| violations(t, c, object)).collect()
    };

    // The example service passes every rule, as a Deployment and as the Pod it makes.
    let example = documents("deploy/examples/digital-government-service.yaml");
    let deployment: serde_json::Value = serde_json::to_value(kind(&example, "Deployment")).expect("JSON");
    assert_eq!(all(&deployment), Vec::<String>::new());
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "digital-government-service-7c9f"},
        "spec": deployment["spec"]["template"]["spec"],
    });
    assert_eq!(all(&pod), Vec::<String>::new());

    // Each way to get it wrong is refused, naming what is wrong.
    let broken = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut p = pod.clone();
        edit(&mut p["spec"]);
        all(&p)
    };
    let v = broken(&|s| {
        s.as_object_mut().expect("spec").remove("runtimeClassName");
    });
    assert!(v.len() == 1 && v[0].contains("runtimeClassName: wasmedge (found: none)"), "{v:?}");
    let v = broken(&|s| s["runtimeClassName"] = "runc".into());
    assert!(v.len() == 1 && v[0].contains("found: runc"), "{v:?}");
    let v = broken(&|s| {
        s["containers"][0]["resources"]["limits"].as_object_mut().expect("limits").remove("memory");
    });
    assert!(v.len() == 1 && v[0].contains("container service sets no memory limit"), "{v:?}");
    let v = broken(&|s| s["initContainers"] = serde_json::json!([{"name": "migrate", "image": "x"}]));
    assert_eq!(v.len(), 2, "an init container without CPU and memory limits: {v:?}");
    let v = broken(&|s| {
        s.as_object_mut().expect("spec").remove("nodeSelector");
    });
    assert!(v.len() == 1 && v[0].contains("nodeSelector node-type: edge"), "{v:?}");
    let v = broken(&|s| s["nodeSelector"]["node-type"] = "core".into());
    assert_eq!(v.len(), 1, "{v:?}");
    // A Deployment is refused at once, not only its pods.
    let mut bad = deployment.clone();
    bad["spec"]["template"]["spec"].as_object_mut().expect("spec").remove("runtimeClassName");
    let v = all(&bad);
    assert!(v.len() == 1 && v[0].starts_with("Deployment digital-government-service:"), "{v:?}");
}

/// The default build runs the build for the CPU's level in its place when one is beside it
/// (`edgegate-x86-64-v3`, as a fat image ships it), with the same arguments and the
/// hand-over turned off for it; it serves itself when turned off, when the CPU lacks the
/// level's features, or when the file there cannot be run (with a warning). The level build
/// stands in as `/usr/bin/env`, which prints the environment it was given; the binary is
/// hard-linked, so that it runs under its own name in a directory of the test's.
#[test]
fn the_default_build_hands_over_to_the_build_for_its_cpu_level_beside_it() {
    use edgegate::cpu::HAND_OVER_VAR;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let bin = dir.path().join("edgegate");
    if std::fs::hard_link(BIN, &bin).is_err() {
        std::fs::copy(BIN, &bin).expect("copy the binary");
    }
    let level = dir.path().join("edgegate-x86-64-v3");
    std::os::unix::fs::symlink("/usr/bin/env", &level).expect("symlink");
    // No arguments: the gateway's own answer is its usage (exit 2); env's, the environment.
    let run = |setting: Option<&str>| {
        let mut command = Command::new(&bin);
        command.env_clear().env("MARKER", "from-the-test");
        if let Some(s) = setting {
            command.env(HAND_OVER_VAR, s);
        }
        let out = output(&mut command);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let served_itself =
        |(code, _, stderr): &(Option<i32>, String, String)| *code == Some(2) && stderr.contains("Usage");
    let this_cpu_has_it = edgegate::cpu::levels_this_cpu_has().contains(&"x86-64-v3");
    let handed = run(None);
    if this_cpu_has_it {
        assert_eq!(handed.0, Some(0), "{handed:?}");
        assert!(handed.1.contains("MARKER=from-the-test"), "{handed:?}");
        assert!(handed.1.contains(&format!("{HAND_OVER_VAR}=off")), "{handed:?}");
    } else {
        assert!(served_itself(&handed), "{handed:?}");
    }
    // Turned off: the default build serves.
    let off = run(Some("off"));
    assert!(served_itself(&off), "{off:?}");
    // A file there that cannot be run: a warning, and the default build serves.
    std::fs::remove_file(&level).expect("remove the symlink");
    std::fs::write(&level, "not a program").expect("write");
    let broken = run(None);
    assert!(served_itself(&broken), "{broken:?}");
    assert_eq!(broken.2.contains("could not be run"), this_cpu_has_it, "{broken:?}");
}
