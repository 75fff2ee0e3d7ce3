//! The gateway checks its own log: a background thread walks the whole chain and every
//! checkpoint (with the signing key's public half, every signature) at start and then every
//! `audit.verify_full_interval`, and every `audit.verify_interval` what was appended since
//! its last good walk — chained on from the hash that walk ended at, after checking that the
//! record there still holds it. A whole walk costs what the whole log holds (~0.5 µs a
//! record; a 180-day log walked daily would cost each request ~180 such walks of its
//! record), a walk of what was appended only the new records. A log edited on disk — while
//! the gateway ran or while it was down — shows up as `edgegate_audit_verify_errors_total`,
//! an error line naming the first bad record, and `audit.verify` on `/-/config`, without
//! waiting for someone to run `edgegate audit verify`: an edit among the new records at the
//! next check, an edit of older ones at the next whole walk (or restart). It reads from one
//! SQLite snapshot beside the writer (WAL), at idle priority, never on the request path.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use prometheus::{IntCounter, IntGauge, Registry};

use edgegate_filters::audit::Verified;

use super::{now_ms, AuditSink};

pub struct VerifyMetrics {
    pub errors: IntCounter,
    pub last_success: IntGauge,
    pub records: IntGauge,
}

impl VerifyMetrics {
    pub fn new(registry: &Registry) -> VerifyMetrics {
        let m = VerifyMetrics {
            errors: IntCounter::new(
                "edgegate_audit_verify_errors_total",
                "Background verifications of the node's audit log that found it broken or could not read it",
            )
            .expect("static metric definition"),
            last_success: IntGauge::new(
                "edgegate_audit_verify_last_success_timestamp_seconds",
                "When the audit log last verified (Unix time; 0: not yet)",
            )
            .expect("static metric definition"),
            records: IntGauge::new("edgegate_audit_verified_records", "Records the last good verification walked")
                .expect("static metric definition"),
        };
        for c in [
            Box::new(m.errors.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.last_success.clone()),
            Box::new(m.records.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        m
    }
}

/// The outcome of the last background verification, for `/-/config`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyStatus {
    pub ok: bool,
    pub at_ms: u64,
    /// A walk of the whole log (at start and every `verify_full_interval`), or of what
    /// was appended since the last good walk.
    pub whole: bool,
    /// Records hashed by this walk.
    pub walked: u64,
    /// Records the log holds, anchor to head, as verified.
    pub records: u64,
    pub signatures_checked: bool,
    /// The first bad record and why, or why the log could not be read.
    pub error: Option<String>,
}

/// Where the verifier leaves its result.
#[derive(Default)]
pub struct LastVerify(Mutex<Option<VerifyStatus>>);

impl LastVerify {
    pub fn get(&self) -> Option<VerifyStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, status: VerifyStatus) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }
}

/// How often the verifier checks what was appended, and how often the whole log.
#[derive(Debug, Clone, Copy)]
pub struct Every {
    pub recent: Duration,
    pub full: Duration,
}

/// A walk reads the log in parts of this many records (~5 ms each without signatures, up to
/// ~0.1 s with a signed checkpoint every few records), each from its own read snapshot.
/// While a snapshot is open the writer's WAL cannot start over, and grows.
const PART_RECORDS: u64 = 10_000;
/// Between two parts, a WAL longer than the length the writer cuts it back to when it
/// starts over is given time to: the verifier waits for the writer's next WAL checkpoint,
/// up to [`WAL_WAIT`].
const WAL_LONG: u64 = edgegate_filters::audit::store::WAL_LIMIT;
const WAL_WAIT: Duration = Duration::from_secs(2);
/// After each part the verifier rests this many times as long as the part took: a walk
/// uses at most a quarter of a core. Idle priority keeps it off a busy core, but not off
/// the pod's CPU quota, which its threads share with the request threads.
const PACE: u32 = 3;

/// What the verifier remembers between walks: where the last good one ended, and when the
/// last whole walk began.
#[derive(Default)]
struct Walks {
    verified: Option<Verified>,
    full_at: Option<Instant>,
}

/// Starts the verifier thread; it ends when the sink stops. It runs at idle priority (as
/// the background audit writer does): a whole walk of a long log takes seconds to minutes
/// of CPU, which requests never wait behind.
pub fn spawn(sink: Arc<AuditSink>, key: Option<VerifyingKey>, every: Every) -> std::io::Result<()> {
    std::thread::Builder::new().name("audit-verify".into()).spawn(move || {
        let _ = sink.verifier.set(std::thread::current());
        let priority = super::lower_priority();
        tracing::debug!(priority, "audit verifier");
        let mut walks = Walks::default();
        loop {
            run_once(&sink, key.as_ref(), &mut walks, every.full);
            if wait(&sink, every.recent) {
                return;
            }
        }
    })?;
    Ok(())
}

/// Sleeps `d`, parked (the sink wakes the thread when it stops); true when the sink stopped
/// meanwhile. (It looked at the sink every 100 ms before: ten wake-ups a second of an idle
/// gateway, each tens of microseconds on a virtual machine.)
fn wait(sink: &AuditSink, d: Duration) -> bool {
    let until = Instant::now() + d;
    loop {
        if sink.stop.load(Ordering::Acquire) {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        std::thread::park_timeout(until - now);
    }
}

/// The pause after a part that took `took`: [`PACE`] times as long, and while the WAL is
/// long, until the writer's next WAL checkpoint (up to [`WAL_WAIT`]).
fn rest_between_parts(sink: &AuditSink, took: Duration) {
    let mut wal = sink.db.clone().into_os_string();
    wal.push("-wal");
    let wal_long = std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_LONG);
    let checkpoints = sink.wal_checkpoints.load(Ordering::Acquire);
    let rested = Instant::now() + took * PACE;
    let until = if wal_long { rested.max(Instant::now() + WAL_WAIT) } else { rested };
    sleep_until(sink, until, Duration::from_millis(10), || {
        Instant::now() >= rested && (!wal_long || sink.wal_checkpoints.load(Ordering::Acquire) != checkpoints)
    });
}

/// Sleeps in steps of at most `step` until `until` or until `done()`; true when the sink
/// stopped meanwhile.
fn sleep_until(sink: &AuditSink, until: Instant, step: Duration, done: impl Fn() -> bool) -> bool {
    loop {
        if sink.stop.load(Ordering::Acquire) {
            return true;
        }
        let now = Instant::now();
        if now >= until || done() {
            return false;
        }
        std::thread::sleep(step.min(until - now));
    }
}

/// One walk: the whole log at start, after a walk that failed and once `full` has passed
/// since the last whole walk began; otherwise what was appended since the last good walk.
fn run_once(sink: &AuditSink, key: Option<&VerifyingKey>, walks: &mut Walks, full: Duration) {
    let started = Instant::now();
    let whole = walks.verified.is_none() || walks.full_at.is_none_or(|t| t.elapsed() >= full);
    let after = if whole { None } else { walks.verified };
    if whole {
        walks.full_at = Some(started);
    }
    // In parts, each its own read snapshot, each from where the last stopped.
    let mut part_began = Instant::now();
    let result = edgegate_filters::audit::verify_in_parts(&sink.db, key, after, PART_RECORDS, || {
        rest_between_parts(sink, part_began.elapsed());
        part_began = Instant::now();
        !sink.stop.load(Ordering::Acquire)
    });
    walks.verified = result.as_ref().ok().filter(|r| r.complete).map(|r| r.head);
    // The status on `/-/config` first, then the metrics and the log line: whoever sees the
    // error counter move (an alert, a test) and then asks for the details gets this walk's,
    // not the one before it.
    let (walked, records) = result.as_ref().map_or((0, 0), |r| (r.walked, r.records));
    sink.last_verify.set(VerifyStatus {
        ok: result.is_ok(),
        at_ms: now_ms(),
        whole,
        walked,
        records,
        signatures_checked: key.is_some(),
        error: result.as_ref().err().map(ToString::to_string),
    });
    let m = &sink.verify_metrics;
    match result {
        Ok(report) => {
            m.last_success.set((now_ms() / 1000) as i64);
            m.records.set(report.records as i64);
            tracing::info!(
                whole,
                walked = report.walked,
                records = report.records,
                checkpoints = report.checkpoints,
                signed = report.signed_checkpoints,
                took_ms = started.elapsed().as_millis() as u64,
                "audit log verified"
            );
        }
        Err(e) => {
            m.errors.inc();
            tracing::error!(db = %sink.db.display(), error = %e, "audit log does not verify: it was changed outside the gateway or cannot be read; run `edgegate audit verify` on it and compare with the collector's copy");
        }
    }
}
