//! `edgegate demo`: the whole product on one machine with one command. On the shipped demo
//! config it adds what a newcomer should see working: an HTTPS listener with a certificate
//! generated at start, a cached route (MISS → HIT → STALE in `X-Cache`), a route guarded by
//! the shipped government policy with a demo identity provider (a key pair and JWKS
//! generated at start, ready-made tokens for a citizen, an admin and an expired one), the
//! audit log, and the admin calls. Demo pods are started on every local loopback endpoint.
//! `edgegate demo --config FILE` serves that file with its pods and prints only lines that
//! fit any config.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use edgegate_config::{Config, Locality};

use crate::control::reload::ConfigSource;
use crate::pod::{Pod, PodSpec};
use crate::server::{self, RunOptions, Startup};

/// The demo config, embedded so `edgegate demo` works from any directory.
pub const DEMO_CONFIG: &str = include_str!("../../config/examples/demo.yaml");
/// The shipped government policy the demo's guarded route uses.
const GOVERNMENT_POLICY: &str = include_str!("../../config/policy/government.rego");

const ISSUER: &str = "https://id.demo.localhost";
const AUDIENCE: &str = "edgegate-demo";
const KID: &str = "demo-1";

pub fn run(config_path: Option<&Path>) -> anyhow::Result<()> {
    match config_path {
        Some(path) => {
            let startup = Startup::from_source(ConfigSource::new(
                path.to_owned(),
                std::env::temp_dir().join("edgegate-demo-state"),
            ))?;
            let pods = start_pods(&startup.config)?;
            println!("edgegate demo: {} pods for {}", pods.pods.len(), path.display());
            for l in &startup.config.listeners {
                let scheme = if l.tls.is_some() { "https" } else { "http" };
                println!("  {}: {scheme}://{}", l.name, l.address);
            }
            println!("  curl -s http://{}/metrics | grep edgegate_requests_total", startup.config.admin.address);
            println!("Ctrl+C stops; SIGTERM drains.");
            server::run(startup, RunOptions { ports_file: None, watch: true })
        }
        None => full_demo(),
    }
}

/// Demo pods on the config's local loopback endpoints, on their own small runtime.
struct Pods {
    pods: Vec<Pod>,
    _runtime: tokio::runtime::Runtime,
}

fn start_pods(config: &Config) -> anyhow::Result<Pods> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let pods = runtime.block_on(async {
        let mut pods = Vec::new();
        for group in &config.upstreams {
            for (i, e) in group.endpoints.iter().enumerate() {
                if e.locality != Locality::Local || !e.address.ip().is_loopback() {
                    continue;
                }
                let spec = PodSpec {
                    service: group.name.clone(),
                    name: format!("{}-{}", group.name, i + 1),
                    delay: Default::default(),
                };
                pods.push(
                    Pod::start(e.address, spec).await.with_context(|| format!("starting demo pod on {}", e.address))?,
                );
            }
        }
        anyhow::Ok(pods)
    })?;
    tracing::info!(pods = pods.len(), "demo pods started");
    Ok(Pods { pods, _runtime: runtime })
}

/// Everything the full demo writes, in a directory of its own.
struct DemoFiles {
    dir: PathBuf,
    ca_cert: PathBuf,
    issuer_key: Vec<u8>,
}

/// The full demo, prepared in a directory: its config (`demo.yaml`, relative paths) and
/// the tokens and certificate its curl lines use.
pub struct Prepared {
    pub config_path: PathBuf,
    pub ca_cert: PathBuf,
    pub issuer_key: PathBuf,
    pub citizen: String,
    pub admin: String,
    pub expired: String,
}

/// Writes the full demo's files into `dir` (policy, certificate, identity provider keys,
/// config) and mints its tokens.
pub fn prepare(dir: &Path) -> anyhow::Result<Prepared> {
    let files = write_files(dir)?;
    let config_path = files.dir.join("demo.yaml");
    std::fs::write(&config_path, full_config()?)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let with = |extra: serde_json::Value| {
        let mut c = serde_json::json!({"iss": ISSUER, "aud": AUDIENCE});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        c
    };
    Ok(Prepared {
        citizen: token(&files, with(serde_json::json!({"sub": "citizen-42", "role": "citizen"})))?,
        admin: token(&files, with(serde_json::json!({"sub": "clerk-7", "role": "admin"})))?,
        expired: token(
            &files,
            with(serde_json::json!({"sub": "citizen-42", "role": "citizen", "iat": now - 7200, "exp": now - 3600})),
        )?,
        config_path,
        ca_cert: files.ca_cert,
        issuer_key: files.dir.join("issuer.key"),
    })
}

fn write_files(dir: &Path) -> anyhow::Result<DemoFiles> {
    for sub in ["policy", "tls", "state"] {
        std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    std::fs::write(dir.join("policy/government.rego"), GOVERNMENT_POLICY)?;
    // A certificate for localhost, made now: curl trusts it with --cacert.
    let key = rcgen::KeyPair::generate().context("generating the TLS key")?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).context("certificate")?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name.push(rcgen::DnType::CommonName, "edgegate demo");
    let cert = params.self_signed(&key).context("self-signing the demo certificate")?;
    let ca_cert = dir.join("tls/demo.crt");
    std::fs::write(&ca_cert, cert.pem())?;
    std::fs::write(dir.join("tls/demo.key"), key.serialize_pem())?;
    // The demo identity provider: an Ed25519 key pair, its public half as a JWKS.
    let (private, _) = edgegate_filters::audit::store::generate_key_pair().map_err(anyhow::Error::msg)?;
    let signing = {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        ed25519_dalek::SigningKey::from_pkcs8_pem(&private).context("demo issuer key")?
    };
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes());
    let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": KID, "alg": "EdDSA", "use": "sig"}]});
    std::fs::write(dir.join("jwks.json"), serde_json::to_vec_pretty(&jwks)?)?;
    std::fs::write(dir.join("issuer.key"), &private)?;
    Ok(DemoFiles { dir: dir.to_owned(), ca_cert, issuer_key: private.into_bytes() })
}

/// The shipped demo config plus HTTPS, a cached route, a policy-guarded route, identity
/// and the audit log.
fn full_config() -> anyhow::Result<String> {
    use serde_yaml::{Mapping, Value};
    let mut doc: Value = serde_yaml::from_str(DEMO_CONFIG).context("the embedded demo config")?;
    let yaml = |text: &str| serde_yaml::from_str::<Value>(text).expect("static YAML");
    let map = doc.as_mapping_mut().context("the demo config is a mapping")?;
    if let Some(Value::Sequence(listeners)) = map.get_mut("listeners") {
        listeners.push(yaml(
            "{name: secure, address: '127.0.0.1:8443', tls: {certificates: [{cert: tls/demo.crt, key: tls/demo.key}], hsts: 1d}}",
        ));
    }
    if let Some(Value::Sequence(routes)) = map.get_mut("routes") {
        for r in routes.iter_mut() {
            if r["name"] == "office-hours" {
                if let Some(m) = r.as_mapping_mut() {
                    m.insert("cache".into(), yaml("{ttl: 10s, stale_while_revalidate: 1m, public: true}"));
                }
            }
        }
        routes.insert(
            0,
            yaml("{name: citizen-services, match: {path_prefix: /api/citizen/}, upstream: permits, policy: data.government.digital.allow}"),
        );
    }
    let mut extra = Mapping::new();
    extra.insert("policies".into(), yaml("{dir: policy}"));
    extra.insert(
        "identity".into(),
        yaml(&format!("{{jwt: {{issuer: '{ISSUER}', audience: {AUDIENCE}, keys: jwks.json}}}}")),
    );
    extra.insert("audit".into(), yaml("{db: state/audit.db, node: demo}"));
    for (k, v) in extra {
        map.insert(k, v);
    }
    Ok(serde_yaml::to_string(&doc)?)
}

fn token(files: &DemoFiles, claims: serde_json::Value) -> anyhow::Result<String> {
    edgegate_filters::identity::mint_test_token(
        &files.issuer_key,
        claims,
        Some(KID.to_owned()),
        std::time::Duration::from_secs(3600),
    )
    .map_err(anyhow::Error::msg)
}

fn full_demo() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("edgegate-demo-{}", std::process::id()));
    let demo = prepare(&dir)?;
    let startup = Startup::from_source(ConfigSource::new(demo.config_path.clone(), dir.join("state")))?;
    let pods = start_pods(&startup.config)?;
    let (citizen, admin, expired) = (&demo.citizen, &demo.admin, &demo.expired);
    let ca = demo.ca_cert.display();
    let admin_addr = startup.config.admin.address;
    println!("edgegate demo: {} pods; files in {}", pods.pods.len(), dir.display());
    println!();
    println!("Plain routes (HTTP on 127.0.0.1:8080):");
    println!("  curl -i http://127.0.0.1:8080/api/permits/42");
    println!("  curl -i -H 'Host: north.districts.localhost' http://127.0.0.1:8080/");
    println!("  curl -i http://127.0.0.1:8080/no/such/route                # 404, JSON with the request id");
    println!();
    println!("HTTPS (certificate made at start; HSTS on every answer):");
    println!("  curl -i --cacert {ca} https://localhost:8443/api/permits/42");
    println!();
    println!("Cache (X-Cache: MISS, then HIT; after 10 s STALE while it refreshes):");
    println!("  curl -si http://127.0.0.1:8080/api/office-hours | grep -i x-cache");
    println!();
    println!("Policy (the shipped government policy: citizens only, over HTTPS, while the audit log works):");
    println!("  CITIZEN={citizen}");
    println!("  ADMIN={admin}");
    println!("  EXPIRED={expired}");
    println!("  curl -i --cacert {ca} -H \"Authorization: Bearer $CITIZEN\" https://localhost:8443/api/citizen/permits   # 200");
    println!("  curl -i --cacert {ca} -H \"Authorization: Bearer $ADMIN\" https://localhost:8443/api/citizen/permits     # 403");
    println!("  curl -i --cacert {ca} -H \"Authorization: Bearer $EXPIRED\" https://localhost:8443/api/citizen/permits   # 401");
    println!("  curl -i -H \"Authorization: Bearer $CITIZEN\" http://127.0.0.1:8080/api/citizen/permits                  # 403: not encrypted");
    println!(
        "  edgegate token --key {} --kid {KID} --claims '{{\"sub\":\"citizen-7\",\"iss\":\"{ISSUER}\",\"aud\":\"{AUDIENCE}\",\"role\":\"citizen\"}}'   # more tokens",
        demo.issuer_key.display()
    );
    println!();
    println!("Audit log (one record per routed request, hash-chained):");
    println!("  edgegate audit export --db {}", dir.join("state/audit.db").display());
    println!("  edgegate audit verify --db {}", dir.join("state/audit.db").display());
    println!();
    println!("Admin ({admin_addr}):");
    println!("  curl -s http://{admin_addr}/-/config");
    println!("  curl -s http://{admin_addr}/metrics | grep edgegate_requests_total");
    println!("  curl -s -X POST http://{admin_addr}/-/reload       # or edit {}", demo.config_path.display());
    println!("  curl -s -X DELETE 'http://{admin_addr}/-/cache?prefix=127.0.0.1/api/office-hours'");
    println!("Ctrl+C stops; SIGTERM drains.");
    server::run(startup, RunOptions { ports_file: None, watch: true })
}
