//! Store-and-forward: committed records go to the central collector as gzip
//! newline-delimited JSON, in order, `batch` at a time. A batch counts as delivered only
//! after a 2xx from the URL itself (no redirect is followed); the acknowledged sequence
//! number is kept in the log itself, so a restart (or `kill -9`) resumes where the
//! collector left off. Delivery is at-least-once: the collector de-duplicates by
//! `(node, seq)`. Failures back off exponentially (1 s to 60 s, with jitter) and never
//! touch the request path.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use edgegate_config::AuditForward;
use edgegate_filters::audit::Reader;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::AuditSink;

const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub struct Forwarder {
    pub sink: Arc<AuditSink>,
    pub config: AuditForward,
}

impl Forwarder {
    /// The collector's URL for a log line or an error: a `user:password@` in it as `…@`.
    fn url(&self) -> String {
        edgegate_config::url_for_message(&self.config.url)
    }
}

/// The collector body for `records`: one JSON object per line, gzip-compressed.
pub fn encode_batch(records: &[edgegate_filters::audit::Record]) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for r in records {
        serde_json::to_writer(&mut gz, r)?;
        gz.write_all(b"\n")?;
    }
    gz.finish()
}

fn jitter(d: Duration) -> Duration {
    // ±20 %, so a fleet that lost the centre at once does not come back in step.
    d.mul_f64(0.8 + fastrand::f64() * 0.4)
}

impl Forwarder {
    /// Sends the next batch; Ok(true) when a full batch went (more may be waiting).
    async fn step(&self, reader: &Mutex<Reader>, client: &reqwest::Client) -> Result<bool, String> {
        let records = {
            let reader = reader.lock().unwrap_or_else(|p| p.into_inner());
            let forwarded = reader.forwarded().map_err(|e| format!("reading the log: {e}"))?;
            self.report_progress(&reader, forwarded);
            reader.after(forwarded, self.config.batch).map_err(|e| format!("reading the log: {e}"))?
        };
        let Some(last) = records.last().map(|r| r.seq) else { return Ok(false) };
        let body = encode_batch(&records).map_err(|e| format!("encoding: {e}"))?;
        let response = client
            .post(&self.config.url)
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", "gzip")
            .header("x-edgegate-node", &self.sink.node)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("sending to {}: {e}", self.url()))?;
        let status = response.status();
        if status.is_redirection() {
            // Where it leads, as sent (bounded: it is the collector's text, not ours).
            let to = response.headers().get(reqwest::header::LOCATION).map_or_else(
                || "nowhere".to_owned(),
                |l| String::from_utf8_lossy(&l.as_bytes()[..l.len().min(256)]).into_owned(),
            );
            return Err(format!(
                "collector {} answered {status}, to {to:?}: redirects are not followed (set audit.forward.url to where the collector takes batches)",
                self.url()
            ));
        }
        if !status.is_success() {
            return Err(format!("collector {} answered {status}", self.url()));
        }
        let reader = reader.lock().unwrap_or_else(|p| p.into_inner());
        reader.set_forwarded(last).map_err(|e| format!("recording progress: {e}"))?;
        self.sink.metrics.forwarded.inc_by(records.len() as u64);
        self.report_progress(&reader, last);
        Ok(records.len() == self.config.batch)
    }

    fn report_progress(&self, reader: &Reader, forwarded: u64) {
        self.sink.set_forward_progress(forwarded, reader.time_after(forwarded).ok().flatten());
    }
}

#[async_trait]
impl BackgroundService for Forwarder {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Built at the first send, not at start: reading the system's CA certificates
        // (several ms with `SSL_CERT_DIR`) stays off the start path. No redirect is
        // followed: a `301` or `302` is a failure that names where it leads (`step`), for
        // the operator to point `audit.forward.url` at.
        let mut client = None;
        let mut reader = None;
        let mut backoff = Duration::from_secs(1);
        // The first send one interval after start; then at once while batches are full.
        let mut wait = self.config.interval;
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            if reader.is_none() {
                reader = Reader::open(&self.sink.db).ok().map(Mutex::new);
            }
            let Some(r) = &reader else {
                wait = self.config.interval;
                continue;
            };
            // Never a client with other rules: without one the records stay in the log,
            // and building it is tried again as a failed send is.
            let sent = match &client {
                Some(c) => self.step(r, c).await,
                None => match crate::collector::client("audit.forward", Duration::from_secs(30)) {
                    Ok(c) => self.step(r, client.insert(c)).await,
                    Err(e) => Err(e),
                },
            };
            match sent {
                Ok(more) => {
                    if last_error.take().is_some() {
                        tracing::info!(url = %self.url(), "audit forwarding resumed");
                    }
                    backoff = Duration::from_secs(1);
                    wait = if more { Duration::ZERO } else { self.config.interval };
                }
                Err(e) => {
                    self.sink.metrics.forward_errors.inc();
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(error = %e, "audit forwarding failed; records stay buffered in the log and are retried");
                        last_error = Some(e);
                    }
                    wait = jitter(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
