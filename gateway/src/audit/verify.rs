//! The gateway checks its own log: a background thread walks the whole chain and every
//! checkpoint (with the signing key's public half, every signature) at start and then every
//! `audit.verify_interval`. A log edited on disk — while the gateway ran or while it was
//! down — shows up as `edgegate_audit_verify_errors_total`, an error line naming the first bad
//! record, and `audit.verify` on `/-/config`, without waiting for someone to run
//! `edgegate audit verify`. It reads from one SQLite snapshot beside the writer (WAL), never
//! on the request path.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use prometheus::{IntCounter, IntGauge, Registry};

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

/// Starts the verifier thread; it ends when the sink stops.
pub fn spawn(sink: Arc<AuditSink>, key: Option<VerifyingKey>, every: Duration) -> std::io::Result<()> {
    std::thread::Builder::new().name("audit-verify".into()).spawn(move || loop {
        run_once(&sink, key.as_ref());
        let next = Instant::now() + every;
        while Instant::now() < next {
            if sink.stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100).min(every));
        }
    })?;
    Ok(())
}

fn run_once(sink: &AuditSink, key: Option<&VerifyingKey>) {
    let started = Instant::now();
    let result = edgegate_filters::audit::store::verify(&sink.db, key);
    let m = &sink.verify_metrics;
    let status = match result {
        Ok(report) => {
            m.last_success.set((now_ms() / 1000) as i64);
            m.records.set(report.records as i64);
            tracing::info!(
                records = report.records,
                checkpoints = report.checkpoints,
                signed = report.signed_checkpoints,
                took_ms = started.elapsed().as_millis() as u64,
                "audit log verified"
            );
            VerifyStatus {
                ok: true,
                at_ms: now_ms(),
                records: report.records,
                signatures_checked: key.is_some(),
                error: None,
            }
        }
        Err(e) => {
            m.errors.inc();
            tracing::error!(db = %sink.db.display(), error = %e, "audit log does not verify: it was changed outside the gateway or cannot be read; run `edgegate audit verify` on it and compare with the collector's copy");
            VerifyStatus {
                ok: false,
                at_ms: now_ms(),
                records: 0,
                signatures_checked: key.is_some(),
                error: Some(e.to_string()),
            }
        }
    };
    sink.last_verify.set(status);
}
