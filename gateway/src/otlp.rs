//! Span export: one span per sampled request — edgegate's hop, whose id is the parent the
//! pod receives — sent to an OpenTelemetry collector over OTLP/HTTP (JSON encoding).
//!
//! The request path only builds the span (sampled requests only) and puts it in a bounded
//! queue; a background service sends what is queued every `tracing.otlp.interval`, at
//! most `batch` spans per request. Export is best effort: a full queue or a collector that
//! is down or refuses drops spans, counted in `edgegate_trace_spans_dropped_total{reason}`,
//! and never slows or fails a request.

use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use edgegate_config::Otlp;
use edgegate_filters::trace::TraceContext;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde_json::json;

/// Spans waiting for the exporter, at most.
const QUEUE_CAPACITY: usize = 8_192;

/// What the span of one request says.
pub struct Span {
    pub trace: TraceContext,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub method: String,
    pub route: String,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub request_id: String,
    pub upstream: Option<SocketAddr>,
    pub cache: &'static str,
    pub access: &'static str,
}

pub struct SpanQueue {
    tx: SyncSender<Span>,
    rx: Mutex<Receiver<Span>>,
    exported: IntCounter,
    dropped_full: IntCounter,
    dropped_export: IntCounter,
    config: Otlp,
    node: String,
}

impl SpanQueue {
    pub fn new(config: &Otlp, node: String, registry: &Registry) -> Arc<SpanQueue> {
        let (tx, rx) = sync_channel(QUEUE_CAPACITY);
        let exported = IntCounter::new("edgegate_trace_spans_exported_total", "Spans the OTLP collector accepted")
            .expect("static metric definition");
        let dropped = IntCounterVec::new(
            Opts::new(
                "edgegate_trace_spans_dropped_total",
                "Spans not exported, by reason: queue_full (the exporter fell behind), export_failed (collector down or refusing)",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        for c in [Box::new(exported.clone()) as Box<dyn prometheus::core::Collector>, Box::new(dropped.clone())] {
            registry.register(c).expect("metric names are unique");
        }
        Arc::new(SpanQueue {
            tx,
            rx: Mutex::new(rx),
            exported,
            dropped_full: dropped.with_label_values(&["queue_full"]),
            dropped_export: dropped.with_label_values(&["export_failed"]),
            config: config.clone(),
            node,
        })
    }

    /// Queues a span; never waits.
    pub fn push(&self, span: Span) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(span) {
            self.dropped_full.inc();
        }
    }

    fn take(&self, max: usize) -> Vec<Span> {
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        while out.len() < max {
            match rx.try_recv() {
                Ok(s) => out.push(s),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        out
    }

    /// The OTLP/HTTP JSON body for `spans` (ids as hex, 64-bit numbers as strings).
    pub fn encode(&self, spans: &[Span]) -> serde_json::Value {
        let string = |key: &str, value: &str| json!({"key": key, "value": {"stringValue": value}});
        let spans: Vec<serde_json::Value> = spans
            .iter()
            .map(|s| {
                let mut attributes = vec![
                    string("http.request.method", &s.method),
                    string("server.address", &s.host),
                    string("url.path", &s.path),
                    json!({"key": "http.response.status_code", "value": {"intValue": s.status.to_string()}}),
                    string("edgegate.route", &s.route),
                    string("edgegate.request_id", &s.request_id),
                    string("edgegate.access", s.access),
                ];
                if let Some(u) = s.upstream {
                    attributes.push(string("edgegate.upstream", &u.to_string()));
                }
                if !s.cache.is_empty() {
                    attributes.push(string("edgegate.cache", s.cache));
                }
                let name = if s.route.is_empty() { s.method.clone() } else { format!("{} {}", s.method, s.route) };
                let mut span = json!({
                    "traceId": s.trace.trace_id(),
                    "spanId": s.trace.span_id(),
                    "name": name,
                    "kind": 2,
                    "startTimeUnixNano": s.start_unix_ns.to_string(),
                    "endTimeUnixNano": s.end_unix_ns.to_string(),
                    "attributes": attributes,
                    // Error for 5xx and for no answer at all; otherwise unset.
                    "status": {"code": if s.status >= 500 || s.status == 0 { 2 } else { 0 }},
                });
                if let Some(parent) = s.trace.parent_span_id() {
                    span["parentSpanId"] = json!(parent);
                }
                span
            })
            .collect();
        json!({"resourceSpans": [{
            "resource": {"attributes": [string("service.name", "edgegate"), string("host.name", &self.node)]},
            "scopeSpans": [{"scope": {"name": "edgegate", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
        }]})
    }
}

/// Sends queued spans to the collector.
pub struct Exporter {
    pub queue: Arc<SpanQueue>,
}

#[async_trait]
impl BackgroundService for Exporter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let q = &self.queue;
        // No redirect is followed: a `301` or `302` would resend the POST as a GET without
        // the spans, and a 200 to that would count them exported. A redirect is an error
        // (`collector … answered 301`), logged, for the endpoint to be set to where it leads.
        // The client is built at the first export, not at start: reading the system's CA
        // certificates (several ms with `SSL_CERT_DIR`) stays off the start path.
        let mut client = None;
        let mut last_error: Option<String> = None;
        let mut wait = q.config.interval;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            let spans = q.take(q.config.batch);
            wait = if spans.len() == q.config.batch { Duration::ZERO } else { q.config.interval };
            if spans.is_empty() {
                continue;
            }
            // Never a client with other rules: without one this batch is dropped as on a
            // failed export, and building it is tried again at the next.
            let built = match &client {
                Some(c) => Ok(c),
                None => crate::collector::client("tracing.otlp", Duration::from_secs(10)).map(|c| &*client.insert(c)),
            };
            // The endpoint in messages with a `user:password@` in it as `…@`.
            let endpoint = || edgegate_config::url_for_message(&q.config.endpoint);
            let error = match built {
                Ok(c) => match c.post(&q.config.endpoint).json(&q.encode(&spans)).send().await {
                    Ok(r) if r.status().is_success() => None,
                    Ok(r) => Some(format!("collector {} answered {}", endpoint(), r.status())),
                    Err(e) => Some(format!("sending to {}: {e}", endpoint())),
                },
                Err(e) => Some(e),
            };
            match error {
                None => {
                    q.exported.inc_by(spans.len() as u64);
                    if last_error.take().is_some() {
                        tracing::info!(endpoint = %endpoint(), "span export resumed");
                    }
                }
                Some(e) => {
                    // Best effort: the batch is dropped, not retried, so a collector outage
                    // never builds up memory or delays newer spans.
                    q.dropped_export.inc_by(spans.len() as u64);
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(error = %e, "span export failed; spans are dropped until the collector is back");
                        last_error = Some(e);
                    }
                }
            }
        }
    }
}
