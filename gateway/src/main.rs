//! The `edgegate` binary.
//!
//! Run lines:
//!   edgegate demo                         # gateway + demo pods on the shipped demo config
//!   edgegate run --config edgegate.yaml   # serve
//!   edgegate check --config edgegate.yaml # validate, like `nginx -t`; exit 2 on errors

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgegate::reload::ConfigSource;
use edgegate::server::{RunOptions, Startup};
use edgegate_config::Config;

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
    /// Start demo pods and serve the shipped demo config (or the given one).
    Demo {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: valid ({} listeners, {} upstream groups, {} routes)",
                    config.display(),
                    c.listeners.len(),
                    c.upstreams.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid", config.display());
                for err in e.field_errors() {
                    eprintln!("  {err}");
                }
                ExitCode::from(2)
            }
        },
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
