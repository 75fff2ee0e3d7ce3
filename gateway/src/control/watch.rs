//! Reload triggers (control path): changes in the config file's directory and SIGHUP,
//! handled by one background service, off the request path.
//!
//! The directory is watched, not the file: in Kubernetes the config is a ConfigMap
//! mounted as a directory, whose files are symlinks through `..data`, and kubelet
//! updates it by atomically re-pointing `..data` at a new timestamped directory. A
//! watch on the file would follow the old inode and miss that. Bursts of events (an
//! editor's write-and-rename, kubelet's several steps) are debounced into one reload;
//! a reload of unchanged bytes is a no-op. Only events on the config file, the files
//! it names and kubelet's `..data` entries count.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::reload::{Reloader, Watched};
use super::status::Trigger;
use crate::state::{BackgroundGuard, GatewayState};

/// Quiet time after the last filesystem event before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// The reload triggers as a Pingora background service: started with the server, stopped
/// by its shutdown signal. Without a reloader (embedded demo config) it still owns SIGHUP,
/// so the signal is logged instead of killing the process.
pub struct ConfigWatch {
    pub state: Arc<GatewayState>,
    pub reloader: Option<Arc<Reloader>>,
    pub watch_files: bool,
    /// The start config's bytes and hash, kept as the last-known-good copy before the
    /// gateway reports ready (taken on start).
    pub keep: std::sync::Mutex<Option<(Vec<u8>, String)>>,
}

#[async_trait]
impl BackgroundService for ConfigWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _running = BackgroundGuard::new(&self.state);
        let keep = self.keep.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let (Some(reloader), Some((text, hash))) = (self.reloader.clone(), keep) {
            // A write and two fsyncs: on a blocking thread, while the listeners already serve.
            let _ = tokio::task::spawn_blocking(move || reloader.persist_initial(&text, &hash)).await;
        }
        tokio::select! {
            _ = control_loop(&self.state, self.reloader.clone(), self.watch_files) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Makes SIGHUP harmless from now on (its default action ends the process), before the
/// watch service that handles it has started.
pub fn claim_sighup() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    // Registration is process-wide and outlives this runtime; the stream is dropped.
    runtime.block_on(async { signal(SignalKind::hangup()).map(drop) })?;
    Ok(())
}

async fn control_loop(state: &GatewayState, reloader: Option<Arc<Reloader>>, watch_files: bool) {
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGHUP; reload through the admin endpoint or the file");
            None
        }
    };
    let (tx, mut events) = mpsc::unbounded_channel::<notify::Result<Event>>();
    // What counts, shared with the watcher's own thread, which drops every other event
    // there: a busy file beside the config (an audit log written thousands of times a
    // second) then never wakes this loop.
    let covers = Arc::new(std::sync::RwLock::new(Watched::default()));
    // Kept alive for as long as the loop runs. Without a watcher the sender is gone and
    // the event branch below is disabled, leaving SIGHUP.
    let mut watcher = reloader.as_ref().filter(|_| watch_files).and_then(|_| new_watcher(tx, covers.clone()));
    let watching = watcher.is_some();
    let mut watched = HashSet::new();
    if let (Some(w), Some(r)) = (watcher.as_mut(), &reloader) {
        sync_watches(w, r, &mut watched, &covers);
        // The audit log is a start-time setting: checked once.
        if let Some(db) = r.audit_log_in_watched_dir() {
            tracing::warn!(
                audit_db = %db.display(),
                "the audit log is in a directory watched for config changes: each write to it wakes the \
                 watcher's thread (a few per cent of the gateway's CPU under load); keep it elsewhere, e.g. \
                 in the state directory"
            );
        }
    }
    state.lifecycle.watching.store(true, std::sync::atomic::Ordering::Release);

    loop {
        tokio::select! {
            Some(()) = recv_signal(&mut hangup) => match &reloader {
                // `reload` logs and counts its own outcome.
                Some(r) => drop(r.reload(Trigger::Signal)),
                None => tracing::warn!("SIGHUP: this gateway runs the embedded config; there is no file to reload"),
            },
            // Only the config's own files' events arrive here (see `new_watcher`).
            Some(_) = events.recv(), if watching => {
                // Debounce: wait until the config's files have been quiet for a moment.
                let mut quiet_until = tokio::time::Instant::now() + DEBOUNCE;
                while let Ok(Some(_)) = tokio::time::timeout_at(quiet_until, events.recv()).await {
                    quiet_until = tokio::time::Instant::now() + DEBOUNCE;
                }
                if let Some(r) = &reloader {
                    drop(r.reload(Trigger::Watch));
                }
            }
        }
        // A reload may have pointed at a new policy or key directory.
        if let (Some(w), Some(r)) = (watcher.as_mut(), &reloader) {
            sync_watches(w, r, &mut watched, &covers);
        }
    }
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// A watcher whose thread passes on only the events [`relevant`] to what `covers` names.
fn new_watcher(
    tx: mpsc::UnboundedSender<notify::Result<Event>>,
    covers: Arc<std::sync::RwLock<Watched>>,
) -> Option<notify::RecommendedWatcher> {
    match notify::recommended_watcher(move |event| {
        let counts = relevant(&event, &covers.read().unwrap_or_else(|p| p.into_inner()));
        if counts {
            let _ = tx.send(event);
        }
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch files; reload with SIGHUP or POST /-/reload");
            None
        }
    }
}

/// Watches every directory the serving config is made of (the config file's, and those
/// of the files it names), and sets `covers` to what events to react to.
fn sync_watches(
    watcher: &mut notify::RecommendedWatcher,
    reloader: &Reloader,
    watched: &mut HashSet<PathBuf>,
    covers: &std::sync::RwLock<Watched>,
) {
    let now = reloader.watched();
    let dirs = now.watch_dirs();
    // Set before the new watches exist, so none of their first events is dropped.
    *covers.write().unwrap_or_else(|p| p.into_inner()) = now;
    for dir in dirs {
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::info!(directory = %dir.display(), "watching for config changes");
                watched.insert(dir);
            }
            Err(e) => {
                tracing::error!(directory = %dir.display(), error = %e, "cannot watch; reload with SIGHUP or POST /-/reload")
            }
        }
    }
}

/// Only changes to what the config is made of trigger a reload — a log file or an
/// editor's scratch file beside the config does not. Reading files (our own reloads
/// included) never does; writes, creations, renames and removals do.
fn relevant(event: &notify::Result<Event>, covers: &Watched) -> bool {
    match event {
        Err(e) => {
            tracing::warn!(error = %e, "config watch error");
            false
        }
        Ok(e) => {
            let kind = match e.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                EventKind::Access(_) => false,
                _ => true,
            };
            kind && e.paths.iter().any(|p| covers.covers(p))
        }
    }
}
