//! The `edgegate` binary.
//!
//! Run lines:
//!   edgegate demo                         # gateway + demo pods on the shipped demo config
//!   edgegate run --config edgegate.yaml   # serve
//!   edgegate check --config edgegate.yaml # validate, like `nginx -t`; exit 2 on errors

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgegate::control::reload::ConfigSource;
use edgegate::server::{RunOptions, Startup};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "edgegate", version, about = "edgegate: an edge API gateway built on Pingora")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic with the given config; reload it when its directory changes, on
    /// SIGHUP and on `POST /-/reload`.
    Run {
        /// The config file (YAML); its directory is watched and relative paths in it
        /// resolve from there.
        #[arg(long, short)]
        config: PathBuf,
        /// Where accepted configs are kept as the last-known-good copy, which is served
        /// when the config file is missing or invalid at start.
        #[arg(long, default_value = "/var/lib/edgegate")]
        state_dir: PathBuf,
        /// Do not watch the config directory; reload only on SIGHUP or `POST /-/reload`.
        #[arg(long)]
        no_watch: bool,
        /// Write the bound listener and admin addresses to this file as JSON once
        /// listening (useful with port 0).
        #[arg(long)]
        ports_file: Option<PathBuf>,
        /// When the config file is unusable, serve the last-known-good copy even if it was
        /// saved for a different config path (by default it is used only for its own).
        #[arg(long)]
        any_last_known_good: bool,
    },
    /// Validate a config and exit: 0 when valid, 2 with every error on stderr otherwise.
    Check {
        /// The config file to validate, with the policies, keys and certificates it names.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Work with Rego policies outside the gateway.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The config file's format: `config schema` prints its JSON Schema, for editors.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Read, check and export the node's audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Mint a signed JWT to test policies against your own JWKS. A test aid: citizens'
    /// real tokens come from the identity provider.
    Token {
        /// PEM private key: EC P-256 (ES256), Ed25519 (EdDSA) or RSA (RS256).
        #[arg(long)]
        key: PathBuf,
        /// The claims as a JSON object, e.g. '{"sub":"citizen-7","role":"citizen","iss":"…","aud":"…"}'.
        #[arg(long)]
        claims: String,
        /// The `kid` header, to pick the key out of your JWKS.
        #[arg(long)]
        kid: Option<String>,
        /// Lifetime, unless the claims set `exp`.
        #[arg(long, default_value = "5m")]
        ttl: String,
    },
    /// Start demo pods and serve the shipped demo config (or the given one).
    Demo {
        /// Serve this config instead of the embedded demo one (demo pods are started on
        /// its local loopback endpoints).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // First: the default build runs the build for this CPU's level in its place when one is
    // beside it (docs/deploy.md, "Building for a CPU level"); if that fails, it says so and
    // serves itself.
    if let Err(warning) = edgegate::cpu::hand_over() {
        eprintln!("{warning}");
    }
    // A build for a newer CPU level than this node's stops here, by name, rather than on an
    // illegal instruction somewhere later.
    if let Err(message) = edgegate::cpu::check() {
        eprintln!("{message}");
        return ExitCode::from(1);
    }
    edgegate::process::setup();
    // The TLS crypto (ring's, RSA signing and X25519 from aws-lc), before anything uses TLS.
    edgegate::tls_keys::install();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match load_for_check(&config) {
            Ok(loaded) => {
                for (listener, store) in &loaded.tls {
                    for cert in &store.certs {
                        let left = cert.not_after.duration_since(std::time::SystemTime::now()).unwrap_or_default();
                        if left < edgegate::tls::EXPIRY_WARNING {
                            eprintln!(
                                "warning: listener {listener}: {} expires in {} days",
                                cert.file,
                                left.as_secs() / 86_400
                            );
                        }
                    }
                }
                let c = loaded.config;
                println!(
                    "{}: valid ({} listeners, {} upstream groups, {} routes)",
                    config.display(),
                    c.listeners.len(),
                    c.upstreams.len(),
                    c.routes.len()
                );
                if let Some(policies) = &loaded.guards.policies {
                    println!("policies: {}", policies.decisions_summary());
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}: invalid", config.display());
                for err in errors {
                    eprintln!("  {err}");
                }
                ExitCode::from(2)
            }
        },
        Command::Policy { command } => on_a_deep_stack(move || policy_command(command)),
        Command::Audit { command } => audit_command(command),
        Command::Config { command: ConfigCommand::Schema } => {
            match serde_json::to_string_pretty(&edgegate_config::raw::json_schema()) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("edgegate: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Token { key, claims, kid, ttl } => {
            let minted = std::fs::read(&key).map_err(|e| format!("--key {}: {e}", key.display())).and_then(|pem| {
                let claims: serde_json::Value =
                    serde_json::from_str(&claims).map_err(|e| format!("--claims: not JSON: {e}"))?;
                let ttl =
                    humantime::parse_duration(&ttl).map_err(|e| format!("--ttl {ttl:?}: {e} (use e.g. 5m, 1h)"))?;
                edgegate_filters::identity::mint_test_token(&pem, claims, kid, ttl)
                    .map_err(|e| format!("--key {}: {e}", key.display()))
            });
            match minted {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("edgegate: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run { config, state_dir, no_watch, ports_file, any_last_known_good } => {
            edgegate::logging::init();
            let source = ConfigSource { path: config, state_dir, any_last_known_good };
            let startup = match Startup::from_source(source) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("{e:#}");
                    edgegate::logging::flush();
                    eprintln!("edgegate: {e:#}");
                    return ExitCode::from(2);
                }
            };
            exit_with(edgegate::server::run(startup, RunOptions { ports_file, watch: !no_watch }))
        }
        Command::Demo { config } => {
            edgegate::logging::init();
            exit_with(edgegate::demo::run(config.as_deref()))
        }
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain and the checkpoints; exit 1 naming the first bad record.
    Verify {
        /// The audit log (`audit.db` in the config).
        #[arg(long)]
        db: PathBuf,
        /// The node's Ed25519 public key (PEM): every checkpoint must be signed by it.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Print records as JSON lines, oldest first.
    Export {
        /// The audit log (`audit.db` in the config).
        #[arg(long)]
        db: PathBuf,
        /// Only records from this time on: RFC 3339 (`2026-11-30T06:00:00Z`) or an age (`24h`).
        #[arg(long)]
        since: Option<String>,
    },
    /// Write a new Ed25519 key pair for signing checkpoints: OUT (private, PKCS#8 PEM,
    /// mode 0600) and OUT.pub (public, PEM).
    Keygen {
        /// Where to write the private key; the public key goes to OUT.pub.
        #[arg(long)]
        out: PathBuf,
    },
}

fn audit_command(command: AuditCommand) -> ExitCode {
    use edgegate_filters::audit::{self, store};
    match command {
        AuditCommand::Verify { db, key } => {
            let key = match key.as_deref().map(store::load_verifying_key).transpose() {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("edgegate: --key {e}");
                    return ExitCode::from(2);
                }
            };
            match audit::verify(&db, key.as_ref()) {
                Ok(r) => {
                    let range = match (r.first_seq, r.last_seq) {
                        (Some(a), Some(b)) => format!("records {a}..={b}"),
                        _ => "no records".to_owned(),
                    };
                    let signed = if key.is_some() {
                        format!(", {} signatures valid", r.signed_checkpoints)
                    } else {
                        String::new()
                    };
                    println!(
                        "{}: ok: {} ({} records, {} checkpoints{signed}; retention anchor at {})",
                        db.display(),
                        range,
                        r.records,
                        r.checkpoints,
                        r.anchor_seq
                    );
                    if key.is_none() {
                        println!("note: checkpoint signatures were not checked (pass --key PUBLIC.pem)");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: FAILED: {e}", db.display());
                    ExitCode::from(1)
                }
            }
        }
        AuditCommand::Export { db, since } => {
            let since_ms = match since.as_deref().map(parse_since).transpose() {
                Ok(t) => t.unwrap_or(0),
                Err(e) => {
                    eprintln!("edgegate: --since {e}");
                    return ExitCode::from(2);
                }
            };
            let reader = match audit::Reader::open(&db) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("edgegate: cannot open {}: {e}", db.display());
                    return ExitCode::from(2);
                }
            };
            use std::io::Write as _;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut failed = None;
            let result = reader.since(since_ms, |r| {
                if failed.is_none() {
                    if let Err(e) = serde_json::to_writer(&mut out, &r)
                        .map_err(std::io::Error::from)
                        .and_then(|_| out.write_all(b"\n"))
                    {
                        failed = Some(e);
                    }
                }
            });
            let flushed = out.flush();
            match (result, failed, flushed) {
                (Ok(()), None, Ok(())) => ExitCode::SUCCESS,
                (Err(e), _, _) => {
                    eprintln!("edgegate: reading {}: {e}", db.display());
                    ExitCode::from(1)
                }
                (_, Some(e), _) | (_, _, Err(e)) => {
                    eprintln!("edgegate: writing: {e}");
                    ExitCode::from(1)
                }
            }
        }
        AuditCommand::Keygen { out } => {
            let (private, public) = match store::generate_key_pair() {
                Ok(pair) => pair,
                Err(e) => {
                    eprintln!("edgegate: {e}");
                    return ExitCode::from(1);
                }
            };
            let public_path = PathBuf::from(format!("{}.pub", out.display()));
            let written = write_private(&out, private.as_bytes()).and_then(|_| std::fs::write(&public_path, public));
            match written {
                Ok(()) => {
                    println!(
                        "private key: {} (keep it in a Secret)\npublic key:  {}",
                        out.display(),
                        public_path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("edgegate: writing the key pair: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// A new file readable by its owner only; an existing file is not overwritten.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)
}

/// `--since`: an RFC 3339 time or an age such as `24h`, as milliseconds since the epoch.
fn parse_since(text: &str) -> Result<u64, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64));
    }
    match humantime::parse_duration(text) {
        Ok(age) => Ok(edgegate::audit::now_ms().saturating_sub(age.as_millis() as u64)),
        Err(_) => Err(format!("{text:?}: expected an RFC 3339 time (2026-11-30T06:00:00Z) or an age (24h, 30m)")),
    }
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the config's JSON Schema (draft 2020-12). With the YAML language server
    /// (VS Code's YAML extension, Neovim's yamlls) put
    /// `# yaml-language-server: $schema=edgegate.schema.json` at the top of the file.
    Schema,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run every `test_*` rule in DIR's policies, like `opa test`; exit 1 if any fails.
    Test {
        /// The directory holding the `.rego` files and their `*_test.rego` files.
        dir: PathBuf,
    },
    /// Evaluate a query against DIR's policies with an input document (JSON file).
    ///
    /// Exits 0 with the results as JSON, 1 when the query is undefined (it names no rule
    /// or value the policies define), 2 when the policies, the input or the query are
    /// unusable.
    Eval {
        /// The directory holding the `.rego` files (and an optional data.json).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The input document, a JSON file (what the gateway passes as `input`).
        #[arg(long)]
        input: PathBuf,
        /// A Rego query, e.g. `data.government.digital.allow`.
        #[arg(long)]
        query: String,
    },
}

/// Everything `run` would validate: the config, and the policies and keys it names.
fn load_for_check(path: &std::path::Path) -> Result<edgegate::control::reload::Loaded, Vec<String>> {
    let base = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let loaded = edgegate::control::reload::load(path, &base)?;
    // What `run` reads only at start: the audit signing key, the Redis level's CAs and key,
    // the listeners' ticket secrets.
    if let Some(key) = &loaded.config.audit.signing_key {
        if let Err(e) = edgegate_filters::audit::store::load_signing_key(&base.join(key)) {
            return Err(vec![format!("audit.signing_key: {e}")]);
        }
    }
    if let Some(redis) = &loaded.config.redis {
        // Set up as a start does (reading its CA bundle and key), connecting to nothing.
        edgegate::cache::l2::L2::new(redis, &base).map_err(|e| vec![e])?;
    }
    let ticket_keys = loaded.config.listeners.iter().enumerate().filter_map(|(i, l)| {
        let path = l.tls.as_ref()?.session_ticket_keys.as_ref()?;
        let e = edgegate::tickets::FleetTickets::load(&base.join(path)).err()?;
        Some(format!("listeners[{i}].tls.session_ticket_keys: {e}"))
    });
    let errors: Vec<String> = ticket_keys.collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(loaded)
}

fn policy_command(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Test { dir } => match edgegate_filters::policy::run_tests(&dir) {
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                ExitCode::from(2)
            }
            Ok(results) => {
                let failed = results.iter().filter(|r| !r.passed).count();
                for r in &results {
                    match (&r.error, r.passed) {
                        (_, true) => println!("PASS {}", r.name),
                        (Some(e), false) => println!("FAIL {} ({e})", r.name),
                        (None, false) => println!("FAIL {}", r.name),
                    }
                }
                println!("--------------------------------------------------------------------------------");
                println!("PASS: {}/{}", results.len() - failed, results.len());
                if failed > 0 || results.is_empty() {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
            }
        },
        PolicyCommand::Eval { dir, input, query } => {
            let result = (|| -> anyhow::Result<(String, bool)> {
                let mut engine =
                    edgegate_filters::policy::engine_for(&dir).map_err(|e| anyhow::anyhow!(e.join("\n")))?.engine;
                let text = std::fs::read_to_string(&input)
                    .map_err(|e| anyhow::anyhow!("--input {}: cannot read: {e}", input.display()))?;
                engine
                    .set_input_json(&text)
                    .map_err(|e| anyhow::anyhow!("--input {}: not JSON: {e}", input.display()))?;
                let results = engine.eval_query(query.clone(), false)?;
                Ok((serde_json::to_string_pretty(&results)?, results.result.is_empty()))
            })();
            match result {
                Ok((_, true)) => {
                    let known = edgegate_filters::policy::rule_names(&dir);
                    eprintln!(
                        "edgegate: {query} is undefined for this input: it names no rule or value the policies in {} define (rules there: {})",
                        dir.display(),
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    );
                    ExitCode::from(1)
                }
                Ok((text, false)) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("edgegate: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// The room a policy command's thread has for its stack: the pages are reserved, and
/// touched only as deep as an evaluation goes.
const POLICY_STACK: usize = 1 << 29;

/// Runs a policy command on a thread with [`POLICY_STACK`] of stack. regorus' interpreter,
/// which `policy test` and `policy eval` use, recurses once for each rule a rule calls: a
/// chain of ~20,000 rules (one file's most lines) overflowed the main thread's 8 MiB and
/// the process aborted. The gateway itself refuses such policies (see `PolicySet::load`).
fn on_a_deep_stack(run: impl FnOnce() -> ExitCode + Send + 'static) -> ExitCode {
    let thread = std::thread::Builder::new().name("policy".into()).stack_size(POLICY_STACK).spawn(run);
    match thread {
        Ok(thread) => thread.join().unwrap_or_else(|_| ExitCode::from(2)),
        Err(e) => {
            eprintln!("edgegate: cannot start the policy thread: {e}");
            ExitCode::from(2)
        }
    }
}

fn exit_with(result: anyhow::Result<()>) -> ExitCode {
    edgegate::logging::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
