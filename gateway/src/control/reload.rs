//! Config reload (control path, never the request path): read → parse → validate →
//! build the complete new snapshot → one `ArcSwap::store`. A rejected config changes
//! nothing that serves traffic. Every accepted config is persisted as the
//! last-known-good copy, which the gateway starts from when its configured file is
//! missing or broken (an edge node must keep serving when its link to the centre is not).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use edgegate_config::Config;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::status::{ConfigStatus, ServingFrom, Trigger};
use crate::access::Guards;
use crate::snapshot::Snapshot;
use crate::state::GatewayState;
use crate::tls::{CertStore, PeerTls};
use std::collections::HashMap;

/// Where the config comes from and where accepted copies are kept.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub state_dir: PathBuf,
}

pub const LKG_FILE: &str = "last-known-good.yaml";

impl ConfigSource {
    pub fn last_known_good(&self) -> PathBuf {
        self.state_dir.join(LKG_FILE)
    }
}

/// SHA-256 of the file's bytes, as `sha256:<hex>`.
pub fn content_hash(bytes: &[u8]) -> String {
    hex_digest(Sha256::digest(bytes).as_slice())
}

/// What a config is made of: the YAML plus every policy file and the JWKS it refers
/// to, so a changed policy file is a changed config even when the YAML is not.
fn fingerprint(yaml: &[u8], config: &Config, base: &Path) -> String {
    let mut h = Sha256::new();
    h.update(yaml);
    let mut files = Vec::new();
    if let Some(p) = &config.policies {
        if let Ok(entries) = fs::read_dir(base.join(&p.dir)) {
            files.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
        }
    }
    files.sort();
    if let Some(jwt) = &config.jwt {
        files.push(base.join(&jwt.keys));
    }
    for tls in config.listeners.iter().filter_map(|l| l.tls.as_ref()) {
        for pair in &tls.certificates {
            files.push(base.join(&pair.cert));
            files.push(base.join(&pair.key));
        }
    }
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update(fs::read(&f).unwrap_or_default());
    }
    hex_digest(h.finalize().as_slice())
}

fn hex_digest(digest: &[u8]) -> String {
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The result of one reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        generation: u64,
        restart_required: Vec<String>,
        took: Duration,
    },
    /// Same bytes as the config serving now: nothing to do.
    Unchanged {
        generation: u64,
    },
    Rejected {
        errors: Vec<String>,
    },
}

impl Outcome {
    pub fn result(&self) -> &'static str {
        match self {
            Outcome::Applied { .. } => "applied",
            Outcome::Unchanged { .. } => "unchanged",
            Outcome::Rejected { .. } => "error",
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Outcome::Applied { generation, restart_required, took } => json!({
                "result": "applied", "generation": generation, "restart_required": restart_required,
                "took_us": took.as_micros() as u64,
            }),
            Outcome::Unchanged { generation } => json!({"result": "unchanged", "generation": generation}),
            Outcome::Rejected { errors } => json!({"result": "error", "errors": errors}),
        }
    }
}

/// A config read from disk, validated, with its identity and policy compiled.
pub struct Loaded {
    pub config: Config,
    pub guards: Guards,
    /// Certificates of each TLS listener, by listener name.
    pub tls: HashMap<String, Arc<CertStore>>,
    /// TLS settings of upstream groups that use TLS, by group name.
    pub upstream_tls: HashMap<String, Arc<PeerTls>>,
    pub bytes: Vec<u8>,
    pub hash: String,
}

impl ConfigSource {
    /// Relative paths in the config (policies, keys) are relative to the config file's
    /// directory — also when the last-known-good copy is what is being loaded.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

/// Loads the config to start with: the configured file, or — when it is missing or
/// invalid — the last-known-good copy. With neither, start-up fails with both reasons.
pub fn load_initial(source: &ConfigSource) -> anyhow::Result<(Loaded, ConfigStatus)> {
    let file_error = match load(&source.path, &source.base_dir()) {
        Ok(loaded) => {
            let mut status = ConfigStatus::new(Some(source.path.clone()), loaded.hash.clone(), ServingFrom::File);
            status.persist_error = persist_last_known_good(source, &loaded.bytes).err().map(|e| format!("{e:#}"));
            return Ok((loaded, status));
        }
        Err(errors) => errors,
    };
    let lkg = source.last_known_good();
    match load(&lkg, &source.base_dir()) {
        Ok(loaded) => {
            tracing::error!(
                config = %source.path.display(),
                last_known_good = %lkg.display(),
                errors = ?file_error,
                "CONFIG FILE UNUSABLE: serving the last-known-good config; fix the file, it is being watched"
            );
            let mut status =
                ConfigStatus::new(Some(source.path.clone()), loaded.hash.clone(), ServingFrom::LastKnownGood);
            status.last_error = Some((SystemTime::now(), Trigger::Startup, file_error));
            Ok((loaded, status))
        }
        Err(lkg_error) => anyhow::bail!(
            "no usable config: {} is unusable ({}) and so is the last-known-good copy {} ({})",
            source.path.display(),
            file_error.join("; "),
            lkg.display(),
            lkg_error.join("; ")
        ),
    }
}

/// Reads, validates and compiles a config file; relative paths in it resolve from `base`.
pub fn load(path: &Path, base: &Path) -> Result<Loaded, Vec<String>> {
    let bytes = fs::read(path).map_err(|e| vec![format!("cannot read config file {}: {e}", path.display())])?;
    let text = std::str::from_utf8(&bytes).map_err(|e| vec![format!("{} is not UTF-8: {e}", path.display())])?;
    let config =
        Config::from_yaml(text).map_err(|e| e.field_errors().iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let guards = crate::access::compile(&config, base);
    let tls = crate::tls::load_all(&config, base);
    let upstream_tls = crate::tls::upstream_tls(&config, base);
    let (guards, tls, upstream_tls) = match (guards, tls, upstream_tls) {
        (Ok(g), Ok(t), Ok(u)) => (g, t, u),
        (g, t, u) => return Err(g.err().into_iter().chain(t.err()).chain(u.err()).flatten().collect()),
    };
    let hash = fingerprint(&bytes, &config, base);
    Ok(Loaded { config, guards, tls, upstream_tls, bytes, hash })
}

/// Writes the accepted config atomically and durably: temp file, fsync, rename, fsync
/// of the directory. A crash leaves either the old copy or the new one, never a torn file.
pub fn persist_last_known_good(source: &ConfigSource, text: &[u8]) -> anyhow::Result<()> {
    fs::create_dir_all(&source.state_dir).with_context(|| format!("creating {}", source.state_dir.display()))?;
    let target = source.last_known_good();
    let tmp = source.state_dir.join(format!(".{LKG_FILE}.tmp"));
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, &target).with_context(|| format!("renaming to {}", target.display()))?;
    fs::File::open(&source.state_dir)?.sync_all()?;
    Ok(())
}

/// Applies config changes at run time. One reload at a time; requests never wait on it.
pub struct Reloader {
    state: Arc<GatewayState>,
    source: ConfigSource,
    lock: Mutex<()>,
}

impl Reloader {
    pub fn new(state: Arc<GatewayState>, source: ConfigSource) -> Reloader {
        Reloader { state, source, lock: Mutex::new(()) }
    }

    pub fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// Directories whose changes may change the config: the config file's, and those
    /// of the serving snapshot's policies and keys.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        let base = self.source.base_dir();
        let snapshot = self.state.snapshot.load();
        let mut dirs = vec![base.clone()];
        if let Some(p) = &snapshot.config.policies {
            dirs.push(base.join(&p.dir));
        }
        let mut files: Vec<PathBuf> = snapshot.config.jwt.iter().map(|j| base.join(&j.keys)).collect();
        for tls in snapshot.config.listeners.iter().filter_map(|l| l.tls.as_ref()) {
            files.extend(tls.certificates.iter().flat_map(|p| [base.join(&p.cert), base.join(&p.key)]));
        }
        dirs.extend(files.iter().filter_map(|f| f.parent().map(Path::to_path_buf)));
        dirs.sort();
        dirs.dedup();
        dirs
    }

    pub fn reload(&self, trigger: Trigger) -> Outcome {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let started = Instant::now();
        let Loaded { config, guards, tls, upstream_tls, bytes, hash } =
            match load(&self.source.path, &self.source.base_dir()) {
                Ok(loaded) => loaded,
                Err(errors) => return self.reject(trigger, errors),
            };
        {
            let status = self.state.status();
            if status.hash == hash && status.serving_from == ServingFrom::File {
                drop(status);
                return self.finish(trigger, Outcome::Unchanged { generation: self.state.snapshot.load().generation });
            }
        }

        let previous = self.state.snapshot.load_full();
        let (config, restart_required) = keep_start_time_settings(&previous.config, config);
        let snapshot = Snapshot::build(
            config,
            guards,
            upstream_tls,
            previous.generation + 1,
            &self.state.metrics,
            Some(&previous),
        );
        let generation = snapshot.generation;
        // Persisted before the swap: the config that serves is always the one a restart
        // would fall back to. A failure to persist is reported, not fatal.
        let persist_error = persist_last_known_good(&self.source, &bytes).err().map(|e| format!("{e:#}"));
        {
            // Swap while holding the status lock, so `/-/config` never shows a
            // generation with another config's hash or trigger.
            let mut status = self.state.status();
            self.state.snapshot.store(Arc::new(snapshot));
            // New certificates apply to new handshakes from here on.
            for (listener, resolver) in &self.state.listeners.tls {
                if let Some(store) = tls.get(listener) {
                    resolver.store.store(Arc::clone(store));
                }
            }
            *status = ConfigStatus {
                last_reload: Some((SystemTime::now(), trigger, "applied")),
                last_error: status.last_error.clone(),
                restart_required: restart_required.clone(),
                persist_error: persist_error.clone(),
                ..ConfigStatus::new(Some(self.source.path.clone()), hash.clone(), ServingFrom::File)
            };
        }
        let took = started.elapsed();
        self.state.metrics.config_generation.set(generation as i64);
        if let Some(e) = &persist_error {
            tracing::warn!(error = %e, "config applied but the last-known-good copy could not be written");
        }
        for field in &restart_required {
            tracing::warn!(field = %field, "config change needs a restart to apply");
        }
        self.state.metrics.config_last_known_good.set(0);
        self.state.metrics.config_restart_required.set(restart_required.len() as i64);
        tracing::info!(trigger = trigger.as_str(), generation, took_us = took.as_micros() as u64, %hash, "config applied");
        self.state.metrics.config_reloads.with_label_values(&["applied"]).inc();
        Outcome::Applied { generation, restart_required, took }
    }

    fn reject(&self, trigger: Trigger, errors: Vec<String>) -> Outcome {
        tracing::error!(trigger = trigger.as_str(), config = %self.source.path.display(), ?errors, "config rejected; still serving the previous one");
        self.state.status().last_error = Some((SystemTime::now(), trigger, errors.clone()));
        self.finish(trigger, Outcome::Rejected { errors })
    }

    fn finish(&self, trigger: Trigger, outcome: Outcome) -> Outcome {
        self.state.metrics.config_reloads.with_label_values(&[outcome.result()]).inc();
        self.state.status().last_reload = Some((SystemTime::now(), trigger, outcome.result()));
        outcome
    }
}

/// Listeners, the admin address, worker threads and the shutdown grace period are
/// fixed when the process starts. A new config that changes them is applied with the
/// running values kept, and each such change is reported as needing a restart.
fn keep_start_time_settings(running: &Config, mut new: Config) -> (Config, Vec<String>) {
    let mut restart = Vec::new();
    // Certificates and HSTS apply live; what is bound, and how, does not.
    let shape = |c: &Config| -> Vec<_> {
        c.listeners.iter().map(|l| (l.name.clone(), l.address, l.behind_tls, l.tls.is_some())).collect()
    };
    if shape(&new) != shape(running) {
        let show =
            |c: &Config| c.listeners.iter().map(|l| format!("{}={}", l.name, l.address)).collect::<Vec<_>>().join(", ");
        restart.push(format!("listeners: running [{}], new [{}]: restart required", show(running), show(&new)));
        new.listeners = running.listeners.clone();
    }
    if new.admin != running.admin {
        restart.push(format!(
            "admin.address: running {}, new {}: restart required",
            running.admin.address, new.admin.address
        ));
        new.admin = running.admin.clone();
    }
    if new.runtime != running.runtime {
        restart.push(format!("runtime: running {:?}, new {:?}: restart required", running.runtime, new.runtime));
        new.runtime = running.runtime;
    }
    if new.shutdown != running.shutdown {
        restart.push(format!(
            "shutdown.grace_period: running {:?}, new {:?}: restart required",
            running.shutdown.grace_period, new.shutdown.grace_period
        ));
        new.shutdown = running.shutdown;
    }
    (new, restart)
}
