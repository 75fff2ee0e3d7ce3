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
    },
    /// Validate a config and exit: 0 when valid, 2 with every error on stderr otherwise.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Work with Rego policies outside the gateway.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Start demo pods and serve the shipped demo config (or the given one).
    Demo {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    edgegate::process::setup();
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
        Command::Policy { command } => policy_command(command),
        Command::Run { config, state_dir, no_watch, ports_file } => {
            edgegate::logging::init();
            let startup = match Startup::from_source(ConfigSource { path: config, state_dir }) {
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
enum PolicyCommand {
    /// Run every `test_*` rule in DIR's policies, like `opa test`; exit 1 if any fails.
    Test { dir: PathBuf },
    /// Evaluate a query against DIR's policies with an input document (JSON file).
    Eval {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long)]
        input: PathBuf,
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
    edgegate::control::reload::load(path, &base)
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
            let result = (|| -> anyhow::Result<String> {
                let (mut engine, _) =
                    edgegate_filters::policy::engine_for(&dir).map_err(|e| anyhow::anyhow!(e.join("\n")))?;
                engine.set_input_json(&std::fs::read_to_string(&input)?)?;
                let results = engine.eval_query(query, false)?;
                Ok(serde_json::to_string_pretty(&results)?)
            })();
            match result {
                Ok(text) => {
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
