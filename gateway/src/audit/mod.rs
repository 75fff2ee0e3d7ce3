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
mod queue;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgegate_config::Audit;
use edgegate_filters::audit::{Durability, Store};
use prometheus::proto::MetricType;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

use crate::metrics::family::{ScrapeCollector, Spec};

/// Records waiting for the writer or being written, at most: the sink's own count, not the
/// queue's (`audit/queue.rs` says why the records travel in reused chunks, not in a ring
/// of this many slots).
pub const QUEUE_CAPACITY: usize = 65_536;
/// Above this many waiting records the sink reports itself not accepting.
const HIGH_WATER: usize = QUEUE_CAPACITY * 3 / 4;
/// A batch is at most this many records, taken from the queue every `audit.commit_interval`
/// while records keep coming (at once after a full batch). Each batch is one commit, and
/// with `synchronous: full` one fsync of the WAL: 4,000 a commit took ~0.1 µs of system
/// time off a record (`audit_writer` example), but the records of a batch count as waiting
/// until it commits, so the thresholds below were passed more often and the rescue writer
/// wrote more at normal priority: the tail at 37,000 req/s grew (docs/benchmarks.md,
/// thirty-first session). The rescue writer's own batches are bigger
/// ([`RESCUE_BATCH_RECORDS`]).
const BATCH_RECORDS: usize = 1_000;
/// The writers insert a batch this many records at a time, and the log is free between
/// two such steps: a writer preempted halfway through a batch holds it up for one step at
/// most (well under 0.1 ms of CPU: a step formats its records into the row being filled,
/// and every fourth also hashes and inserts that row of 128), and the other writer carries
/// the open transaction on.
const STEP_RECORDS: usize = 32;
/// SQLite's WAL is copied into the database file every this many records (~2 MB), by the
/// WAL copier at idle priority, on a connection of its own (the commit that passes
/// the mark wakes it); by the rescue writer where there is no copier.
const WAL_CHECKPOINT_RECORDS: u64 = 4_000;
/// A WAL this far behind (the copier starved on a saturated core) is copied by the rescue
/// writer, at normal priority, as before there was a copier. Not much further: the copy it
/// makes then is a turn a request thread waits behind, longer the further behind.
const WAL_COPY_FALLBACK: u64 = 2 * WAL_CHECKPOINT_RECORDS;
/// …or this long after the last copy, whichever comes first: at low rates a commit of a few
/// records still writes whole 16 KiB pages, and 4,000 records took the WAL to 15 MB at 500
/// requests/s.
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// A background step (~0.1 ms of CPU) that took this long was preempted for most of it: the
/// cores are saturated, and the background writer leaves the log to the catch-up writer…
/// (At 2 ms it stood aside at 70–80 % load too, where a request burst often outlasts that,
/// and the catch-up writer then wrote at normal priority.)
const STARVED: Duration = Duration::from_millis(20);
/// …for this long.
const STARVED_PAUSE: Duration = Duration::from_secs(1);
/// The catch-up writer (the lowest nice value) takes over while this many records wait…
const CATCH_UP_ABOVE: usize = 2 * BATCH_RECORDS;
/// …or while records wait and no writer has finished a step for this long past the commit
/// interval.
const CATCH_UP_AFTER: Duration = Duration::from_millis(100);
/// A backlog this deep (~0.1 s of records at the rates a saturated node proxies) is more
/// than the catch-up writer is clearing: the rescue writer writes until the backlog is down
/// to half of it — no further, since every batch it writes holds a request thread up (down
/// to [`CATCH_UP_ABOVE`] / 4 it took 1.4–2 % of a 60 % busy core, in bursts the client's
/// p99 showed)…
const RESCUE_ABOVE: usize = 8 * BATCH_RECORDS;
/// …or while records wait and no writer has finished a step for this long past the commit
/// interval (then down to [`CATCH_UP_ABOVE`] / 4).
const RESCUE_AFTER: Duration = Duration::from_secs(1);
/// The rescue writer's batch is at most this many records: the whole descent from
/// [`RESCUE_ABOVE`] to its half in one commit, where [`BATCH_RECORDS`] made it four. A
/// saturated core's log then commits ~40 % less often (the commits' `fdatasync`s and WAL
/// writes are most of the writers' system time). Only the rescue writer's: the catch-up
/// writer, at the lowest nice value, would hold a batch this big for long (the
/// thirty-first session's bigger batches).
const RESCUE_BATCH_RECORDS: usize = RESCUE_ABOVE / 2;
/// With nothing queued the writers wait for the next record, not for a timer: the
/// background writer until a push wakes it (or [`PARKED_AT_MOST`], a safety net), the
/// rescue writer until its next checkpoint or retention step is due, this long at most
/// (the sink's gauges are brought up to date then).
const IDLE_WAIT: Duration = Duration::from_secs(1);
const PARKED_AT_MOST: Duration = Duration::from_secs(5);
/// How often a failing log is retried (and reopened).
const RETRY: Duration = Duration::from_secs(1);
/// How often retention runs, and how many records one step deletes at most.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
const RETENTION_BATCH: usize = 1_000;
/// How often the log's size is compared with `audit.max_size`, and how many records one
/// step deletes at most when it is past it: a flood of requests can add ~20,000 records a
/// second, and steps follow each other every 100 ms while they find something to delete.
const SIZE_EVERY: Duration = Duration::from_secs(1);
const SIZE_BATCH: usize = 10_000;

/// The sink's metrics, registered in the gateway's registry.
pub struct AuditMetrics {
    pub written: IntCounter,
    pub dropped: IntCounter,
    pub queue: IntGauge,
    pub healthy: IntGauge,
    pub commit_seconds: Histogram,
    pub forwarded: IntCounter,
    pub forward_errors: IntCounter,
    /// Records deleted by `audit.retention` and by `audit.max_size`.
    pub pruned_age: IntCounter,
    pub pruned_size: IntCounter,
    /// What the log's records take on disk, as last measured.
    pub db_bytes: IntGauge,
}

impl AuditMetrics {
    fn new(registry: &Registry) -> AuditMetrics {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("static metric definition");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("static metric definition");
        let pruned = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "edgegate_audit_records_pruned_total",
                "Audit records deleted from the node's log, by reason: age (audit.retention) or size (audit.max_size)",
            ),
            &["reason"],
        )
        .expect("static metric definition");
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
            pruned_age: pruned.with_label_values(&["age"]),
            pruned_size: pruned.with_label_values(&["size"]),
            db_bytes: gauge(
                "edgegate_audit_db_bytes",
                "Bytes the audit log's records take in its file (measured every second), against audit.max_size",
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
            Box::new(pruned),
            Box::new(m.db_bytes.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        m
    }
}

static LAG_SPECS: [Spec; 2] = [
    Spec {
        name: "edgegate_audit_forward_lag_records",
        help: "Committed audit records the collector has not acknowledged",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Spec {
        name: "edgegate_audit_forward_lag_seconds",
        help: "Age of the oldest audit record the collector has not acknowledged",
        kind: MetricType::GAUGE,
        labels: &[],
    },
];

/// How far the central collector is behind the node's log: the last committed sequence
/// number (the writer's), the last one the collector acknowledged (the forwarder's;
/// `u64::MAX` until it has read the log) and the time of the oldest record not acknowledged
/// (0: none). The gauges are computed from them when Prometheus scrapes
/// ([`ForwardLag::collector`]), so the age grows between the forwarder's looks — which back
/// off to a minute while the centre is unreachable — and on an idle node, whose writers are
/// parked, without a thread waking to update it.
#[derive(Debug)]
pub(crate) struct ForwardLag {
    head: AtomicU64,
    acked: AtomicU64,
    oldest_unacked_ms: AtomicU64,
}

impl ForwardLag {
    fn new() -> ForwardLag {
        ForwardLag { head: AtomicU64::new(0), acked: AtomicU64::new(u64::MAX), oldest_unacked_ms: AtomicU64::new(0) }
    }

    /// The writer committed up to `head` at `now_ms`. If nothing was waiting when the
    /// forwarder last looked, the oldest waiting record is one of this commit.
    fn committed(&self, head: u64, now_ms: u64) {
        self.head.store(head, Ordering::Relaxed);
        let acked = self.acked.load(Ordering::Relaxed);
        if acked != u64::MAX && head > acked {
            let _ = self.oldest_unacked_ms.compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The forwarder's look at the log: `acked` is acknowledged, and the oldest record after
    /// it was written at `oldest_ms` (None: nothing is waiting).
    fn progress(&self, acked: u64, oldest_ms: Option<u64>) {
        self.acked.store(acked, Ordering::Relaxed);
        self.oldest_unacked_ms.store(oldest_ms.unwrap_or(0), Ordering::Relaxed);
    }

    /// Records waiting and the age of the oldest of them (seconds) at `now_ms`; zeros until
    /// the forwarder has read the log, and when nothing waits.
    fn read(&self, now_ms: u64) -> (u64, f64) {
        let acked = self.acked.load(Ordering::Relaxed);
        if acked == u64::MAX {
            return (0, 0.0);
        }
        let waiting = self.head.load(Ordering::Relaxed).saturating_sub(acked);
        if waiting == 0 {
            return (0, 0.0);
        }
        // A commit racing the forwarder's look can leave no time behind: the records are
        // at most as old as this first sight of them.
        let _ = self.oldest_unacked_ms.compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
        let oldest = self.oldest_unacked_ms.load(Ordering::Relaxed);
        (waiting, now_ms.saturating_sub(oldest) as f64 / 1e3)
    }

    fn collector(lag: Arc<ForwardLag>) -> ScrapeCollector {
        ScrapeCollector::new(&LAG_SPECS, move || {
            let (waiting, age) = lag.read(now_ms());
            let (mut records, mut seconds) = (LAG_SPECS[0].family(), LAG_SPECS[1].family());
            records.push(&[], waiting as f64);
            seconds.push(&[], age);
            vec![records.finish(), seconds.finish()]
        })
    }
}

/// The request path's side of the audit trail.
pub struct AuditSink {
    queue: queue::Queue,
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
    /// How far the central collector is behind (the forward-lag gauges).
    lag: Arc<ForwardLag>,
    /// WAL checkpoints the writer has completed: the verifier waits for one between the
    /// parts of a walk while the WAL is long.
    pub(crate) wal_checkpoints: AtomicU64,
    /// The writer that takes batches waits, parked, for the first record after the queue
    /// ran empty; a push wakes it only while this is set (an atomic load per request, a
    /// wake-up per idle spell — not a timer firing every few milliseconds on an idle node).
    parked: AtomicBool,
    /// That writer's thread, and the catch-up writer's (woken when a batch awaits its
    /// commit, when the queue reaches [`CATCH_UP_ABOVE`], and at stop).
    sleeper: std::sync::OnceLock<std::thread::Thread>,
    committer: std::sync::OnceLock<std::thread::Thread>,
    /// The rescue writer, woken when the queue passes [`RESCUE_ABOVE`].
    rescuer: std::sync::OnceLock<std::thread::Thread>,
    /// The WAL copier, woken by the commit that makes a copy due by count.
    copier: std::sync::OnceLock<std::thread::Thread>,
    /// The verifier's thread, parked between its walks (woken at stop).
    pub(crate) verifier: std::sync::OnceLock<std::thread::Thread>,
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

/// The text fields of a queued record, in the order they sit in its buffer: the request
/// path writes the first [`FROM_REQUEST`]; the writer appends the last three.
#[derive(Clone, Copy)]
enum Text {
    RequestId,
    Route,
    User,
    Method,
    Host,
    Path,
    Query,
    Outcome,
    Rule,
    Config,
    Cache,
    ClientIp,
    Upstream,
    TraceId,
}
const TEXTS: usize = Text::TraceId as usize + 1;
const FROM_REQUEST: usize = Text::Cache as usize + 1;
/// Room kept in a record's buffer for what the writer appends: an IPv4 client, an IPv4
/// upstream with its port and a trace id fit without growing it.
const WRITER_ROOM: usize = 15 + 21 + 32;

/// A record on its way to the writer: every text field in one buffer (one allocation on
/// the request path, one free on the writer's), the addresses and the trace id typed until
/// the writer formats them, off the request path, into the same buffer.
pub struct Queued {
    text: String,
    /// Where each field ends in `text`, by [`Text`].
    ends: [u32; TEXTS],
    time_ms: u64,
    status: u16,
    bytes: u64,
    duration_us: u64,
    client_ip: Option<std::net::IpAddr>,
    upstream: Option<std::net::SocketAddr>,
    trace: edgegate_filters::trace::TraceContext,
    formatted: bool,
    /// Set when formatted: no text field holds a byte JSON escapes, checked once over the
    /// whole buffer rather than field by field as the writer writes the record's JSON.
    plain: bool,
}

impl Queued {
    /// Every text field, by [`Text`]: the buffer cut at each field's end in one pass.
    fn texts(&self) -> [&str; TEXTS] {
        let mut texts = [""; TEXTS];
        let (mut rest, mut start) = (self.text.as_str(), 0);
        for (text, &end) in texts.iter_mut().zip(&self.ends) {
            let end = end as usize;
            let (field, after) = rest.split_at_checked(end.saturating_sub(start)).unwrap_or((rest, ""));
            (*text, rest, start) = (field, after, end);
        }
        texts
    }

    /// Appends the client address, the upstream's and the trace id as text: what the writer
    /// does once as it takes the record from the queue. A second call changes nothing.
    pub fn formatted(mut self) -> Self {
        use edgegate_filters::addr::push_ip;
        use std::fmt::Write as _;
        if self.formatted {
            return self;
        }
        if let Some(ip) = self.client_ip {
            push_ip(&mut self.text, ip);
        }
        self.ends[Text::ClientIp as usize] = self.text.len() as u32;
        match self.upstream {
            Some(std::net::SocketAddr::V4(a)) => {
                push_ip(&mut self.text, std::net::IpAddr::V4(*a.ip()));
                self.text.push(':');
                self.text.push_str(itoa::Buffer::new().format(a.port()));
            }
            Some(a) => {
                let _ = write!(self.text, "{a}");
            }
            None => {}
        }
        self.ends[Text::Upstream as usize] = self.text.len() as u32;
        if self.trace.is_known() {
            self.text.push_str(self.trace.trace_id());
        }
        self.ends[Text::TraceId as usize] = self.text.len() as u32;
        self.formatted = true;
        self.plain = !edgegate_filters::json::needs_escaping(self.text.as_bytes());
        self
    }
}

impl edgegate_filters::audit::AsFields for Queued {
    fn fields(&self) -> edgegate_filters::audit::Fields<'_> {
        let t = self.texts();
        edgegate_filters::audit::Fields {
            time_ms: self.time_ms,
            request_id: t[Text::RequestId as usize],
            route: t[Text::Route as usize],
            client_ip: t[Text::ClientIp as usize],
            user: t[Text::User as usize],
            method: t[Text::Method as usize],
            host: t[Text::Host as usize],
            path: t[Text::Path as usize],
            query: t[Text::Query as usize],
            outcome: t[Text::Outcome as usize],
            rule: t[Text::Rule as usize],
            config: t[Text::Config as usize],
            status: self.status,
            bytes: self.bytes,
            duration_us: self.duration_us,
            upstream: t[Text::Upstream as usize],
            cache: t[Text::Cache as usize],
            trace_id: t[Text::TraceId as usize],
        }
    }

    fn json_plain(&self) -> bool {
        self.plain
    }
}

/// The record for `parts` (its sequence number and node are the writer's to fill in):
/// every text field copied into one buffer, the query's values redacted unless kept. The
/// request path's whole share of auditing, with [`AuditSink::push`].
pub fn record(parts: &RecordParts<'_>) -> Queued {
    let query = parts.query.unwrap_or_default();
    let user = parts.user.unwrap_or_default();
    let texts: [&str; FROM_REQUEST] = [
        parts.request_id,
        parts.route,
        user,
        parts.method,
        parts.host,
        parts.path,
        query,
        parts.outcome,
        parts.rule,
        parts.config,
        parts.cache,
    ];
    // Redaction only ever lengthens the query (each value becomes `REDACTED`), up to the
    // most a record keeps; the room is a guess, and the buffer grows if a query has many
    // short values.
    let query_room = if query.is_empty() { 0 } else { 32 + query.len().min(edgegate_filters::audit::RECORD_QUERY_MAX) };
    let len: usize = texts.iter().map(|t| t.len()).sum::<usize>() - query.len();
    let mut text = String::with_capacity(len + query_room + WRITER_ROOM);
    let mut ends = [0u32; TEXTS];
    for (i, t) in texts.into_iter().enumerate() {
        if i == Text::Query as usize {
            edgegate_filters::audit::record_query_into(t, parts.keep_query, &mut text);
        } else {
            text.push_str(t);
        }
        ends[i] = text.len() as u32;
    }
    for end in &mut ends[FROM_REQUEST..] {
        *end = text.len() as u32;
    }
    Queued {
        text,
        ends,
        time_ms: now_ms(),
        status: parts.status,
        bytes: parts.bytes,
        duration_us: parts.duration_us,
        client_ip: parts.client_ip,
        upstream: parts.upstream,
        trace: parts.trace,
        formatted: false,
        plain: false,
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl AuditSink {
    /// Starts the writer thread on the log at `config.audit.db` (resolved from `base`).
    /// A log that cannot be opened does not stop the gateway: the sink reports itself
    /// failing (so policy refuses citizen requests) and the writer keeps retrying.
    pub fn start(config: &Audit, base: &Path, registry: &Registry) -> anyhow::Result<Option<Arc<AuditSink>>> {
        Self::start_writers(config, base, registry, &[Role::Background, Role::CatchUp, Role::Rescue, Role::WalCopy])
    }

    /// [`AuditSink::start`] with only the given writer threads (tests run one alone).
    fn start_writers(
        config: &Audit,
        base: &Path,
        registry: &Registry,
        roles: &[Role],
    ) -> anyhow::Result<Option<Arc<AuditSink>>> {
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
        let lag = Arc::new(ForwardLag::new());
        registry.register(Box::new(ForwardLag::collector(Arc::clone(&lag)))).map_err(std::io::Error::other)?;
        let sink = Arc::new(AuditSink {
            queue: queue::Queue::new(),
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
            lag: Arc::clone(&lag),
            wal_checkpoints: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            sleeper: std::sync::OnceLock::new(),
            committer: std::sync::OnceLock::new(),
            rescuer: std::sync::OnceLock::new(),
            copier: std::sync::OnceLock::new(),
            verifier: std::sync::OnceLock::new(),
        });
        let retention_every = RETENTION_EVERY.min(config.retention / 2).max(Duration::from_millis(100));
        let writer = Writer {
            sink: Arc::clone(&sink),
            state: Mutex::new(WriterState {
                held: queue::Held::default(),
                store: None,
                batch: Vec::with_capacity(BATCH_RECORDS),
                inserted: None,
                began: Instant::now(),
                full: false,
                last_checkpoint: Instant::now(),
                next_retention: Instant::now() + retention_every,
                next_size_check: Instant::now(),
                size_warned: None,
                failing_since: None,
            }),
            progress_at: AtomicU64::new(0),
            rescue_waiting: AtomicBool::new(false),
            keeper_rung: AtomicBool::new(false),
            wal_pending: AtomicU64::new(0),
            wal_copied_ms: AtomicU64::new(0),
            started: Instant::now(),
            key,
            durability: if config.synchronous_full { Durability::Full } else { Durability::Normal },
            checkpoint_records: config.checkpoint_records,
            checkpoint_interval: config.checkpoint_interval,
            commit_interval: config.commit_interval,
            retention: config.retention,
            retention_every,
            max_size: config.max_size,
            forwarding: config.forward.is_some(),
        };
        // Open once here so a healthy log is accepting before the first request.
        let store = writer.open();
        writer.state.lock().unwrap_or_else(|p| p.into_inner()).store = store;
        writer.spawn(roles)?;
        verify::spawn(
            Arc::clone(&sink),
            verifying_key,
            verify::Every { recent: config.verify_interval, full: config.verify_full_interval },
        )?;
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
        // Counted before it is sent: counted after, a writer could commit it (and subtract
        // it) first, and the count would wrap below zero for a moment — a sink reporting
        // itself full, and policy refusing requests, for no reason.
        // (Sequentially consistent, with the load of `parked` below: the writer sets
        // `parked` and then reads `depth`, so either it sees this record or this push sees
        // it parked. On x86 both are the instructions the relaxed forms are.)
        let before = self.depth.fetch_add(1, Ordering::SeqCst);
        if before >= QUEUE_CAPACITY {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            self.metrics.dropped.inc();
            return;
        }
        self.queue.push(record);
        // The queue only grows one record at a time, so exactly one push takes it to the
        // catch-up writer's threshold, and one past the rescue writer's, each time it is
        // crossed. (Not woken there, the catch-up writer slept until the records counted as
        // stalled — ~7,000 of them at 37,000 requests/s — and the rescue writer, at normal
        // priority, wrote a third of the log in turns the request thread waited behind.)
        if before + 1 == CATCH_UP_ABOVE {
            if let Some(t) = self.committer.get() {
                t.unpark();
            }
        } else if before == RESCUE_ABOVE {
            if let Some(t) = self.rescuer.get() {
                t.unpark();
            }
        }
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            // The catch-up writer too: it watches the record through and takes it over if
            // the background writer gets no core (busy cores — requests, or the node's
            // pods). Asleep until its next checkpoint, it would see the record up to a
            // second late.
            for t in [self.sleeper.get(), self.committer.get()].into_iter().flatten() {
                t.unpark();
            }
        }
    }

    /// Wakes the sink's threads: it is stopping.
    fn wake_all(&self) {
        for t in [self.sleeper.get(), self.committer.get(), self.rescuer.get(), self.copier.get(), self.verifier.get()]
            .into_iter()
            .flatten()
        {
            t.unpark();
        }
    }

    /// The writer that takes batches found the queue empty: waits until a push wakes it
    /// ([`PARKED_AT_MOST`] at most). Returns at once when records are queued or being written.
    fn wait_for_records(&self) {
        self.parked.store(true, Ordering::SeqCst);
        if self.depth.load(Ordering::SeqCst) == 0 && !self.stop.load(Ordering::Acquire) {
            // A push between the two lines above finds `parked` set and unparks: park then
            // returns at once (the token is kept).
            std::thread::park_timeout(PARKED_AT_MOST);
        }
        self.parked.store(false, Ordering::SeqCst);
    }

    /// Asks the writer to commit what is queued and stop; waits up to `within`.
    pub fn flush_and_stop(&self, within: Duration) -> bool {
        self.stop.store(true, Ordering::Release);
        self.wake_all();
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
        self.lag.progress(acked, oldest_ms);
    }

    fn update_health(&self) {
        self.metrics.healthy.set(i64::from(self.accepting()));
        self.metrics.queue.set(self.depth.load(Ordering::Relaxed) as i64);
    }
}

/// The writer's state, shared by its two threads (one holds it at a time, for one step):
/// the log, the batch being written (kept for the retry when a commit fails) and how far
/// its open transaction has come, and the schedule of checkpoints and retention.
struct WriterState {
    held: queue::Held,
    store: Option<Store>,
    batch: Vec<Queued>,
    /// Records of `batch` inserted in the open transaction; `None`: none is open.
    inserted: Option<usize>,
    began: Instant,
    /// More records were waiting when `batch` was taken.
    full: bool,
    last_checkpoint: Instant,
    next_retention: Instant,
    /// When the log's size is next compared with `audit.max_size`, and when that last
    /// warned (at most once a minute).
    next_size_check: Instant,
    size_warned: Option<Instant>,
    failing_since: Option<Instant>,
}

impl WriterState {
    /// The background writer has inserted all of `batch`; the catch-up writer commits it.
    fn awaiting_commit(&self) -> bool {
        !self.batch.is_empty() && self.inserted == Some(self.batch.len())
    }
}

/// What a writer thread does after a step.
#[derive(Debug, PartialEq)]
enum Next {
    /// Part of a batch or a full one: more to do at once.
    Again,
    Sleep(Duration),
    /// The background writer has inserted a whole batch: the catch-up writer is to commit
    /// it, woken once the state's lock is released (woken under it, it would wake only to
    /// wait for the lock, two wake-ups where one does), then this writer sleeps a commit
    /// interval.
    AwaitsCommit,
    /// The catch-up writer committed a batch that was not full: while catching up it goes
    /// straight on; otherwise it waits for the next batch's ring (see `catch_up_nap`).
    Committed,
    /// Nothing was queued.
    Empty,
    /// Stopping, and everything queued is committed (or the log cannot be written).
    Done,
}

/// The threads that write the log. The background writer runs at idle priority
/// (`SCHED_IDLE`): a request thread on its core preempts it the moment it wakes, so a
/// batch never sits in front of a request (under the fair scheduler a request thread that
/// had used more than its share waited up to a whole tick, 4 ms at HZ=250, behind the
/// writer). It gets a core only when one is idle, so the catch-up writer takes over
/// whenever it falls behind — records pile up past [`CATCH_UP_ABOVE`] or no step has
/// finished for [`CATCH_UP_AFTER`] — and the rescue writer behind that, so that the log
/// keeps its fair share of a saturated node. Nothing the background writer holds may keep the
/// catch-up writer waiting for long: the log is held for one step of [`STEP_RECORDS`]
/// inserts at a time (the other writer carries the open transaction on), the background
/// writer never commits (a commit waits on the disk, and an idle-priority thread woken from
/// that wait holds the log until a core is idle), and it stands aside for
/// [`STARVED_PAUSE`] after a step that busy cores stretched past [`STARVED`]. The catch-up
/// writer commits.
///
/// The catch-up writer runs at the lowest nice value (19): at normal priority it did most
/// of the writing once a node was ~75 % busy, and each of its turns held the request thread
/// of its core off the CPU for up to a scheduler slice (on the Intel Xeon measured, at
/// 37,000 requests/s: gateway-added p99 2.2–2.4 ms at normal priority, 0.8–0.9 ms at nice
/// 19). At nice 19 it gets every idle moment of a core but only ~1.5 % of a saturated one,
/// so whatever it holds is held for long there. It therefore holds the log's state for its
/// own steps only — inserts of [`STEP_RECORDS`] records, and a batch's commit with the
/// signed checkpoint it makes due, in the same transaction — and takes no
/// step while the rescue writer is waiting for the state: a starved catch-up writer delays
/// the rescue writer by one step at most. (Holding it also for the WAL and signed
/// checkpoints, and taking its next step whatever waited, it let the queue fill at
/// saturation: 0.2–0.4 million records dropped in 20 s at ~67,000 requests/s, and citizens
/// refused by policy while the log was not accepting.)
///
/// The rescue writer runs at normal priority. It writes past [`RESCUE_ABOVE`] records or a
/// [`RESCUE_AFTER`] stall, and it does the housekeeping, which holds the state for longer
/// than a step: the signed checkpoints due by time, retention, and the WAL copies where
/// the copier (below) is missing or far behind. An unprivileged
/// thread cannot leave `SCHED_IDLE` or lower its nice value again, hence separate threads
/// rather than one changing its priority.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Background,
    CatchUp,
    Rescue,
    /// Copies the WAL into the database file on a connection of its own, at idle priority
    /// (`SCHED_IDLE`); it writes no records.
    WalCopy,
    /// Tests: a background writer that never gets a core — it takes the batches' wake-ups
    /// and never writes.
    #[cfg(test)]
    Starved,
    /// Tests: a WAL copier that never gets a core — known to the writers, it never copies.
    #[cfg(test)]
    StarvedCopy,
    /// Tests: a catch-up writer that a saturated core stretches — every step it takes holds
    /// the log's state for [`HELD_STEP`].
    #[cfg(test)]
    HeldCatchUp,
}

#[cfg(test)]
const HELD_STEP: Duration = Duration::from_millis(200);

impl Role {
    fn catches_up(self) -> bool {
        match self {
            Role::CatchUp => true,
            #[cfg(test)]
            Role::HeldCatchUp => true,
            _ => false,
        }
    }
}

/// Whether the catch-up writer should write now. When stopping it always does, so that
/// the queue is drained (and the writers end) even if the background writer gets no core.
/// `stalled_after` is the commit interval plus [`CATCH_UP_AFTER`].
fn catch_up_due(depth: usize, since_progress: Duration, stalled_after: Duration, stopping: bool) -> bool {
    stopping || depth >= CATCH_UP_ABOVE || (depth > 0 && since_progress >= stalled_after)
}

/// Whether the rescue writer should write now, and down to which backlog: a deep backlog
/// the catch-up writer is not clearing, to half of [`RESCUE_ABOVE`]; a stalled one, to a
/// quarter of [`CATCH_UP_ABOVE`]; everything when stopping. `writing` is what it returned
/// last time; `stalled_after` is the commit interval plus [`RESCUE_AFTER`].
fn rescue_floor(
    writing: Option<usize>,
    depth: usize,
    since_progress: Duration,
    stalled_after: Duration,
    stopping: bool,
) -> Option<usize> {
    match writing {
        _ if stopping => Some(0),
        Some(floor) if depth > floor => Some(floor),
        _ if depth >= RESCUE_ABOVE => Some(RESCUE_ABOVE / 2),
        _ if depth > 0 && since_progress >= stalled_after => Some(CATCH_UP_ABOVE / 4),
        _ => None,
    }
}

/// Lowers the calling thread to idle priority (`SCHED_IDLE`), or to the lowest nice value
/// where that is refused. Both are allowed without privileges; failing both, it stays at
/// normal priority (the two writers then simply take turns).
pub(crate) fn lower_priority() -> &'static str {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy, ThreadPriority,
        ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle).is_ok() {
        "idle"
    } else if crate::process::lowest_nice() {
        "lowest nice"
    } else {
        "normal"
    }
}

struct Writer {
    sink: Arc<AuditSink>,
    state: Mutex<WriterState>,
    /// When a batch was last committed or a writer last found nothing queued, in ms since
    /// the writers started: the catch-up writer's stall check.
    progress_at: AtomicU64,
    /// The rescue writer is waiting for the state: the catch-up writer takes no step until
    /// it has had it.
    rescue_waiting: AtomicBool,
    /// The WAL copy is the keeper's by count (past [`WAL_COPY_FALLBACK`] with a copier, past
    /// [`WAL_CHECKPOINT_RECORDS`] without) and the rescue writer has been woken for it: it is
    /// not woken again until it has done its housekeeping. (A signed checkpoint due by count
    /// is written with the batch's commit.)
    keeper_rung: AtomicBool,
    /// Records committed since the WAL was last copied into the database file (counted
    /// from before the copy began: the ones committed meanwhile count again), and when, in
    /// ms since the writers started.
    wal_pending: AtomicU64,
    wal_copied_ms: AtomicU64,
    started: Instant,
    key: Option<ed25519_dalek::SigningKey>,
    durability: Durability,
    checkpoint_records: u64,
    checkpoint_interval: Duration,
    /// How long a record waits at most, on a node with an idle core, for others to share
    /// its commit (`audit.commit_interval`).
    commit_interval: Duration,
    retention: Duration,
    retention_every: Duration,
    /// `audit.max_size`.
    max_size: u64,
    forwarding: bool,
}

impl Writer {
    fn open(&self) -> Option<Store> {
        if let Some(dir) = self.sink.db.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // The rescue writer copies the WAL into the database (see `housekeeping`):
        // SQLite's own checkpoints run inside whichever commit finds the WAL full, and
        // that may be the background writer's.
        match Store::open(&self.sink.db, &self.sink.node, self.durability).and_then(|mut store| {
            store.manual_wal_checkpoints()?;
            Ok(store)
        }) {
            Ok(store) => {
                self.sink.lag.committed(store.last_seq(), now_ms());
                self.sink.set_committed(true, None);
                Some(store)
            }
            Err(e) => {
                self.sink.set_committed(false, Some(format!("cannot open the log: {e}")));
                None
            }
        }
    }

    /// Starts the writer threads.
    fn spawn(self, roles: &[Role]) -> std::io::Result<()> {
        let writer = Arc::new(self);
        // The background writer takes the batches; the catch-up writer alone when there is
        // no background one.
        let background = |role| match role {
            Role::Background => true,
            #[cfg(test)]
            Role::Starved => true,
            _ => false,
        };
        // The rescue writer never takes the batches' wake-ups: it looks at the queue.
        let copies = |role| match role {
            Role::WalCopy => true,
            #[cfg(test)]
            Role::StarvedCopy => true,
            _ => false,
        };
        let takes_batches =
            |role| role != Role::Rescue && !copies(role) && (background(role) || !roles.iter().any(|&r| background(r)));
        // The housekeeping is the rescue writer's; the catch-up writer's when there is none.
        let rescued = roles.contains(&Role::Rescue);
        let keeps = |role: Role| role == Role::Rescue || (role.catches_up() && !rescued);
        for &role in roles {
            let name = match role {
                Role::Background => "audit-writer",
                Role::CatchUp => "audit-catchup",
                #[cfg(test)]
                Role::HeldCatchUp => "audit-held",
                Role::Rescue => "audit-rescue",
                Role::WalCopy => "audit-walcopy",
                #[cfg(test)]
                Role::Starved => "audit-starved",
                #[cfg(test)]
                Role::StarvedCopy => "audit-nocopy",
            };
            let writer = Arc::clone(&writer);
            let takes = takes_batches(role);
            let keeps = keeps(role);
            std::thread::Builder::new().name(name.into()).spawn(move || {
                // Known to the sink before the thread first waits, so no wake-up is missed.
                let me = std::thread::current();
                if takes {
                    let _ = writer.sink.sleeper.set(me.clone());
                }
                if role.catches_up() {
                    let _ = writer.sink.committer.set(me);
                } else if role == Role::Rescue {
                    let _ = writer.sink.rescuer.set(me);
                } else if copies(role) {
                    let _ = writer.sink.copier.set(me);
                    #[cfg(test)]
                    if role == Role::StarvedCopy {
                        while !writer.sink.stopped.load(Ordering::Acquire) {
                            std::thread::park_timeout(Duration::from_millis(50));
                        }
                        return;
                    }
                    return writer.copy_wal();
                }
                // It parks while the queue is empty, as the background writer does, and is
                // woken by the next push — and then never gets a core.
                #[cfg(test)]
                if role == Role::Starved {
                    while !writer.sink.stopped.load(Ordering::Acquire) {
                        writer.sink.wait_for_records();
                        std::thread::park_timeout(Duration::from_millis(50));
                    }
                    return;
                }
                writer.run(role, takes, keeps)
            })?;
        }
        Ok(())
    }

    fn mark_progress(&self) {
        self.progress_at.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since_progress(&self) -> Duration {
        let at = Duration::from_millis(self.progress_at.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(at)
    }

    /// `takes_batches`: this thread takes the batches, and parks while the queue is empty.
    /// `keeps`: it does the housekeeping (see [`Role`]).
    fn run(&self, role: Role, takes_batches: bool, keeps: bool) {
        if role == Role::Background {
            let priority = lower_priority();
            tracing::debug!(priority, "audit background writer");
        } else if role == Role::CatchUp {
            let lowered = crate::process::lowest_nice();
            tracing::debug!(lowered, "audit catch-up writer at the lowest nice value");
        }
        let mut catching_up = false;
        let mut rescuing: Option<usize> = None;
        let mut starved_until: Option<Instant> = None;
        loop {
            if self.sink.stopped.load(Ordering::Acquire) {
                return;
            }
            let depth = self.sink.depth.load(Ordering::Relaxed);
            let stopping = self.sink.stop.load(Ordering::Acquire);
            let writes = match role {
                // Once behind, the catch-up writer goes on until the backlog is two
                // batches' worth or less…
                _ if role.catches_up() => {
                    catching_up = catch_up_due(depth, self.since_progress(), self.stalled_after(), stopping)
                        || (catching_up && depth > CATCH_UP_ABOVE / 4);
                    catching_up
                }
                // The rescue writer the same, past a deeper backlog or a longer stall.
                Role::Rescue => {
                    rescuing = rescue_floor(rescuing, depth, self.since_progress(), self.rescue_after(), stopping);
                    rescuing.is_some()
                }
                // …and meanwhile the background writer leaves the log to it, as it does
                // for a while after a step of its own was held up by busy cores. Stopping,
                // the catch-up writer drains the queue and ends both.
                Role::Background => {
                    depth < CATCH_UP_ABOVE && !stopping && starved_until.is_none_or(|t| Instant::now() >= t)
                }
                // (Tests: a background writer that never gets a core.)
                _ => false,
            };
            // The catch-up writer, at the lowest nice value, leaves the state to a rescue
            // writer waiting for it: on a saturated core its next step could take long.
            if role.catches_up() && self.rescue_waiting.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let mut wake_keeper = false;
            let next = {
                let mut st = if role == Role::Rescue {
                    match self.state.try_lock() {
                        Ok(st) => st,
                        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                        Err(std::sync::TryLockError::WouldBlock) => {
                            self.rescue_waiting.store(true, Ordering::Release);
                            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                            self.rescue_waiting.store(false, Ordering::Release);
                            st
                        }
                    }
                } else {
                    self.state.lock().unwrap_or_else(|p| p.into_inner())
                };
                // The other writer may have ended both while this one waited for the lock.
                if self.sink.stopped.load(Ordering::Acquire) {
                    return;
                }
                let next = if writes {
                    let began = Instant::now();
                    // The rescue writer takes about what it writes down to, no more (a
                    // batch under a quarter of the catch-up threshold is taken whole), in
                    // one commit where it can: see [`RESCUE_BATCH_RECORDS`].
                    let most = rescuing.map_or(BATCH_RECORDS, |floor| {
                        depth.saturating_sub(floor).clamp(CATCH_UP_ABOVE / 4, RESCUE_BATCH_RECORDS)
                    });
                    let next = self.step(&mut st, role, most);
                    if role == Role::Background && began.elapsed() >= STARVED {
                        starved_until = Some(Instant::now() + STARVED_PAUSE);
                    }
                    #[cfg(test)]
                    if role == Role::HeldCatchUp {
                        std::thread::sleep(HELD_STEP);
                    }
                    next
                } else if role.catches_up() && st.awaiting_commit() {
                    // The commit of a batch the background writer inserted; the next one
                    // rings again, so it waits as when there is nothing to write.
                    match self.step(&mut st, role, BATCH_RECORDS) {
                        Next::Committed => Next::Sleep(self.catch_up_nap(&st, keeps)),
                        next => next,
                    }
                } else if role.catches_up() {
                    Next::Sleep(self.catch_up_nap(&st, keeps))
                } else if role == Role::Rescue {
                    Next::Sleep(self.rescue_nap(&st))
                } else {
                    Next::Sleep(self.commit_interval)
                };
                // Housekeeping is the keeper's (the rescue writer's), between batches; it
                // locks the state for it whenever it wakes, whoever writes. A commit that
                // makes the WAL checkpoint due by count wakes it.
                let next = if keeps && st.inserted.is_none() && next != Next::Again {
                    self.keeper_rung.store(false, Ordering::Relaxed);
                    if self.housekeeping(&mut st, stopping) {
                        Next::Done
                    } else if next == Next::Empty && role == Role::Rescue {
                        // Its nap is reckoned here, with the state at hand.
                        Next::Sleep(self.rescue_nap(&st))
                    } else {
                        next
                    }
                } else {
                    wake_keeper = !keeps
                        && self.wal_pending.load(Ordering::Relaxed) >= self.keeper_copies_past()
                        && !self.keeper_rung.swap(true, Ordering::Relaxed);
                    next
                };
                if next == Next::Done {
                    self.sink.stopped.store(true, Ordering::Release);
                    tracing::info!("audit writer stopped");
                }
                next
            };
            if wake_keeper {
                if let Some(t) = self.sink.rescuer.get() {
                    t.unpark();
                }
            }
            match next {
                // Between its steps the catch-up writer gives the core to a thread woken
                // meanwhile (a request thread), which would otherwise wait out the slice the
                // scheduler protects for a running thread, whatever its nice value; with
                // nothing else to run it goes straight on.
                Next::Again | Next::Committed if role == Role::CatchUp => std::thread::yield_now(),
                Next::Again | Next::Committed => {}
                // The catch-up writer is woken early when a batch awaits its commit.
                // The rescue writer is woken early by the push that takes the queue past
                // [`RESCUE_ABOVE`], and by a commit that makes the WAL checkpoint due.
                Next::Sleep(d) if role.catches_up() || role == Role::Rescue => std::thread::park_timeout(d),
                Next::Sleep(d) => std::thread::sleep(d),
                Next::AwaitsCommit => {
                    if let Some(t) = self.sink.committer.get() {
                        t.unpark();
                    }
                    std::thread::sleep(self.commit_interval);
                }
                Next::Empty if takes_batches => {
                    self.sink.wait_for_records();
                    // The stall check counts from the first record after an idle spell;
                    // then the batch gathers for one commit interval.
                    self.mark_progress();
                    std::thread::sleep(self.commit_interval);
                }
                Next::Empty => {
                    let nap = self.catch_up_nap(&self.state.lock().unwrap_or_else(|p| p.into_inner()), keeps);
                    std::thread::park_timeout(nap);
                }
                Next::Done => return,
            }
        }
    }

    /// How long the records may go without a finished step before the catch-up writer
    /// takes over.
    fn stalled_after(&self) -> Duration {
        self.commit_interval + CATCH_UP_AFTER
    }

    /// How long the records may go without a finished step before the rescue writer takes
    /// over.
    fn rescue_after(&self) -> Duration {
        self.commit_interval + RESCUE_AFTER
    }

    /// Past how many records committed since the last copy the keeper copies the WAL
    /// itself: the copier's mark when there is no copier, far behind it when there is one.
    fn keeper_copies_past(&self) -> u64 {
        if self.sink.copier.get().is_some() {
            WAL_COPY_FALLBACK
        } else {
            WAL_CHECKPOINT_RECORDS
        }
    }

    fn since_wal_copy(&self) -> Duration {
        let at = Duration::from_millis(self.wal_copied_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(at)
    }

    /// A WAL copy is due: [`WAL_CHECKPOINT_RECORDS`] committed since the last, or any after
    /// [`WAL_CHECKPOINT_EVERY`] (the copier's rule; the keeper's too when there is no copier).
    fn wal_copy_due(&self, pending: u64) -> bool {
        pending >= WAL_CHECKPOINT_RECORDS || (pending > 0 && self.since_wal_copy() >= WAL_CHECKPOINT_EVERY)
    }

    /// Until a WAL copy is due by time.
    fn until_wal_copy_due(&self) -> Duration {
        WAL_CHECKPOINT_EVERY.saturating_sub(self.since_wal_copy())
    }

    /// A copy of the WAL that began with `pending` records uncopied has finished. (Saturating:
    /// the copier's copy and the rescue writer's may each have counted records the other's
    /// copy took.)
    fn wal_copied(&self, pending: u64) {
        let _ = self.wal_pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| Some(p.saturating_sub(pending)));
        self.wal_copied_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.sink.wal_checkpoints.fetch_add(1, Ordering::Release);
    }

    /// The WAL copier: at idle priority (`SCHED_IDLE`), on a connection of its own, it
    /// copies the WAL into the database file once [`WAL_CHECKPOINT_RECORDS`] records or
    /// [`WAL_CHECKPOINT_EVERY`] have passed since the last copy. SQLite runs such a copy
    /// beside the writers' commits — it holds none of the writers' state — so its work
    /// (reading the WAL, writing and syncing the database file: ~1 ms per 4,000 records)
    /// is done in a core's idle moments instead of in normal-priority turns a request
    /// thread waits behind. Starved, it falls behind; the rescue writer copies past
    /// [`WAL_COPY_FALLBACK`].
    fn copy_wal(&self) {
        // Idle priority, not nice 19: a request thread woken while a copy runs takes the
        // core at once. At nice 19 the scheduler protects a running thread's slice, and a
        // copy (~57 reads and writes of 16 KiB and two syncs) was seen holding the request
        // thread off the core for up to 3 ms: at 38,700 requests/s on a 2-core Intel Xeon,
        // in a state of the host where the client's p99 through long-running gateways had
        // grown to 2.6 ms, it was 1.5 ms with the copier at `SCHED_IDLE` (medians of 20
        // rounds); where it had not grown, 0.95 and 0.94 ms, and on a noisy host no
        // difference either (docs/benchmarks.md, forty-fifth session). Starved, an idle
        // thread still gets a sliver of a busy core: it copies slowly.
        let priority = lower_priority();
        tracing::debug!(priority, "audit WAL copier");
        let mut copier: Option<edgegate_filters::audit::WalCopier> = None;
        let mut failing = false;
        loop {
            if self.sink.stop.load(Ordering::Acquire) || self.sink.stopped.load(Ordering::Acquire) {
                // The keeper copies a last time as the writers stop.
                return;
            }
            let pending = self.wal_pending.load(Ordering::Acquire);
            // Far behind, the copy is the rescue writer's: a copy of its own started now
            // would keep the rescue writer's from running.
            if self.wal_copy_due(pending) && pending < WAL_COPY_FALLBACK {
                if copier.is_none() {
                    copier = edgegate_filters::audit::WalCopier::open(&self.sink.db, self.durability)
                        .map_err(|e| {
                            if !failing {
                                tracing::warn!(error = %e, "audit WAL copier cannot open the log; retried");
                            }
                        })
                        .ok();
                }
                match copier.as_mut().map(edgegate_filters::audit::WalCopier::copy) {
                    Some(Ok(copied)) => {
                        if copied {
                            self.wal_copied(pending);
                        }
                        failing = false;
                    }
                    Some(Err(e)) => {
                        if !failing {
                            tracing::warn!(error = %e, "audit WAL copy failed; retried");
                        }
                        copier = None;
                        failing = true;
                    }
                    None => failing = true,
                }
            }
            let pending = self.wal_pending.load(Ordering::Relaxed);
            let nap = if failing {
                RETRY
            } else if pending >= WAL_COPY_FALLBACK {
                // The rescue writer's copy; looked at again soon after.
                Duration::from_millis(50)
            } else if pending > 0 {
                // (At least 10 ms: a copy found running elsewhere leaves `since` as it was.)
                self.until_wal_copy_due().max(Duration::from_millis(10))
            } else {
                IDLE_WAIT
            };
            std::thread::park_timeout(nap.min(IDLE_WAIT));
        }
    }

    /// How long the rescue writer waits while it is not needed: until records queued now
    /// would count as stalled or its next housekeeping is due, [`IDLE_WAIT`] at most. A deep
    /// backlog wakes it earlier (the push that takes the queue past [`RESCUE_ABOVE`]), and
    /// so does a commit that makes the WAL copy its own (see `keeper_rung`).
    fn rescue_nap(&self, st: &WriterState) -> Duration {
        let until_stalled = if self.sink.depth.load(Ordering::Relaxed) == 0 {
            IDLE_WAIT
        } else {
            self.rescue_after().saturating_sub(self.since_progress()).clamp(Duration::from_millis(1), IDLE_WAIT)
        };
        until_stalled.min(self.housekeeping_nap(st))
    }

    /// How long the catch-up writer waits when it has nothing to write: while records are
    /// queued or being written, until they would count as stalled (the background writer
    /// wakes it earlier when a batch awaits its commit, and the push that takes the queue to
    /// [`CATCH_UP_ABOVE`] does); otherwise, when it `keeps` the log
    /// (no rescue writer), until its next housekeeping; [`IDLE_WAIT`] at most.
    fn catch_up_nap(&self, st: &WriterState, keeps: bool) -> Duration {
        if self.sink.depth.load(Ordering::Relaxed) > 0 || !st.batch.is_empty() {
            let stall_in = self.stalled_after().saturating_sub(self.since_progress());
            return stall_in.clamp(Duration::from_millis(1), IDLE_WAIT);
        }
        if keeps {
            self.housekeeping_nap(st)
        } else {
            IDLE_WAIT
        }
    }

    /// Until the next WAL checkpoint, signed checkpoint or retention step is due by time;
    /// [`IDLE_WAIT`] at most. (A WAL checkpoint due by count is rung for by the commit that
    /// made it due: one that keeps failing is then retried once per commit, not in a loop.)
    fn housekeeping_nap(&self, st: &WriterState) -> Duration {
        let now = Instant::now();
        let mut until = now + IDLE_WAIT;
        if self.sink.copier.get().is_none() && self.wal_pending.load(Ordering::Relaxed) > 0 {
            until = until.min(now + self.until_wal_copy_due());
        }
        if st.store.as_ref().is_some_and(|s| s.since_checkpoint() > 0) {
            until = until.min(st.last_checkpoint + self.checkpoint_interval);
        }
        until = until.min(st.next_retention);
        until.saturating_duration_since(now).max(Duration::from_millis(1))
    }

    /// One step of writing: reopens a failing log when its retry is due, takes a batch
    /// (of `most` records at most) when there is none, inserts up to [`STEP_RECORDS`] of it
    /// in the open transaction, and commits it once all are in.
    fn step(&self, st: &mut WriterState, role: Role, most: usize) -> Next {
        if st.failing_since.is_some_and(|t| t.elapsed() < RETRY) {
            return Next::Sleep(Duration::from_millis(50));
        }
        if st.store.is_none() {
            st.store = self.open();
            if st.store.is_none() {
                st.failing_since = Some(Instant::now());
                return Next::Sleep(Duration::from_millis(50));
            }
        }
        if role == Role::Background && st.awaiting_commit() {
            return Next::Sleep(self.commit_interval);
        }
        if st.batch.is_empty() {
            // The writers never wait on the queue for records: a writer waiting there
            // would make every request's push a futex wake and a context switch. While
            // records keep coming they sleep a commit interval and take what arrived (after
            // a full batch they go straight on); only an empty queue parks the writer
            // (`wait_for_records`).
            st.full = self.sink.queue.take(&mut st.held, &mut st.batch, most);
        }
        if st.batch.is_empty() {
            self.mark_progress();
            return Next::Empty;
        }
        let WriterState { store, batch, inserted, began, .. } = st;
        let Some(s) = store.as_mut() else { return Next::Sleep(self.commit_interval) };
        let written = (|| -> Result<bool, edgegate_filters::audit::StoreError> {
            let from = match *inserted {
                Some(n) => n,
                None => {
                    s.begin()?;
                    *began = Instant::now();
                    0
                }
            };
            let to = (from + STEP_RECORDS).min(batch.len());
            s.insert(&batch[from..to])?;
            *inserted = Some(to);
            // The commit is the catch-up writer's: it waits on the disk, and a background
            // writer woken from that wait holds the log until a core is idle.
            if to < batch.len() || role == Role::Background {
                return Ok(false);
            }
            // A signed checkpoint due by count goes into the batch's own transaction: one
            // commit, and one `fsync`, for both.
            s.commit_with_checkpoint(self.key.as_ref(), now_ms(), self.checkpoint_records)?;
            Ok(true)
        })();
        match written {
            Ok(false) if st.awaiting_commit() => Next::AwaitsCommit,
            Ok(false) => Next::Again,
            Ok(true) => {
                self.sink.metrics.commit_seconds.observe(st.began.elapsed().as_secs_f64());
                self.sink.metrics.written.inc_by(st.batch.len() as u64);
                self.sink.depth.fetch_sub(st.batch.len(), Ordering::Relaxed);
                let pending = self.wal_pending.fetch_add(st.batch.len() as u64, Ordering::AcqRel);
                // The one commit that makes the copy due by count wakes the copier.
                if pending < WAL_CHECKPOINT_RECORDS && pending + st.batch.len() as u64 >= WAL_CHECKPOINT_RECORDS {
                    if let Some(t) = self.sink.copier.get() {
                        t.unpark();
                    }
                }
                st.batch.clear();
                st.inserted = None;
                st.failing_since = None;
                if let Some(s) = &st.store {
                    self.sink.lag.committed(s.last_seq(), now_ms());
                    if s.since_checkpoint() == 0 {
                        st.last_checkpoint = Instant::now();
                    }
                }
                self.sink.set_committed(true, None);
                self.mark_progress();
                if st.full {
                    Next::Again
                } else {
                    Next::Committed
                }
            }
            Err(e) => {
                // The batch is kept for the retry (renumbered then); the queue behind it
                // fills and the sink reports not accepting. The log is reopened: a file
                // made writable again is then written.
                if let Some(s) = st.store.as_mut() {
                    s.rollback();
                }
                st.inserted = None;
                self.sink.set_committed(false, Some(format!("commit failed: {e}")));
                st.failing_since = Some(Instant::now());
                st.store = None;
                Next::Sleep(Duration::from_millis(50))
            }
        }
    }

    /// The keeper's work between batches (the rescue writer's; the catch-up writer's when
    /// there is no rescue writer): the WAL checkpoint, a signed checkpoint (one due by count
    /// is normally written with the batch that made it due) and retention, when due. True
    /// once stopping with nothing left to write (or a log that keeps failing: what is
    /// queued cannot be written).
    fn housekeeping(&self, st: &mut WriterState, stopping: bool) -> bool {
        if stopping && st.failing_since.is_some_and(|t| t.elapsed() >= RETRY * 2) {
            return true;
        }
        // The sink's gauges move while nothing is committed: kept current here.
        self.sink.update_health();
        let Some(s) = st.store.as_mut() else { return false };
        // With a copier, the keeper copies the WAL only far behind, and a last time when
        // stopping.
        let pending = self.wal_pending.load(Ordering::Acquire);
        let wal_due = pending >= self.keeper_copies_past()
            || (pending > 0 && stopping)
            || (self.sink.copier.get().is_none() && self.wal_copy_due(pending));
        if wal_due {
            match s.wal_checkpoint() {
                Ok(true) => self.wal_copied(pending),
                // The copier's copy was running: the next commit rings again.
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "audit WAL checkpoint failed; retried later"),
            }
        }
        let due = s.since_checkpoint() >= self.checkpoint_records
            || (s.since_checkpoint() > 0 && st.last_checkpoint.elapsed() >= self.checkpoint_interval)
            || (stopping && s.since_checkpoint() > 0);
        if due {
            match s.checkpoint(self.key.as_ref(), now_ms()) {
                Ok(()) => st.last_checkpoint = Instant::now(),
                Err(e) => tracing::warn!(error = %e, "audit checkpoint failed; retried with the next batch"),
            }
        }
        if Instant::now() >= st.next_retention {
            // A step that deleted something is followed by another soon after.
            let more = self.retain(s);
            st.next_retention = Instant::now() + if more { Duration::from_millis(100) } else { self.retention_every };
        }
        if Instant::now() >= st.next_size_check {
            let more = self.trim(s, &mut st.size_warned);
            st.next_size_check = Instant::now() + if more { Duration::from_millis(100) } else { SIZE_EVERY };
        }
        stopping && st.batch.is_empty() && self.sink.depth.load(Ordering::Relaxed) == 0
    }

    /// The last record the collector acknowledged, past which nothing may be deleted;
    /// `Some(None)` when the log is not forwarded, `None` when that cannot be read now.
    fn keep_after(&self) -> Option<Option<u64>> {
        if !self.forwarding {
            return Some(None);
        }
        edgegate_filters::audit::Reader::open(&self.sink.db).and_then(|r| r.forwarded()).ok().map(Some)
    }

    /// One step of `audit.max_size`: while the log's records take more than it, the oldest
    /// go, whatever their age — a flood of requests, each audited, must not fill the node's
    /// disk (the node's pods share it, and a full disk stops the log: the shipped policy then
    /// refuses citizens). Never past a record the collector has not acknowledged. True when
    /// it deleted records (more may be due).
    fn trim(&self, store: &mut Store, warned: &mut Option<Instant>) -> bool {
        let used = match store.used_bytes() {
            Ok(used) => used,
            Err(e) => {
                tracing::warn!(error = %e, "audit log size unreadable; checked again later");
                return false;
            }
        };
        self.sink.metrics.db_bytes.set(i64::try_from(used).unwrap_or(i64::MAX));
        if used <= self.max_size {
            return false;
        }
        let Some(keep_after) = self.keep_after() else { return false };
        let deleted = store.retain(u64::MAX, keep_after, SIZE_BATCH).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "audit log past audit.max_size, and deleting failed; retried later");
            0
        });
        self.sink.metrics.pruned_size.inc_by(deleted as u64);
        if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *warned = Some(Instant::now());
            if deleted > 0 {
                tracing::warn!(
                    used,
                    max_size = self.max_size,
                    deleted,
                    "audit log past audit.max_size: its oldest records deleted before their retention"
                );
            } else if self.forwarding {
                tracing::warn!(used, max_size = self.max_size, "audit log past audit.max_size, and its oldest records are not yet acknowledged by the collector: it grows until they are");
            } else {
                // Records go up to a signed checkpoint, and none is past the anchor yet.
                tracing::warn!(used, max_size = self.max_size, "audit log past audit.max_size, with no checkpoint to delete up to yet: it grows until the next one");
            }
        }
        deleted > 0
    }

    /// One retention step; true when it deleted records (more may be due).
    fn retain(&self, store: &mut Store) -> bool {
        let before = now_ms().saturating_sub(self.retention.as_millis() as u64);
        let Some(keep_after) = self.keep_after() else { return false };
        match store.retain(before, keep_after, RETENTION_BATCH) {
            Ok(0) => false,
            Ok(n) => {
                self.sink.metrics.pruned_age.inc_by(n as u64);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forward_lag_is_read_off_the_clock_when_scraped() {
        let lag = ForwardLag::new();
        // Nothing known until the forwarder has read the log.
        lag.committed(5, 1_000);
        assert_eq!(lag.read(9_000), (0, 0.0));
        // Its look: 3 acknowledged, the oldest waiting record written at 800 ms.
        lag.progress(3, Some(800));
        assert_eq!(lag.read(2_800), (2, 2.0));
        assert_eq!(lag.read(60_800), (2, 60.0), "the age grows between looks");
        // Everything acknowledged; a later commit starts the age at its own time.
        lag.progress(5, None);
        assert_eq!(lag.read(61_000), (0, 0.0));
        lag.committed(7, 62_000);
        assert_eq!(lag.read(62_500), (2, 0.5));
        // A commit whose time a racing look wiped out: at most as old as its first sight.
        lag.progress(5, None);
        lag.committed(8, 63_000);
        lag.progress(5, None);
        assert_eq!(lag.read(64_000), (3, 0.0));
        assert_eq!(lag.read(65_000), (3, 1.0));
    }

    #[test]
    fn the_catch_up_writer_acts_only_when_the_background_writer_falls_behind() {
        let after = DEFAULT_COMMIT + CATCH_UP_AFTER;
        let (now, stalled, within) = (Duration::ZERO, after, after - Duration::from_millis(1));
        assert!(!catch_up_due(0, stalled, after, false), "nothing waits");
        assert!(catch_up_due(0, now, after, true), "stopping: it ends the writers even with nothing queued");
        assert!(!catch_up_due(CATCH_UP_ABOVE - 1, now, after, false), "the background writer keeps up");
        assert!(catch_up_due(CATCH_UP_ABOVE, now, after, false), "records pile up");
        assert!(!catch_up_due(1, within, after, false), "a batch gathering for its commit interval is no stall");
        assert!(catch_up_due(1, stalled, after, false), "nothing committed for a while");
        assert!(catch_up_due(1, now, after, true), "stopping: drain without waiting");
    }

    const DEFAULT_COMMIT: Duration = edgegate_config::DEFAULT_AUDIT_COMMIT_INTERVAL;

    fn config() -> Audit {
        Audit {
            db: Some("audit.db".into()),
            node: Some("edge-test".into()),
            retention: edgegate_config::DEFAULT_AUDIT_RETENTION,
            max_size: edgegate_config::DEFAULT_AUDIT_MAX_SIZE,
            signing_key: None,
            checkpoint_records: edgegate_config::DEFAULT_CHECKPOINT_RECORDS,
            checkpoint_interval: edgegate_config::DEFAULT_CHECKPOINT_INTERVAL,
            commit_interval: DEFAULT_COMMIT,
            verify_interval: edgegate_config::DEFAULT_AUDIT_VERIFY_INTERVAL,
            verify_full_interval: edgegate_config::DEFAULT_AUDIT_VERIFY_FULL_INTERVAL,
            synchronous_full: true,
            deny_on_failure: true,
            keep_query: false,
            forward: None,
        }
    }

    pub(super) fn queued(n: usize) -> Queued {
        let id = format!("req-{n}");
        record(&RecordParts {
            request_id: &id,
            route: "permits",
            client_ip: Some([10, 0, 0, 7].into()),
            user: None,
            method: "GET",
            host: "gov.example",
            path: "/api/permits",
            query: None,
            keep_query: false,
            outcome: "public",
            rule: "",
            config: "c0ffee",
            status: 200,
            bytes: 12,
            duration_us: 80,
            upstream: None,
            cache: "",
            trace: edgegate_filters::trace::TraceContext::EMPTY,
        })
    }

    // The one-buffer record gives the store the same fields the request had: every text in
    // its place (empty ones too), the query redacted, the addresses and trace id formatted
    // as `Display` writes them; and the log it writes reads back as those fields and verifies.
    #[test]
    fn a_queued_record_hands_the_store_every_field_as_the_request_had_it() {
        use edgegate_filters::audit::AsFields as _;
        let trace = edgegate_filters::trace::TraceContext::from_header(Some(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        let upstreams: [std::net::SocketAddr; 2] =
            ["10.42.0.17:8080".parse().expect("address"), "[fd00::1]:80".parse().expect("address")];
        let mut written = Vec::new();
        for (i, (client, upstream)) in [
            (Some("203.0.113.250".parse().expect("address")), Some(upstreams[0])),
            (Some("2001:db8::7".parse().expect("address")), Some(upstreams[1])),
            (None, None),
        ]
        .into_iter()
        .enumerate()
        {
            let q = record(&RecordParts {
                request_id: "req-1",
                route: "permits",
                client_ip: client,
                user: if i == 0 { Some("citizen-42") } else { None },
                method: "POST",
                host: "gov.example",
                path: "/api/permits/7",
                query: Some("id=42&flag&q=x"),
                keep_query: i == 2,
                outcome: "allowed",
                rule: "data.government.digital.allow",
                config: "c0ffee",
                status: 201,
                bytes: 12,
                duration_us: 80,
                upstream,
                cache: if i == 0 { "miss" } else { "" },
                trace: if i == 0 { trace } else { edgegate_filters::trace::TraceContext::EMPTY },
            })
            .formatted()
            .formatted();
            let f = q.fields();
            let shown = |a: Option<String>| a.unwrap_or_default();
            assert_eq!(f.client_ip, shown(client.map(|c: std::net::IpAddr| c.to_string())));
            assert_eq!(f.upstream, shown(upstream.map(|u| u.to_string())));
            assert_eq!(f.query, if i == 2 { "id=42&flag&q=x" } else { "id=REDACTED&flag&q=REDACTED" });
            assert_eq!(f.user, if i == 0 { "citizen-42" } else { "" });
            assert_eq!(f.cache, if i == 0 { "miss" } else { "" });
            assert_eq!(f.trace_id, if i == 0 { "4bf92f3577b34da6a3ce929d0e0e4736" } else { "" });
            assert_eq!(
                (f.request_id, f.route, f.method, f.host, f.path, f.outcome, f.rule, f.config),
                (
                    "req-1",
                    "permits",
                    "POST",
                    "gov.example",
                    "/api/permits/7",
                    "allowed",
                    "data.government.digital.allow",
                    "c0ffee"
                )
            );
            assert_eq!((f.status, f.bytes, f.duration_us), (201, 12, 80));
            written.push(q);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.db");
        Store::open(&path, "edge-1", Durability::Normal).expect("open").append(&written).expect("append");
        let read = edgegate_filters::audit::Reader::open(&path).expect("reader").after(0, 10).expect("read");
        assert_eq!(read.len(), 3);
        for (r, q) in read.iter().zip(&written) {
            assert_eq!(r.fields(), q.fields());
        }
        assert_eq!(edgegate_filters::audit::verify(&path, None).expect("verifies").records, 3);
    }

    // A record whose buffer holds no byte JSON escapes is written without checking each field;
    // one that holds any is checked field by field. A hostile field (a user that tries to close
    // the record's array and open another, a quote in the path, a control byte, a backslash)
    // must come back as sent and leave the row one record per request, whichever record of a
    // row it is in.
    #[test]
    fn a_record_is_written_plain_only_when_no_field_needs_escaping() {
        use edgegate_filters::audit::AsFields as _;
        let with = |n: usize, user: Option<&str>, path: &str, rule: &str| {
            let id = format!("req-{n}");
            record(&RecordParts {
                request_id: &id,
                route: "permits",
                client_ip: Some([10, 0, 0, 7].into()),
                user,
                method: "GET",
                host: "gov.example",
                path,
                query: None,
                keep_query: false,
                outcome: "allowed",
                rule,
                config: "c0ffee",
                status: 200,
                bytes: 12,
                duration_us: 80,
                upstream: Some(([10, 42, 0, 17], 8080).into()),
                cache: "",
                trace: edgegate_filters::trace::TraceContext::EMPTY,
            })
            .formatted()
        };
        let hostile = [
            with(1, Some("x\"],[\"evil"), "/api/permits", ""),
            with(2, None, "/api/\"q\"", ""),
            with(3, None, "/api/permits", "rule\u{1}\n"),
            with(4, Some("back\\slash"), "/api/permits", ""),
        ];
        let plain = [with(5, Some("citizen-42"), "/api/permits/7", "allow"), queued(6).formatted()];
        for q in &hostile {
            assert!(!q.json_plain(), "{:?} was marked plain", q.fields());
        }
        for q in &plain {
            assert!(q.json_plain(), "{:?} was not marked plain", q.fields());
            // The plain path writes the same text the checked one does.
            let (mut fast, mut checked) = (String::new(), String::new());
            q.fields().push_node_row_record(&mut fast, true);
            q.fields().push_node_row_record(&mut checked, false);
            assert_eq!(fast, checked);
        }
        // Not formatted yet: not known to be plain.
        assert!(!queued(7).json_plain());
        let written: Vec<Queued> = [&plain[0], &hostile[0], &plain[1], &hostile[1], &hostile[2], &hostile[3]]
            .into_iter()
            .map(|q| Queued { text: q.text.clone(), ..*q })
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.db");
        Store::open(&path, "edge-1", Durability::Normal).expect("open").append(&written).expect("append");
        let read = edgegate_filters::audit::Reader::open(&path).expect("reader").after(0, 10).expect("read");
        assert_eq!(read.len(), written.len());
        for (r, q) in read.iter().zip(&written) {
            assert_eq!(r.fields(), q.fields());
        }
        assert_eq!(read[1].user, "x\"],[\"evil");
        assert_eq!(edgegate_filters::audit::verify(&path, None).expect("verifies").records, 6);
    }

    /// A sink on a new log in a temporary directory, with only the given writer threads.
    fn sink_with(roles: &[Role]) -> (tempfile::TempDir, Arc<AuditSink>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink =
            AuditSink::start_writers(&config(), dir.path(), &Registry::new(), roles).expect("start").expect("a sink");
        (dir, sink)
    }

    /// Waits (up to 10 s, never a timing assertion) until `sink` has written `n` records.
    fn wait_written(sink: &AuditSink, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.metrics.written.get() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.metrics.written.get(), n);
    }

    /// Pushes records `from..to` and waits until all `to` are written.
    fn push_written(sink: &AuditSink, from: usize, to: usize) {
        for i in from..to {
            sink.push(queued(i));
        }
        wait_written(sink, to as u64);
    }

    /// Waits (up to 10 s) for a WAL copy after `n` records.
    fn wait_wal_copied(sink: &AuditSink, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.wal_checkpoints.load(Ordering::Acquire) == 0 {
            assert!(Instant::now() < deadline, "no WAL copy in 10 s after {n} records");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the writers and verifies the log in `dir`, which holds `n` records.
    fn stop_and_verify(sink: &AuditSink, dir: &tempfile::TempDir, n: usize) -> edgegate_filters::audit::VerifyReport {
        assert!(sink.flush_and_stop(Duration::from_secs(10)), "the writers stop");
        let verified = edgegate_filters::audit::verify(&dir.path().join("audit.db"), None).expect("verifies");
        assert_eq!(verified.records, n as u64);
        verified
    }

    // The background writer may get no core at all on a busy node: with it absent, the
    // catch-up writer alone still commits a trickle (after its stall time) and a burst
    // (past its threshold), and drains the queue on stop.
    #[test]
    fn a_few_records_are_copied_out_of_the_wal_without_waiting_for_thousands() {
        let (_dir, sink) = sink_with(&[Role::CatchUp]);
        for n in 0..10 {
            sink.push(queued(n));
        }
        wait_written(&sink, 10);
        // Far fewer than WAL_CHECKPOINT_RECORDS: only the time makes the copy due.
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.wal_checkpoints.load(Ordering::Acquire) == 0 {
            assert!(Instant::now() < deadline, "no WAL checkpoint for 10 records in 5 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(sink.flush_and_stop(Duration::from_secs(10)), "the writer stops");
    }

    // A background writer that gets no core (the node's cores busy with requests or its
    // pods): the first record after an idle spell is still committed, by the catch-up
    // writer the push also wakes, within the commit interval and the stall check — not when
    // the catch-up writer's next checkpoint wakes it, up to a second later.
    #[test]
    fn with_the_background_writer_starved_a_record_after_an_idle_spell_is_committed_promptly() {
        let (_dir, sink) = sink_with(&[Role::Starved, Role::CatchUp]);
        for n in 0..4 {
            // Idle: the catch-up writer asleep until its next checkpoint or look (≤ 1 s).
            std::thread::sleep(Duration::from_millis(300));
            let sent = Instant::now();
            sink.push(queued(n));
            wait_written(&sink, n as u64 + 1);
            let took = sent.elapsed();
            assert!(took < Duration::from_millis(700), "record {n} after an idle spell committed after {took:?}");
        }
        assert!(sink.flush_and_stop(Duration::from_secs(10)), "the writer stops");
    }

    #[test]
    fn without_the_background_writer_the_catch_up_writer_commits_everything() {
        let (dir, sink) = sink_with(&[Role::CatchUp]);
        for n in 0..3 {
            sink.push(queued(n));
        }
        wait_written(&sink, 3);
        for n in 3..3 + CATCH_UP_ABOVE + 10 {
            sink.push(queued(n));
        }
        wait_written(&sink, 3 + CATCH_UP_ABOVE as u64 + 10);
        for n in 0..5 {
            sink.push(queued(n));
        }
        assert!(sink.flush_and_stop(Duration::from_secs(10)), "the writer stops");
        assert_eq!(sink.queued(), 0);
        let verified = edgegate_filters::audit::verify(&dir.path().join("audit.db"), None).expect("verifies");
        assert_eq!(verified.records, 3 + CATCH_UP_ABOVE as u64 + 15);
        assert!(sink.accepting() || sink.is_stopped());
    }

    // With neither the background nor the catch-up writer getting a core (a saturated node
    // starves the one at idle priority; the other may be held up too), the rescue writer
    // leaves a small backlog alone until it has stalled, takes a deep one over at once, and
    // the log loses nothing.
    #[test]
    fn the_rescue_writer_takes_over_a_deep_backlog_and_a_stalled_one() {
        let (dir, sink) = sink_with(&[Role::Starved, Role::Rescue]);
        for n in 0..10 {
            sink.push(queued(n));
        }
        // Well inside the stall time (commit interval + RESCUE_AFTER): not the rescue's yet.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(sink.metrics.written.get(), 0, "the rescue writer waits for a stall");
        wait_written(&sink, 10);
        // (Time for it to find the stalled backlog gone and go back to waiting: records
        // pushed while it is still writing one would be written down to a quarter of the
        // catch-up threshold, as stalled ones.)
        std::thread::sleep(Duration::from_millis(100));
        // A deep backlog: the push past RESCUE_ABOVE wakes it, and it writes down to half
        // of it at once; the rest follows after the stall time.
        let deep = RESCUE_ABOVE + 10;
        let commits_before = sink.metrics.commit_seconds.get_sample_count();
        for n in 10..10 + deep {
            sink.push(queued(n));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.queued() > RESCUE_ABOVE / 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(sink.queued() <= RESCUE_ABOVE / 2, "the deep backlog is written: {} queued", sink.queued());
        // …and not much further: its batch is about what it writes down to, not a full one…
        assert!(
            sink.queued() >= RESCUE_ABOVE / 2 - CATCH_UP_ABOVE / 4,
            "written down to about half the mark: {} queued",
            sink.queued()
        );
        // …in one commit, and one more for the few records past half the mark (with batches
        // of BATCH_RECORDS it took five).
        let commits = sink.metrics.commit_seconds.get_sample_count() - commits_before;
        assert!(commits <= 2, "the descent of {} records took {commits} commits", RESCUE_ABOVE / 2);
        wait_written(&sink, 10 + deep as u64);
        assert!(sink.flush_and_stop(Duration::from_secs(10)), "the writers stop");
        let verified = edgegate_filters::audit::verify(&dir.path().join("audit.db"), None).expect("verifies");
        assert_eq!(verified.records, 10 + deep as u64);
    }

    // What the rescue writer does, by backlog and stall: it leaves what the catch-up writer
    // can clear alone, writes a deep backlog down to half the mark (no further: each of its
    // batches holds a request thread up), a stalled one down to a quarter of the catch-up
    // threshold, and everything when stopping.
    #[test]
    fn the_rescue_writer_writes_deep_or_stalled_backlogs_and_no_further_than_it_must() {
        let after = DEFAULT_COMMIT + RESCUE_AFTER;
        let fresh = Duration::from_millis(5);
        assert_eq!(rescue_floor(None, RESCUE_ABOVE - 1, fresh, after, false), None, "the catch-up writer's");
        assert_eq!(rescue_floor(None, RESCUE_ABOVE, fresh, after, false), Some(RESCUE_ABOVE / 2));
        assert_eq!(
            rescue_floor(Some(RESCUE_ABOVE / 2), RESCUE_ABOVE / 2 + 1, fresh, after, false),
            Some(RESCUE_ABOVE / 2)
        );
        assert_eq!(rescue_floor(Some(RESCUE_ABOVE / 2), RESCUE_ABOVE / 2, fresh, after, false), None, "down to half");
        assert_eq!(rescue_floor(None, 10, after, after, false), Some(CATCH_UP_ABOVE / 4), "stalled");
        assert_eq!(rescue_floor(None, 0, after, after, false), None, "nothing queued");
        assert_eq!(rescue_floor(None, 0, fresh, after, true), Some(0), "stopping");
    }

    // The rescue writer parks while it is not needed; the one push that takes the queue
    // past its threshold wakes it (here the test's thread stands in for it).
    #[test]
    fn the_push_past_the_rescue_threshold_wakes_the_rescue_writer() {
        let (_dir, sink) = sink_with(&[Role::Starved]);
        assert!(sink.rescuer.set(std::thread::current()).is_ok());
        for n in 0..=RESCUE_ABOVE {
            sink.push(queued(n));
        }
        let waited = Instant::now();
        std::thread::park_timeout(Duration::from_secs(20));
        assert!(waited.elapsed() < Duration::from_secs(10), "woken by the push past the threshold");
        assert_eq!(sink.queued(), RESCUE_ABOVE + 1);
    }

    // The catch-up writer naps until queued records would count as stalled; the one push
    // that takes the queue to its threshold wakes it (here the test's thread stands in for
    // it; the only writer is a rescue writer, which takes no batches — so no push wakes a
    // parked batch writer, and the catch-up writer with it — and writes nothing for the
    // first second: no stall, no deep backlog).
    #[test]
    fn the_push_to_the_catch_up_threshold_wakes_the_catch_up_writer() {
        let (_dir, sink) = sink_with(&[Role::Rescue]);
        assert!(sink.committer.set(std::thread::current()).is_ok());
        for n in 0..CATCH_UP_ABOVE - 1 {
            sink.push(queued(n));
        }
        // Below the threshold no push wakes it.
        let waited = Instant::now();
        std::thread::park_timeout(Duration::from_millis(300));
        assert!(waited.elapsed() >= Duration::from_millis(300), "not woken below the threshold");
        sink.push(queued(CATCH_UP_ABOVE));
        let waited = Instant::now();
        std::thread::park_timeout(Duration::from_secs(20));
        assert!(waited.elapsed() < Duration::from_secs(10), "woken by the push to the threshold");
        // Past it, the pushes leave it be until the rescue writer's threshold.
        sink.push(queued(CATCH_UP_ABOVE + 1));
        let waited = Instant::now();
        std::thread::park_timeout(Duration::from_millis(300));
        assert!(waited.elapsed() >= Duration::from_millis(300), "one wake-up per crossing");
    }

    // A log that cannot be written keeps its records queued, up to the bound and no
    // further: every record past it is counted as dropped, none is kept beyond it, and the
    // sink reports itself not accepting, so the default policy refuses citizen requests.
    #[test]
    fn a_failing_log_queues_records_up_to_the_bound_and_counts_the_rest_as_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A file where the log's directory should be: the log can never be opened.
        std::fs::write(dir.path().join("blocked"), b"").expect("write");
        let mut failing = config();
        failing.db = Some("blocked/audit.db".into());
        let registry = Registry::new();
        let sink = AuditSink::start_writers(&failing, dir.path(), &registry, &[Role::CatchUp])
            .expect("start")
            .expect("a sink");
        assert!(!sink.accepting(), "a log that cannot be opened is not accepting");
        for n in 0..QUEUE_CAPACITY + 3 {
            sink.push(queued(n));
        }
        assert_eq!(sink.queued(), QUEUE_CAPACITY);
        assert_eq!(sink.metrics.dropped.get(), 3);
        assert_eq!(sink.metrics.written.get(), 0);
        assert!(!sink.accepting());
    }

    // A catch-up writer that a saturated core starves holds the log's state for a long
    // time per step (here 200 ms, every step, with a deep backlog to catch up on). The
    // rescue writer, waiting for the state, gets it after one such step and writes the deep
    // backlog down to half the mark: the held writer alone would need ~50 s for it (32
    // records per step), so the wait below would run out. (The hand-over as a whole: here
    // the lock's waiter also wins it without the catch-up writer standing aside, which
    // matters when both wait for a background writer's step.)
    #[test]
    fn a_starved_catch_up_writer_leaves_the_log_to_the_rescue_writer_after_one_step() {
        let (dir, sink) = sink_with(&[Role::HeldCatchUp, Role::Rescue]);
        let deep = RESCUE_ABOVE + 10;
        for n in 0..deep {
            sink.push(queued(n));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.queued() > RESCUE_ABOVE / 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(sink.queued() <= RESCUE_ABOVE / 2, "the rescue writer is kept from the log: {} queued", sink.queued());
        assert!(sink.flush_and_stop(Duration::from_secs(60)), "the writers stop");
        let verified = edgegate_filters::audit::verify(&dir.path().join("audit.db"), None).expect("verifies");
        assert_eq!(verified.records, deep as u64);
    }

    // The housekeeping is the rescue writer's when there is one: with the catch-up writer
    // doing all the writing (no background writer, no backlog for the rescue writer), the
    // WAL is still copied into the database (the commit past the mark wakes the rescue
    // writer), and the chain gets its signed checkpoints (with the batches' commits).
    #[test]
    fn the_rescue_writer_keeps_the_log_while_the_catch_up_writer_writes() {
        let (dir, sink) = sink_with(&[Role::CatchUp, Role::Rescue]);
        let n = WAL_CHECKPOINT_RECORDS as usize + 100;
        push_written(&sink, 0, n);
        wait_wal_copied(&sink, n);
        let verified = stop_and_verify(&sink, &dir, n);
        assert!(verified.checkpoints >= 1, "signed checkpoints were written: {verified:?}");
    }

    // With a WAL copier, the copies are its own: a few thousand records are copied while
    // the keeper (the rescue writer) would copy only far behind, and the writers still
    // stop with a log that verifies.
    #[test]
    fn the_wal_copier_copies_the_wal_beside_the_writers() {
        let (dir, sink) = sink_with(&[Role::CatchUp, Role::Rescue, Role::WalCopy]);
        let n = WAL_CHECKPOINT_RECORDS as usize + 100;
        push_written(&sink, 0, n);
        wait_wal_copied(&sink, n);
        // The copy reached the database file: its pages hold the records (the WAL alone
        // would leave the file at the schema's few pages).
        let file = std::fs::metadata(dir.path().join("audit.db")).expect("db").len();
        assert!(file > 500_000, "the database file is {file} bytes after the copy");
        stop_and_verify(&sink, &dir, n);
    }

    // A copier that gets no core (a saturated node) leaves the WAL to the rescue writer once
    // it is far behind: it does not grow without bound.
    #[test]
    fn a_starved_wal_copier_leaves_the_copy_to_the_rescue_writer_far_behind() {
        let (dir, sink) = sink_with(&[Role::CatchUp, Role::Rescue, Role::StarvedCopy]);
        let short = WAL_CHECKPOINT_RECORDS as usize + 100;
        push_written(&sink, 0, short);
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(sink.wal_checkpoints.load(Ordering::Acquire), 0, "the keeper leaves a short WAL to the copier");
        let n = WAL_COPY_FALLBACK as usize + 100;
        push_written(&sink, short, n);
        wait_wal_copied(&sink, n);
        stop_and_verify(&sink, &dir, n);
    }

    // With both writers the background one does the work while it keeps up, at idle
    // priority where the system allows it (without privileges it does, on Linux).
    #[test]
    fn the_background_writer_runs_at_idle_priority_and_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::new();
        let sink = AuditSink::start(&config(), dir.path(), &registry).expect("start").expect("a sink");
        for n in 0..10 {
            sink.push(queued(n));
        }
        wait_written(&sink, 10);
        #[cfg(target_os = "linux")]
        {
            // (policy, nice) of a thread of this process, from its stat: fields 41 and 19,
            // counted after the command's closing parenthesis.
            let sched_of = |name: &str| {
                std::fs::read_dir("/proc/self/task")
                    .expect("tasks")
                    .filter_map(Result::ok)
                    .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
                    .map(|t| {
                        let stat = std::fs::read_to_string(t.path().join("stat")).expect("stat");
                        let rest: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..].split(' ').collect();
                        let policy = rest[38].parse::<u32>().expect("policy");
                        let nice = rest[16].parse::<i32>().expect("nice");
                        (policy, nice)
                    })
            };
            assert_eq!(sched_of("audit-writer").map(|(policy, _)| policy), Some(5), "SCHED_IDLE");
            // Lowered, so that its turns do not hold the request thread up; it holds the
            // log's state for its own steps only and stands aside for the rescue writer.
            assert_eq!(sched_of("audit-catchup"), Some((0, 19)), "SCHED_OTHER at the lowest nice value");
            // Not lowered: it does the housekeeping and takes over a saturated core's backlog.
            assert_eq!(sched_of("audit-rescue"), Some((0, 0)), "SCHED_OTHER at normal priority");
            // The WAL copies, beside the writers, in a core's idle moments: a woken request
            // thread takes the core from it at once.
            assert_eq!(sched_of("audit-walcopy").map(|(policy, _)| policy), Some(5), "SCHED_IDLE");
        }
        assert!(sink.flush_and_stop(Duration::from_secs(10)));
    }
}
