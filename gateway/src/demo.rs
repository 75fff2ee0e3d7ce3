//! `edgegate demo`: the gateway on the shipped demo config, with a demo pod started on
//! every local loopback endpoint the config names, so a newcomer sees real proxied
//! answers with one command.

use std::path::Path;

use anyhow::Context as _;
use edgegate_config::{Config, Locality};

use crate::control::reload::{content_hash, ConfigSource};
use crate::control::status::{ConfigStatus, ServingFrom};
use crate::pod::{Pod, PodSpec};
use crate::server::{self, RunOptions, Startup};

/// The demo config, embedded so `edgegate demo` works from any directory.
pub const DEMO_CONFIG: &str = include_str!("../../config/examples/demo.yaml");

pub fn run(config_path: Option<&Path>) -> anyhow::Result<()> {
    let startup = match config_path {
        // A given file is watched and reloaded like `edgegate run` does.
        Some(path) => {
            Startup::from_source(ConfigSource::new(path.to_owned(), std::env::temp_dir().join("edgegate-demo-state")))?
        }
        None => Startup {
            config: Config::from_yaml(DEMO_CONFIG).context("the embedded demo config is invalid")?,
            guards: Default::default(),
            tls: Default::default(),
            upstream_tls: Default::default(),
            status: ConfigStatus::new(None, content_hash(DEMO_CONFIG.as_bytes()), ServingFrom::Embedded),
            source: None,
        },
    };
    let config = &startup.config;
    // The pods get their own small runtime; it lives as long as this function, which
    // blocks in `server::run` until shutdown.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let pods: Vec<Pod> = runtime.block_on(async {
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
    if let Some(l) = config.listeners.first() {
        let a = l.address;
        let admin = config.admin.address;
        println!("edgegate demo: {} pods behind http://{a}", pods.len());
        println!("  curl -i http://{a}/api/permits/42");
        println!("  curl -i http://{a}/api/office-hours");
        println!("  curl -i -H 'Host: north.districts.localhost' http://{a}/");
        println!("  curl -i http://{a}/no/such/route        # 404 JSON with request id");
        println!("  curl -s http://{admin}/metrics | grep edgegate_requests_total");
        println!("Ctrl+C stops; SIGTERM drains.");
    }
    server::run(startup, RunOptions { ports_file: None, watch: true })
}
