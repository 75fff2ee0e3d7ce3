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
use edgegate_config::{files, Config};
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
    /// Fall back to a last-known-good copy saved for another config path (`run
    /// --any-last-known-good`); by default a copy is only used for the path it was saved for.
    pub any_last_known_good: bool,
}

pub const LKG_FILE: &str = "last-known-good.yaml";
/// Beside the copy: the absolute path of the config file it was accepted from.
pub const LKG_SOURCE_FILE: &str = "last-known-good.source";

impl ConfigSource {
    pub fn new(path: PathBuf, state_dir: PathBuf) -> ConfigSource {
        ConfigSource { path, state_dir, any_last_known_good: false }
    }

    pub fn last_known_good(&self) -> PathBuf {
        self.state_dir.join(LKG_FILE)
    }

    /// The config path as recorded beside the copy: absolute, so `./a.yaml` and
    /// `/etc/x/a.yaml` run from `/etc/x` are the same file.
    fn recorded_path(&self) -> String {
        std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone()).display().to_string()
    }
}

/// SHA-256 of the file's bytes, as `sha256:<hex>`.
pub fn content_hash(bytes: &[u8]) -> String {
    hex_digest(Sha256::digest(bytes).as_slice())
}

/// What a config is made of: the YAML plus every file `Config::dependencies` names (a
/// directory's files included), so a changed policy, key, certificate or CA bundle is a
/// changed config even when the YAML is not.
fn fingerprint(yaml: &[u8], config: &Config, base: &Path) -> String {
    let mut h = Sha256::new();
    h.update(yaml);
    for f in dependency_files(config, base) {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update(files::read(&f, files::CONFIG_FILE).unwrap_or_default());
    }
    hex_digest(h.finalize().as_slice())
}

/// The files a config is made of, resolved against `base`: each dependency file, and the
/// files in each dependency directory (sorted).
pub fn dependency_files(config: &Config, base: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dep in config.dependencies() {
        let path = base.join(&dep.path);
        if dep.dir {
            let mut entries: Vec<PathBuf> = fs::read_dir(&path)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect())
                .unwrap_or_default();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(path);
        }
    }
    files
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
/// The file's copy is not written here: [`Reloader::persist_initial`] keeps it once the
/// gateway serves, so that start-up waits on no disk write beyond reading the config.
pub fn load_initial(source: &ConfigSource) -> anyhow::Result<(Loaded, ConfigStatus)> {
    let file_error = match load(&source.path, &source.base_dir()) {
        Ok(loaded) => {
            let status = ConfigStatus::new(Some(source.path.clone()), loaded.hash.clone(), ServingFrom::File);
            return Ok((loaded, status));
        }
        Err(errors) => errors,
    };
    let lkg = source.last_known_good();
    // A copy kept for another config file (a state directory shared by mistake, or a
    // different config passed after an upgrade) is not this file's last good version.
    let saved_for = files::read_text(&source.state_dir.join(LKG_SOURCE_FILE), files::KEY_FILE).ok();
    if let Some(saved_for) = saved_for.as_deref().map(str::trim) {
        let wanted = source.recorded_path();
        if lkg.exists() && saved_for != wanted && !source.any_last_known_good {
            anyhow::bail!(
                "no usable config: {} is unusable ({}); the last-known-good copy {} was saved for another config file, {saved_for}, so it is not used (pass --any-last-known-good to serve it anyway)",
                source.path.display(),
                file_error.join("; "),
                lkg.display(),
            );
        }
    }
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
    let bytes = files::read(path, files::CONFIG_FILE)
        .map_err(|e| vec![format!("cannot read config file {}: {e}", path.display())])?;
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
/// A copy that already holds these bytes for this config file is left as it is: a restart
/// with an unchanged config (the common case) waits on no disk write.
pub fn persist_last_known_good(source: &ConfigSource, text: &[u8]) -> anyhow::Result<()> {
    let target = source.last_known_good();
    let marker = source.state_dir.join(LKG_SOURCE_FILE);
    if files::read(&target, files::CONFIG_FILE).is_ok_and(|kept| kept == text)
        && files::read_text(&marker, files::KEY_FILE).is_ok_and(|saved_for| saved_for == source.recorded_path())
    {
        return Ok(());
    }
    fs::create_dir_all(&source.state_dir).with_context(|| format!("creating {}", source.state_dir.display()))?;
    let tmp = source.state_dir.join(format!(".{LKG_FILE}.tmp"));
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, &target).with_context(|| format!("renaming to {}", target.display()))?;
    // Which config file the copy belongs to (read only when falling back to it).
    let marker_tmp = source.state_dir.join(format!(".{LKG_SOURCE_FILE}.tmp"));
    fs::write(&marker_tmp, source.recorded_path())?;
    fs::rename(&marker_tmp, &marker).with_context(|| format!("renaming to {}", marker.display()))?;
    fs::File::open(&source.state_dir)?.sync_all()?;
    Ok(())
}

/// The paths a reload depends on (see [`Reloader::watched`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watched {
    /// The config file and the files it names.
    pub files: Vec<PathBuf>,
    /// Directories whose every file counts (policies).
    pub dirs: Vec<PathBuf>,
}

impl Watched {
    /// Directories to put a watch on: the parents of the files, and the directories.
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        let parent = |f: &PathBuf| {
            f.parent().filter(|p| !p.as_os_str().is_empty()).map_or(PathBuf::from("."), Path::to_path_buf)
        };
        let mut dirs: Vec<PathBuf> = self.files.iter().map(parent).chain(self.dirs.iter().cloned()).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Whether a change at `path` may change the config: one of the files, anything in one
    /// of the directories, or a Kubernetes atomic-writer entry (`..data`, `..2026_…`)
    /// beside a file — a ConfigMap or Secret update re-points those, not the files.
    pub fn covers(&self, path: &Path) -> bool {
        let in_dir = |d: &PathBuf| path.parent() == Some(d.as_path()) || path == d;
        let atomic_writer = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".."));
        self.files.iter().any(|f| f == path)
            || self.dirs.iter().any(in_dir)
            || (atomic_writer && self.watch_dirs().iter().any(|d| path.parent() == Some(d.as_path())))
    }
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

    /// What may change the serving config: the config file, and each file or directory
    /// its dependencies name. The watcher watches their directories and reacts only to
    /// events on these.
    pub fn watched(&self) -> Watched {
        // Absolute, so they compare equal to the paths the watcher reports.
        let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        let base = self.source.base_dir();
        let snapshot = self.state.snapshot.load();
        let mut files = vec![absolute(self.source.path.clone())];
        let mut dirs = Vec::new();
        for dep in snapshot.config.dependencies() {
            let path = absolute(base.join(&dep.path));
            if dep.dir {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
        Watched { files, dirs }
    }

    /// The audit log, when it lies in a directory watched for config changes (beside the
    /// config file, typically): every write to it is then an event the watcher's thread
    /// reads and drops — 2–5 % of the gateway's CPU under load (docs/benchmarks.md).
    pub fn audit_log_in_watched_dir(&self) -> Option<PathBuf> {
        let snapshot = self.state.snapshot.load();
        let db = snapshot.config.audit.db.as_ref()?;
        let db = std::path::absolute(self.source.base_dir().join(db)).ok()?;
        let dir = db.parent()?.to_path_buf();
        self.watched().watch_dirs().contains(&dir).then_some(db)
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

        let _no_discovery_swap = self.state.swap.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.state.snapshot.load_full();
        let mut config = config;
        self.state.discovery.apply(&mut config);
        let restart_required: Vec<String> =
            config.keep_start_time_settings(&previous.config).into_iter().map(str::to_owned).collect();
        let mut snapshot = Snapshot::build(
            config,
            guards,
            upstream_tls,
            previous.generation + 1,
            &self.state.metrics,
            Some(&previous),
        );
        snapshot.fingerprint = hash.as_str().into();
        let generation = snapshot.generation;
        crate::proxy::steps::apply_stalled_limit(&snapshot.config.limits);
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
                last_reload: Some((SystemTime::now(), trigger, generation)),
                last_attempt: Some((SystemTime::now(), trigger, "applied")),
                last_error: status.last_error.clone(),
                restart_required: restart_required.clone(),
                persist_error: persist_error.clone(),
                ..ConfigStatus::new(Some(self.source.path.clone()), hash.clone(), ServingFrom::File)
            };
        }
        let took = started.elapsed();
        self.state.metrics.config_generation.set(generation as i64);
        self.state.metrics.state_dir_writable.set(i64::from(persist_error.is_none()));
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

    /// Keeps the config the gateway started from as the last-known-good copy (`text`,
    /// whose hash is `hash`), off the start path: run by the reload service before it
    /// reports the gateway ready. Under the reload lock, and only while that config still
    /// serves — a reload that came first has already kept its own, newer one.
    pub fn persist_initial(&self, text: &[u8], hash: &str) {
        let _no_reload = self.state.swap.lock().unwrap_or_else(|p| p.into_inner());
        if self.state.status().hash != hash {
            return;
        }
        let persist_error = persist_last_known_good(&self.source, text).err().map(|e| format!("{e:#}"));
        self.state.metrics.state_dir_writable.set(i64::from(persist_error.is_none()));
        if let Some(e) = &persist_error {
            // Loudly, once: without it a node whose config goes bad has nothing to fall back to.
            tracing::error!(error = %e, "the state directory is not writable: the last-known-good config is not being kept (and an audit log kept there cannot be written); make it writable by the gateway's user");
        }
        self.state.status().persist_error = persist_error;
    }

    fn reject(&self, trigger: Trigger, errors: Vec<String>) -> Outcome {
        tracing::error!(trigger = trigger.as_str(), config = %self.source.path.display(), ?errors, "config rejected; still serving the previous one");
        self.state.status().last_error = Some((SystemTime::now(), trigger, errors.clone()));
        self.finish(trigger, Outcome::Rejected { errors })
    }

    fn finish(&self, trigger: Trigger, outcome: Outcome) -> Outcome {
        self.state.metrics.config_reloads.with_label_values(&[outcome.result()]).inc();
        self.state.status().last_attempt = Some((SystemTime::now(), trigger, outcome.result()));
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unchanged copy is not written again (no fsync on a restart with the same config);
    /// a changed config, or the same bytes for another config file, is.
    #[test]
    fn an_unchanged_last_known_good_copy_is_not_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = ConfigSource::new(dir.path().join("edgegate.yaml"), dir.path().join("state"));
        persist_last_known_good(&source, b"listeners: []\n").expect("first write");
        let lkg = source.last_known_good();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).expect("metadata"));
        let first = inode(&lkg);
        persist_last_known_good(&source, b"listeners: []\n").expect("unchanged");
        assert_eq!(inode(&lkg), first, "the same bytes for the same file: not replaced");
        persist_last_known_good(&source, b"listeners: [] # edited\n").expect("changed");
        assert_ne!(inode(&lkg), first, "a changed config is written (a new file renamed in)");
        assert_eq!(fs::read(&lkg).expect("read"), b"listeners: [] # edited\n");
        let second = inode(&lkg);
        let other = ConfigSource::new(dir.path().join("other.yaml"), dir.path().join("state"));
        persist_last_known_good(&other, b"listeners: [] # edited\n").expect("other file");
        assert_ne!(inode(&lkg), second, "the same bytes for another config file: rewritten with its marker");
        let marker = fs::read_to_string(dir.path().join("state").join(LKG_SOURCE_FILE)).expect("marker");
        assert!(marker.ends_with("other.yaml"), "{marker}");
    }

    #[test]
    fn the_watcher_reacts_to_the_config_its_files_and_kubelet_only() {
        let w = Watched {
            files: vec![PathBuf::from("/etc/edgegate/edgegate.yaml"), PathBuf::from("/etc/edgegate/tls/ca.pem")],
            dirs: vec![PathBuf::from("/etc/edgegate/policy")],
        };
        assert_eq!(
            w.watch_dirs(),
            vec![
                PathBuf::from("/etc/edgegate"),
                PathBuf::from("/etc/edgegate/policy"),
                PathBuf::from("/etc/edgegate/tls")
            ]
        );
        for p in [
            "/etc/edgegate/edgegate.yaml",
            "/etc/edgegate/tls/ca.pem",
            "/etc/edgegate/policy/government.rego",
            "/etc/edgegate/policy/data.json",
            "/etc/edgegate/..data",
            "/etc/edgegate/..2026_11_30_04_00_00.123",
            "/etc/edgegate/tls/..data",
        ] {
            assert!(w.covers(Path::new(p)), "{p}");
        }
        for p in [
            "/etc/edgegate/gateway.log",
            "/etc/edgegate/.edgegate.yaml.swp",
            "/etc/edgegate/tls/other.pem",
            "/etc/edgegate/policy/sub/x.rego",
            "/etc/other/..data",
        ] {
            assert!(!w.covers(Path::new(p)), "{p}");
        }
    }
}
