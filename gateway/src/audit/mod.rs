//! The audit sink: the request path hands each finished request's record to a bounded
//! queue (a few hundred nanoseconds, never a wait); one writer thread batches records
//! into the node's SQLite log (`edgegate_filters::audit`), checkpoints and signs the
//! chain, and applies retention. A forwarder ([`forward`]) ships committed records to the
//! central collector.
//!
//! The sink's health is a policy input: `input.audit.enabled` is true only while the last
//! commit succeeded and the queue is below its high-water mark. With
//! `audit.on_failure: deny` (the default) the shipped policy then refuses citizen requests
//! rather than serve them unaudited; it recovers by itself once commits succeed again.

pub mod forward;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgegate_config::Audit;
use edgegate_filters::audit::{Durability, Record, Store};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

/// Records waiting for the writer, at most.
pub const QUEUE_CAPACITY: usize = 65_536;
/// Above this many waiting records the sink reports itself not accepting.
const HIGH_WATER: usize = QUEUE_CAPACITY * 3 / 4;
/// A batch is at most this many records…
const BATCH_RECORDS: usize = 1_000;
/// …taken from the queue every this long.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// The writer yields its core after this many records of a batch (~0.1 ms of work): it
/// shares cores with the request threads, and a whole batch (up to 10 ms of traffic) run
/// at once would hold a request woken meanwhile for as long…
const YIELD_EVERY: usize = 32;
/// …but only while fewer records than this wait. On a saturated core every yield hands a
/// request thread a whole time slice, and a writer yielding then falls behind until the
/// queue passes its high-water mark and policy refuses citizens (closed-loop `policy` load
/// did exactly that); with a backlog it keeps its fair share instead.
const YIELD_BELOW: usize = 2 * BATCH_RECORDS;
/// How often a failing log is retried (and reopened).
const RETRY: Duration = Duration::from_secs(1);
/// How often retention runs, and how many records one step deletes at most.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
const RETENTION_BATCH: usize = 1_000;

/// The sink's metrics, registered in the gateway's registry.
pub struct AuditMetrics {
    pub written: IntCounter,
    pub dropped: IntCounter,
    pub queue: IntGauge,
    pub healthy: IntGauge,
    pub commit_seconds: Histogram,
    pub forwarded: IntCounter,
    pub forward_errors: IntCounter,
    pub forward_lag_records: IntGauge,
    pub forward_lag_seconds: IntGauge,
}

impl AuditMetrics {
    fn new(registry: &Registry) -> AuditMetrics {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("static metric definition");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("static metric definition");
        let m = AuditMetrics {
            written: counter("edgegate_audit_records_written_total", "Audit records committed to the node's log"),
            dropped: counter(
                "edgegate_audit_records_dropped_total",
                "Audit records lost because the queue was full (the sink was failing or too slow)",
            ),
            queue: gauge("edgegate_audit_queue_depth", "Audit records waiting to be committed"),
            healthy: gauge(
                "edgegate_audit_sink_healthy",
                "1 while the audit sink accepts records (last commit succeeded, queue below its high-water mark)",
            ),
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new("edgegate_audit_commit_seconds", "Time to commit one batch of audit records")
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
            )
            .expect("static metric definition"),
            forwarded: counter(
                "edgegate_audit_records_forwarded_total",
                "Audit records acknowledged by the central collector",
            ),
            forward_errors: counter(
                "edgegate_audit_forward_errors_total",
                "Failed attempts to send a batch to the central collector",
            ),
            forward_lag_records: gauge(
                "edgegate_audit_forward_lag_records",
                "Committed audit records the collector has not acknowledged",
            ),
            forward_lag_seconds: gauge(
                "edgegate_audit_forward_lag_seconds",
                "Age of the oldest audit record the collector has not acknowledged",
            ),
        };
        for c in [
            Box::new(m.written.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.dropped.clone()),
            Box::new(m.queue.clone()),
            Box::new(m.healthy.clone()),
            Box::new(m.commit_seconds.clone()),
            Box::new(m.forwarded.clone()),
            Box::new(m.forward_errors.clone()),
            Box::new(m.forward_lag_records.clone()),
            Box::new(m.forward_lag_seconds.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        m
    }
}

/// The request path's side of the audit trail.
pub struct AuditSink {
    tx: SyncSender<Queued>,
    depth: AtomicUsize,
    committed: AtomicBool,
    pub(crate) stop: AtomicBool,
    stopped: AtomicBool,
    pub deny_on_failure: bool,
    pub keep_query: bool,
    pub db: PathBuf,
    pub node: String,
    pub metrics: AuditMetrics,
    pub verify_metrics: verify::VerifyMetrics,
    /// The last background verification of the log.
    pub last_verify: verify::LastVerify,
    /// The reason the sink last failed, for the log and `/readyz`.
    pub last_error: Mutex<Option<String>>,
    /// The last committed sequence number (the writer's), the last one the collector
    /// acknowledged (the forwarder's; `u64::MAX` until it has read the log) and the time of
    /// the oldest record not acknowledged (0: none). The forward-lag gauges are computed
    /// from them by the writer every batch window, so they stay current while the
    /// forwarder is backing off.
    head: AtomicU64,
    acked: AtomicU64,
    oldest_unacked_ms: AtomicU64,
}

/// The node's name in its records: configured, else `$NODE_NAME` (the DaemonSet sets it
/// from the downward API), else the host name.
pub fn node_name(configured: Option<&str>) -> String {
    if let Some(n) = configured {
        return n.to_owned();
    }
    if let Ok(n) = std::env::var("NODE_NAME") {
        if !n.is_empty() {
            return n;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edgegate".to_owned())
}

/// What the logging step knows about a finished request, borrowed from its context.
pub struct RecordParts<'a> {
    pub request_id: &'a str,
    pub route: &'a str,
    pub client_ip: Option<std::net::IpAddr>,
    pub user: Option<&'a str>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub keep_query: bool,
    pub outcome: &'a str,
    pub rule: &'a str,
    pub config: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub duration_us: u64,
    pub upstream: Option<std::net::SocketAddr>,
    pub cache: &'a str,
    pub trace: edgegate_filters::trace::TraceContext,
}

/// A record on its way to the writer: the addresses and the trace id stay typed, and the
/// writer thread formats them, off the request path.
pub struct Queued {
    record: Record,
    client_ip: Option<std::net::IpAddr>,
    upstream: Option<std::net::SocketAddr>,
    trace: edgegate_filters::trace::TraceContext,
}

impl Queued {
    /// The record with its addresses formatted: what the writer commits.
    pub fn into_record(self) -> Record {
        let mut r = self.record;
        if let Some(ip) = self.client_ip {
            r.client_ip = ip.to_string();
        }
        if let Some(a) = self.upstream {
            r.upstream = a.to_string();
        }
        if self.trace.is_known() {
            r.trace_id = self.trace.trace_id().to_owned();
        }
        r
    }
}

/// The record for `parts` (its sequence number and node are the writer's to fill in):
/// every text field copied, the query's values redacted unless kept. The request path's
/// whole share of auditing, with [`AuditSink::push`].
pub fn record(parts: &RecordParts<'_>) -> Queued {
    let query = match parts.query {
        None => String::new(),
        Some(q) if parts.keep_query => q.to_owned(),
        Some(q) => edgegate_filters::audit::redact_query(q),
    };
    let record = Record {
        seq: 0,
        time_ms: now_ms(),
        node: String::new(),
        request_id: parts.request_id.to_owned(),
        route: parts.route.to_owned(),
        client_ip: String::new(),
        user: parts.user.unwrap_or_default().to_owned(),
        method: parts.method.to_owned(),
        host: parts.host.to_owned(),
        path: parts.path.to_owned(),
        query,
        outcome: parts.outcome.to_owned(),
        rule: parts.rule.to_owned(),
        config: parts.config.to_owned(),
        status: parts.status,
        bytes: parts.bytes,
        duration_us: parts.duration_us,
        upstream: String::new(),
        cache: parts.cache.to_owned(),
        trace_id: String::new(),
    };
    Queued { record, client_ip: parts.client_ip, upstream: parts.upstream, trace: parts.trace }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl AuditSink {
    /// Starts the writer thread on the log at `config.audit.db` (resolved from `base`).
    /// A log that cannot be opened does not stop the gateway: the sink reports itself
    /// failing (so policy refuses citizen requests) and the writer keeps retrying.
    pub fn start(config: &Audit, base: &Path, registry: &Registry) -> anyhow::Result<Option<Arc<AuditSink>>> {
        let Some(db) = &config.db else { return Ok(None) };
        let db = base.join(db);
        let key = match &config.signing_key {
            Some(path) => Some(
                edgegate_filters::audit::store::load_signing_key(&base.join(path))
                    .map_err(|e| anyhow::anyhow!("audit.signing_key: {e}"))?,
            ),
            None => {
                tracing::warn!("audit.signing_key is not set: checkpoints are not signed");
                None
            }
        };
        let verifying_key = key.as_ref().map(ed25519_dalek::SigningKey::verifying_key);
        let (tx, rx) = sync_channel(QUEUE_CAPACITY);
        let sink = Arc::new(AuditSink {
            tx,
            depth: AtomicUsize::new(0),
            committed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            deny_on_failure: config.deny_on_failure,
            keep_query: config.keep_query,
            db: db.clone(),
            node: node_name(config.node.as_deref()),
            metrics: AuditMetrics::new(registry),
            verify_metrics: verify::VerifyMetrics::new(registry),
            last_verify: verify::LastVerify::default(),
            last_error: Mutex::new(None),
            head: AtomicU64::new(0),
            acked: AtomicU64::new(u64::MAX),
            oldest_unacked_ms: AtomicU64::new(0),
        });
        let writer = Writer {
            sink: Arc::clone(&sink),
            rx,
            key,
            durability: if config.synchronous_full { Durability::Full } else { Durability::Normal },
            checkpoint_records: config.checkpoint_records,
            checkpoint_interval: config.checkpoint_interval,
            retention: config.retention,
            forwarding: config.forward.is_some(),
        };
        // Open once here so a healthy log is accepting before the first request.
        let store = writer.open();
        std::thread::Builder::new().name("audit-writer".into()).spawn(move || writer.run(store))?;
        verify::spawn(Arc::clone(&sink), verifying_key, config.verify_interval)?;
        tracing::info!(db = %db.display(), node = %sink.node, "audit log open");
        Ok(Some(sink))
    }

    /// The last commit succeeded and the queue is below its high-water mark.
    pub fn accepting(&self) -> bool {
        self.committed.load(Ordering::Relaxed) && self.depth.load(Ordering::Relaxed) < HIGH_WATER
    }

    /// What policy sees as `input.audit.enabled`.
    pub fn policy_input(&self) -> bool {
        !self.deny_on_failure || self.accepting()
    }

    /// Queues a record; never waits. A full queue drops the record and counts it.
    pub fn push(&self, record: Queued) {
        match self.tx.try_send(record) {
            Ok(()) => {
                self.depth.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.metrics.dropped.inc(),
        }
    }

    /// Asks the writer to commit what is queued and stop; waits up to `within`.
    pub fn flush_and_stop(&self, within: Duration) -> bool {
        self.stop.store(true, Ordering::Release);
        let deadline = Instant::now() + within;
        while !self.stopped.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Records queued and not yet committed.
    pub fn queued(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    fn set_committed(&self, ok: bool, error: Option<String>) {
        let was = self.committed.swap(ok, Ordering::Relaxed);
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            // Said once per distinct failure, not once per retry.
            Some(error) if !ok && last.as_deref() != Some(error.as_str()) => {
                tracing::error!(db = %self.db.display(), %error, "audit log failing: records are not being committed; with audit.on_failure: deny, policy refuses citizen requests until it recovers");
                *last = Some(error);
            }
            // The failure is named again: its own line may not have reached a log on the
            // same full disk.
            None if ok && !was => {
                if let Some(error) = last.take() {
                    tracing::warn!(db = %self.db.display(), after = %error, "audit log recovered: records are being committed again");
                }
            }
            _ => {}
        }
        drop(last);
        self.update_health();
    }

    /// The forwarder's progress: `acked` is acknowledged, and the oldest record after it
    /// was written at `oldest_ms` (None: nothing is waiting).
    pub fn set_forward_progress(&self, acked: u64, oldest_ms: Option<u64>) {
        self.acked.store(acked, Ordering::Relaxed);
        self.oldest_unacked_ms.store(oldest_ms.unwrap_or(0), Ordering::Relaxed);
        self.update_forward_lag();
    }

    fn update_forward_lag(&self) {
        let acked = self.acked.load(Ordering::Relaxed);
        if acked == u64::MAX {
            return;
        }
        let head = self.head.load(Ordering::Relaxed);
        let waiting = head.saturating_sub(acked);
        let mut oldest = self.oldest_unacked_ms.load(Ordering::Relaxed);
        if waiting > 0 && oldest == 0 {
            // Committed after the forwarder last looked: at most this old.
            let _ = self.oldest_unacked_ms.compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
            oldest = self.oldest_unacked_ms.load(Ordering::Relaxed);
        }
        self.metrics.forward_lag_records.set(waiting as i64);
        let age = if waiting == 0 { 0 } else { now_ms().saturating_sub(oldest) / 1000 };
        self.metrics.forward_lag_seconds.set(age as i64);
    }

    fn update_health(&self) {
        self.metrics.healthy.set(i64::from(self.accepting()));
        self.metrics.queue.set(self.depth.load(Ordering::Relaxed) as i64);
    }
}

struct Writer {
    sink: Arc<AuditSink>,
    rx: Receiver<Queued>,
    key: Option<ed25519_dalek::SigningKey>,
    durability: Durability,
    checkpoint_records: u64,
    checkpoint_interval: Duration,
    retention: Duration,
    forwarding: bool,
}

impl Writer {
    fn open(&self) -> Option<Store> {
        if let Some(dir) = self.sink.db.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match Store::open(&self.sink.db, &self.sink.node, self.durability) {
            Ok(store) => {
                self.sink.head.store(store.last_seq(), Ordering::Relaxed);
                self.sink.set_committed(true, None);
                Some(store)
            }
            Err(e) => {
                self.sink.set_committed(false, Some(format!("cannot open the log: {e}")));
                None
            }
        }
    }

    fn run(self, mut store: Option<Store>) {
        let mut batch: Vec<Record> = Vec::with_capacity(BATCH_RECORDS);
        let mut last_checkpoint = Instant::now();
        let retention_every = RETENTION_EVERY.min(self.retention / 2).max(Duration::from_millis(100));
        let mut next_retention = Instant::now() + retention_every;
        let mut failing_since: Option<Instant> = None;
        let mut backlog = false;
        loop {
            let stopping = self.sink.stop.load(Ordering::Acquire);
            if store.is_none() || failing_since.is_some_and(|t| t.elapsed() < RETRY) {
                if stopping && failing_since.is_some_and(|t| t.elapsed() >= RETRY * 2) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                if failing_since.is_some_and(|t| t.elapsed() < RETRY) {
                    continue;
                }
                if store.is_none() {
                    store = self.open();
                    if store.is_none() {
                        failing_since = Some(Instant::now());
                        continue;
                    }
                }
            }
            if batch.is_empty() {
                // The writer never blocks on the queue: a blocked receiver would make every
                // request's push a futex wake and a context switch. It sleeps a batch window
                // and takes what arrived; after a full batch it goes straight on.
                if !backlog {
                    std::thread::sleep(BATCH_WINDOW);
                }
                loop {
                    match self.rx.try_recv() {
                        Ok(r) => {
                            batch.push(r.into_record());
                            if batch.len() >= BATCH_RECORDS {
                                break;
                            }
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            self.sink.stop.store(true, Ordering::Release);
                            break;
                        }
                    }
                }
                backlog = batch.len() >= BATCH_RECORDS;
            }
            let Some(s) = store.as_mut() else { continue };
            if !batch.is_empty() {
                let started = Instant::now();
                let depth = &self.sink.depth;
                let pause = || {
                    if depth.load(Ordering::Relaxed) < YIELD_BELOW {
                        std::thread::yield_now();
                    }
                };
                match s.append_pausing(&mut batch, YIELD_EVERY, pause) {
                    Ok(()) => {
                        self.sink.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
                        self.sink.metrics.written.inc_by(batch.len() as u64);
                        self.sink.depth.fetch_sub(batch.len(), Ordering::Relaxed);
                        self.sink.head.store(s.last_seq(), Ordering::Relaxed);
                        batch.clear();
                        failing_since = None;
                        self.sink.set_committed(true, None);
                    }
                    Err(e) => {
                        // Kept for the retry; the queue behind it fills and the sink
                        // reports not accepting. The log is reopened: a file made
                        // writable again is then written.
                        self.sink.set_committed(false, Some(format!("commit failed: {e}")));
                        failing_since = Some(Instant::now());
                        store = None;
                        continue;
                    }
                }
            } else {
                self.sink.update_health();
            }
            if self.forwarding {
                self.sink.update_forward_lag();
            }
            let due = s.since_checkpoint() >= self.checkpoint_records
                || (s.since_checkpoint() > 0 && last_checkpoint.elapsed() >= self.checkpoint_interval)
                || (stopping && s.since_checkpoint() > 0);
            if due {
                match s.checkpoint(self.key.as_ref(), now_ms()) {
                    Ok(()) => last_checkpoint = Instant::now(),
                    Err(e) => tracing::warn!(error = %e, "audit checkpoint failed; retried with the next batch"),
                }
            }
            if Instant::now() >= next_retention {
                // A step that deleted something is followed by another soon after.
                let more = self.retain(s);
                next_retention = Instant::now() + if more { Duration::from_millis(100) } else { retention_every };
            }
            if stopping && batch.is_empty() && self.sink.depth.load(Ordering::Relaxed) == 0 {
                break;
            }
        }
        self.sink.stopped.store(true, Ordering::Release);
        tracing::info!("audit writer stopped");
    }

    /// One retention step; true when it deleted records (more may be due).
    fn retain(&self, store: &mut Store) -> bool {
        let before = now_ms().saturating_sub(self.retention.as_millis() as u64);
        let keep_after = if self.forwarding {
            match edgegate_filters::audit::Reader::open(&self.sink.db).and_then(|r| r.forwarded()) {
                Ok(seq) => Some(seq),
                Err(_) => return false,
            }
        } else {
            None
        };
        match store.retain(before, keep_after, RETENTION_BATCH) {
            Ok(0) => false,
            Ok(n) => {
                tracing::info!(deleted = n, "audit retention removed expired records");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit retention failed; retried later");
                false
            }
        }
    }
}
