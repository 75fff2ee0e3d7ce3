//! The load generator: open-loop at a fixed rate (latency measured from each request's
//! *intended* send time, so a stalled server cannot hide its stall by being sent less —
//! coordinated omission) or closed-loop for maximum throughput. HTTP/1.1 runs on a lean
//! keep-alive client of our own (one hyper connection per worker); HTTP/2 runs over TLS
//! (ALPN) or cleartext prior knowledge with streams multiplexed on a few connections.
//!
//! Every run is bounded by a duration and a request count and refuses any address that is
//! not loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::time::Instant;

/// One kind of request in the mix.
#[derive(Debug, Clone)]
pub struct Template {
    /// Names the kind in the report, e.g. `hit` or `denied`.
    pub label: String,
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers whose value differs from request to request: each `{n}` in it is replaced
    /// by six base64url characters of the request's number (e.g. a bearer token whose
    /// signature differs each time, of the same length).
    pub varying: Vec<(HeaderName, String)>,
    /// What `{line}` in a varying header is replaced by: the request's number modulo their
    /// count picks one.
    pub lines: std::sync::Arc<[String]>,
    pub body: Bytes,
    /// Relative share of the mix.
    pub weight: u32,
    /// The status this request should get; anything else counts as an error. `None`: any 2xx.
    pub expect: Option<u16>,
}

impl Template {
    pub fn get(label: &str, path: &str) -> Template {
        Template {
            label: label.to_owned(),
            method: Method::GET,
            path: path.to_owned(),
            headers: Vec::new(),
            varying: Vec::new(),
            lines: std::sync::Arc::from(Vec::new()),
            body: Bytes::new(),
            weight: 1,
            expect: None,
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> anyhow::Result<Template> {
        self.headers.push((HeaderName::from_static(name), HeaderValue::from_str(value)?));
        Ok(self)
    }

    pub fn weight(mut self, weight: u32) -> Template {
        self.weight = weight;
        self
    }

    pub fn expect(mut self, status: u16) -> Template {
        self.expect = Some(status);
        self
    }

    fn accepts(&self, status: u16) -> bool {
        match self.expect {
            Some(s) => s == status,
            None => (200..300).contains(&status),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Requests due at a fixed rate, per second.
    Open { rate: u32 },
    /// Each worker sends its next request as soon as the previous one is answered.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 over TLS with ALPN (certificate checks off: loopback test servers).
    Http2Tls,
    /// HTTP/2 over cleartext with prior knowledge.
    Http2,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    /// Host header / authority.
    pub host: String,
    pub templates: Vec<Template>,
    pub protocol: Protocol,
    pub mode: Mode,
    /// HTTP/1.1: connections (= requests in flight at most). HTTP/2: concurrent streams,
    /// spread over `min(connections, 4)` connections.
    pub connections: usize,
    pub duration: Duration,
    /// Hard cap on requests sent.
    pub max_requests: u64,
    pub timeout: Duration,
}

impl Plan {
    pub fn new(addr: SocketAddr, templates: Vec<Template>, mode: Mode, duration: Duration) -> Plan {
        Plan {
            addr,
            host: "localhost".into(),
            templates,
            protocol: Protocol::Http1,
            mode,
            connections: 64,
            duration,
            max_requests: 50_000_000,
            timeout: Duration::from_secs(5),
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        if !self.addr.ip().is_loopback() {
            bail!("load goes to loopback only; got {}", self.addr);
        }
        if self.templates.is_empty() || self.templates.iter().all(|t| t.weight == 0) {
            bail!("no requests to send");
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(600) {
            bail!("duration must be between 1 ms and 600 s");
        }
        if self.connections == 0 || self.connections > 10_000 {
            bail!("connections must be 1..=10000");
        }
        if let Mode::Open { rate } = self.mode {
            if rate == 0 || rate > 1_000_000 {
                bail!("rate must be 1..=1000000 per second");
            }
        }
        Ok(())
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub mode: Mode,
    pub protocol: Protocol,
    pub elapsed: Duration,
    /// Requests whose send was attempted.
    pub sent: u64,
    /// Requests answered with the expected status.
    pub ok: u64,
    /// Failures by kind: `connect`, `timeout`, `reset`, `protocol`, `status_NNN`.
    pub errors: BTreeMap<String, u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// Per template label: requests sent.
    pub by_label: BTreeMap<String, u64>,
    /// Latency of expected answers, µs, from the intended send time.
    pub latency: Histogram<u64>,
    /// The part of `latency` spent before the request left: µs from the intended send time
    /// until a connection took it up (open loop: every connection still busy with earlier
    /// requests). The rest, `service`, runs from there to the answer's last byte.
    pub queued: Histogram<u64>,
    /// µs from a connection taking the request up to its answer's last byte.
    pub service: Histogram<u64>,
}

impl Report {
    fn empty(mode: Mode, protocol: Protocol) -> anyhow::Result<Report> {
        Ok(Report {
            mode,
            protocol,
            elapsed: Duration::ZERO,
            sent: 0,
            ok: 0,
            errors: BTreeMap::new(),
            statuses: BTreeMap::new(),
            by_label: BTreeMap::new(),
            latency: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            queued: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            service: Histogram::new_with_bounds(1, 120_000_000, 3)?,
        })
    }

    fn merge(&mut self, other: Report) {
        self.sent += other.sent;
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.by_label {
            *self.by_label.entry(k).or_default() += v;
        }
        let _ = self.latency.add(&other.latency);
        let _ = self.queued.add(&other.queued);
        let _ = self.service.add(&other.service);
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn achieved_rps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latency, q)
    }

    pub fn to_json(&self) -> Value {
        let h = &self.latency;
        let ms = |v: u64| (v as f64 / 10.0).round() / 100.0;
        let tail = |h: &Histogram<u64>| json!({"p50": ms(h.value_at_quantile(0.5)), "p99": ms(h.value_at_quantile(0.99)), "p99_9": ms(h.value_at_quantile(0.999))});
        json!({
            "mode": match self.mode { Mode::Open { .. } => "open", Mode::Closed => "closed" },
            "target_rps": match self.mode { Mode::Open { rate } => Some(rate), Mode::Closed => None },
            "protocol": match self.protocol { Protocol::Http1 => "http/1.1", Protocol::Http2Tls => "h2", Protocol::Http2 => "h2c" },
            "elapsed_s": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "sent": self.sent,
            "ok": self.ok,
            "achieved_rps": self.achieved_rps().round(),
            "errors": self.errors,
            "statuses": self.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "by_label": self.by_label,
            "latency_ms": {
                "p50": ms(h.value_at_quantile(0.5)),
                "p90": ms(h.value_at_quantile(0.9)),
                "p99": ms(h.value_at_quantile(0.99)),
                "p99_9": ms(h.value_at_quantile(0.999)),
                "max": ms(h.max()),
                "mean": (h.mean() / 10.0).round() / 100.0,
            },
            "queued_ms": tail(&self.queued),
            "service_ms": tail(&self.service),
        })
    }

    /// One line for a terminal.
    pub fn summary(&self) -> String {
        format!(
            "{:.0} req/s, {} sent, {} ok, errors {:?}; ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; p99 of the wait for a connection {:.2}, of the answer once sent {:.2}",
            self.achieved_rps(),
            self.sent,
            self.ok,
            self.errors,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.latency.max() as f64 / 1000.0,
            quantile_ms(&self.queued, 0.99),
            quantile_ms(&self.service, 0.99)
        )
    }
}

/// Quantile `q` of a histogram of µs ([`Report::latency`], `queued`, `service`), in ms.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The request schedule shared by all workers: request `i` is due at `start + i / rate`
/// (open loop) and is of template `order[i % order.len()]`.
struct Schedule {
    plan: Plan,
    order: Vec<usize>,
    next: AtomicU64,
    start: Instant,
    deadline: Instant,
    total: u64,
    /// Open loop: one permit per request that has fallen due, handed out by [`pace`].
    released: Option<Arc<tokio::sync::Semaphore>>,
}

impl Schedule {
    fn new(plan: Plan) -> anyhow::Result<Arc<Schedule>> {
        // A fixed shuffle of the weighted mix: reproducible from run to run.
        let mut order: Vec<usize> =
            plan.templates.iter().enumerate().flat_map(|(i, t)| std::iter::repeat_n(i, t.weight as usize)).collect();
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        rng.shuffle(&mut order);
        let start = Instant::now();
        let total = match plan.mode {
            Mode::Open { rate } => ((plan.duration.as_secs_f64() * f64::from(rate)) as u64).max(1),
            Mode::Closed => u64::MAX,
        }
        .min(plan.max_requests);
        let released = match plan.mode {
            Mode::Open { rate } => {
                let permits = Arc::new(tokio::sync::Semaphore::new(0));
                let (p, first) = (Arc::clone(&permits), start.into_std());
                // Every worker takes one permit more than there are requests to learn the
                // run is over.
                let workers = plan.connections;
                std::thread::Builder::new()
                    .name("load-pacer".into())
                    .spawn(move || pace(&p, first, f64::from(rate), total, workers))
                    .context("starting the load generator's pacer")?;
                Some(permits)
            }
            Mode::Closed => None,
        };
        Ok(Arc::new(Schedule {
            deadline: start + plan.duration,
            plan,
            order,
            next: AtomicU64::new(0),
            start,
            total,
            released,
        }))
    }

    /// The next request to send and the instant its latency counts from; `None` when the
    /// run is over.
    ///
    /// Open loop: a worker still busy past the request's due time (the server was slow)
    /// counts from the due time: that wait is the server's doing and is what coordinated
    /// omission would hide. A worker that was already waiting counts from when the pacer
    /// released the request, since the pacer's lateness (up to its [`TICK`]) is the
    /// generator's.
    async fn next(&self) -> Option<(u64, Instant)> {
        let Some(permits) = &self.released else { return self.take() };
        let waiting_since = Instant::now();
        permits.acquire().await.ok()?.forget();
        let (i, due) = self.take()?;
        Some((i, if waiting_since >= due { due } else { Instant::now() }))
    }

    /// The next request to send and when it is due; `None` when the run is over.
    fn take(&self) -> Option<(u64, Instant)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.total {
            return None;
        }
        match self.plan.mode {
            Mode::Open { rate } => Some((i, self.start + due_offset(i, f64::from(rate)))),
            Mode::Closed => {
                let now = Instant::now();
                (now < self.deadline).then_some((i, now))
            }
        }
    }

    fn template(&self, i: u64) -> &Template {
        &self.plan.templates[self.order[(i % self.order.len() as u64) as usize]]
    }

    fn request(&self, t: &Template, h2: bool, i: u64) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut b = Request::builder().method(t.method.clone());
        if h2 {
            let scheme = if self.plan.protocol == Protocol::Http2Tls { "https" } else { "http" };
            b = b.uri(format!("{scheme}://{}{}", self.plan.host, t.path)).version(http::Version::HTTP_2);
        } else {
            b = b.uri(t.path.as_str()).header(http::header::HOST, self.plan.host.as_str());
        }
        for (k, v) in &t.headers {
            b = b.header(k, v);
        }
        for (k, v) in &t.varying {
            let mut v = v.replace("{n}", &request_number(i));
            if v.contains("{ip}") {
                v = v.replace("{ip}", &request_address(i));
            }
            if !t.lines.is_empty() {
                v = v.replace("{line}", &t.lines[(i % t.lines.len() as u64) as usize]);
            }
            b = b.header(k, HeaderValue::from_str(&v)?);
        }
        Ok(b.body(Full::new(t.body.clone()))?)
    }
}

/// `i` as an IPv4 address in 10.0.0.0/8 (its low 24 bits), for [`Template::varying`]: a
/// client address of its own for each of 16,777,216 requests in turn.
fn request_address(i: u64) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// `i` as six base64url characters (its low 36 bits), for [`Template::varying`].
fn request_number(i: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..6).map(|k| char::from(ALPHABET[((i >> (6 * k)) & 63) as usize])).collect()
}

/// Runs `plan` to completion on the current tokio runtime.
pub async fn run(plan: Plan) -> anyhow::Result<Report> {
    plan.check()?;
    let (mode, protocol, connections) = (plan.mode, plan.protocol, plan.connections);
    // The connections are opened before the clock starts: a run measures requests on open
    // keep-alive connections, not every client connecting in its first milliseconds. One
    // that fails is opened again by its worker on its first request, which counts it.
    let (addr, limit) = (plan.addr, plan.timeout);
    // HTTP/2 multiplexes the workers' streams over at most four connections.
    let h2_conns = connections.min(4);
    let (mut h1, mut h2) = match protocol {
        Protocol::Http1 => (open_all(connections, || within(limit, connect_h1(addr))).await, Vec::new()),
        Protocol::Http2 | Protocol::Http2Tls => {
            let tls = protocol == Protocol::Http2Tls;
            (Vec::new(), open_all(h2_conns, || within(limit, connect_h2(addr, tls))).await)
        }
    };
    // So are the workers' histograms (three of ~150 KB each, zeroed as they are made). Made
    // by each worker on the clock, they held a run's first requests for ~20 ms at 64
    // connections (~75 ms at 256): 0.3 % of a 6 s run at 25,000 req/s, the p99.9 of every
    // server and part of its p99 (docs/benchmarks.md, "the generator's own first milliseconds").
    let mut reports =
        (0..connections).map(|_| Report::empty(mode, protocol)).collect::<anyhow::Result<Vec<_>>>()?.into_iter();
    let schedule = Schedule::new(plan)?;
    let mut tasks = tokio::task::JoinSet::new();
    match protocol {
        Protocol::Http1 => {
            for _ in 0..connections {
                tasks.spawn(h1_worker(Arc::clone(&schedule), reports.next().context("a report per worker")?, h1.pop()));
            }
        }
        Protocol::Http2 | Protocol::Http2Tls => {
            for c in 0..h2_conns {
                let shared = Arc::new(tokio::sync::Mutex::new(h2.pop()));
                let streams = connections / h2_conns + usize::from(c < connections % h2_conns);
                for _ in 0..streams {
                    tasks.spawn(h2_worker(
                        Arc::clone(&schedule),
                        reports.next().context("a report per worker")?,
                        Arc::clone(&shared),
                    ));
                }
            }
        }
    }
    let mut report = Report::empty(mode, protocol)?;
    while let Some(done) = tasks.join_next().await {
        report.merge(done.context("load worker panicked")??);
    }
    report.elapsed = schedule.start.elapsed();
    Ok(report)
}

/// What `connect` gives within `limit`; `None` on a failure or past it.
async fn within<C>(limit: Duration, connect: impl std::future::Future<Output = Result<C, String>>) -> Option<C> {
    tokio::time::timeout(limit, connect).await.ok().and_then(Result::ok)
}

/// `n` connections opened at once; the ones that failed are left out.
async fn open_all<C, F, Fut>(n: usize, open: F) -> Vec<C>
where
    C: Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<C>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        set.spawn(open());
    }
    let mut opened = Vec::with_capacity(n);
    while let Some(c) = set.join_next().await {
        if let Ok(Some(c)) = c {
            opened.push(c);
        }
    }
    opened
}

/// When request `i` of an open loop at `rate` falls due, after the run's start: the one
/// schedule both the pacer and the workers' latency accounting follow.
fn due_offset(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// The pacer's shortest sleep: above 4,000 req/s requests leave in small groups (5 at
/// 20,000 req/s, 15 at 60,000) rather than a wake-up each. Waking every 0.1 ms cost the
/// generator's core too much: nginx `return 200` at 62,600 req/s read p99 27–175 ms.
const TICK: Duration = Duration::from_micros(250);

/// The open loop's clock, on a thread of its own: request `i` is released (one semaphore
/// permit) at `start + i / rate`, then `workers` permits more so that every worker learns
/// the run is over. Workers sleeping on tokio's timer instead would wake on its 1 ms tick
/// and send each millisecond's requests at once — 18 back to back at 18,000 req/s, a burst
/// no population of clients makes, which queues in any server and inflates its tail. The
/// OS timer this thread sleeps on fires within tens of microseconds.
fn pace(permits: &tokio::sync::Semaphore, start: std::time::Instant, rate: f64, total: u64, workers: usize) {
    let mut released = 0u64;
    while released < total {
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        if due > released {
            permits.add_permits((due - released) as usize);
            released = due;
        }
        if released < total {
            let next = start + due_offset(released, rate);
            std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()).max(TICK));
        }
    }
    permits.add_permits(workers);
}

/// Records one request's outcome; `began` is when a connection took it up (see
/// [`Report::queued`]).
fn record(report: &mut Report, t: &Template, start: Instant, began: Instant, outcome: Result<u16, String>) {
    report.sent += 1;
    *report.by_label.entry(t.label.clone()).or_default() += 1;
    match outcome {
        Ok(status) => {
            *report.statuses.entry(status).or_default() += 1;
            if t.accepts(status) {
                report.ok += 1;
                let us = |d: Duration| (d.as_micros() as u64).max(1);
                let _ = report.latency.record(us(start.elapsed()));
                let _ = report.queued.record(us(began.saturating_duration_since(start)));
                let _ = report.service.record(us(began.elapsed()));
            } else {
                *report.errors.entry(format!("status_{status}")).or_default() += 1;
            }
        }
        Err(kind) => *report.errors.entry(kind).or_default() += 1,
    }
}

fn classify(e: &hyper::Error) -> String {
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        "reset".into()
    } else if e.is_timeout() {
        "timeout".into()
    } else if e.is_parse() || e.is_parse_status() {
        "protocol".into()
    } else {
        "io".into()
    }
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect_h1(addr: SocketAddr) -> Result<H1, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|_| "connect".to_owned())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| classify(&e))?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn h1_worker(s: Arc<Schedule>, mut report: Report, mut conn: Option<H1>) -> anyhow::Result<Report> {
    while let Some((i, start)) = s.next().await {
        let t = s.template(i);
        let began = Instant::now();
        let req = s.request(t, false, i)?;
        let outcome = tokio::time::timeout(s.plan.timeout, async {
            let mut sender = match conn.take() {
                Some(c) if !c.is_closed() => c,
                _ => connect_h1(s.plan.addr).await?,
            };
            sender.ready().await.map_err(|e| classify(&e))?;
            let resp = sender.send_request(req).await.map_err(|e| classify(&e))?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await.map_err(|e| classify(&e))?;
            conn = Some(sender);
            Ok(status)
        })
        .await
        .unwrap_or_else(|_| Err("timeout".to_owned()));
        if outcome.is_err() {
            conn = None;
        }
        record(&mut report, t, start, began, outcome);
    }
    Ok(report)
}

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn connect_h2(addr: SocketAddr, tls: bool) -> Result<H2, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|_| "connect".to_owned())?;
    let _ = stream.set_nodelay(true);
    let exec = hyper_util::rt::TokioExecutor::new();
    if tls {
        let tls = crate::tls::connect_h2(stream).await.map_err(|_| "tls".to_owned())?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(exec, TokioIo::new(tls)).await.map_err(|e| classify(&e))?;
        tokio::spawn(conn);
        Ok(sender)
    } else {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(exec, TokioIo::new(stream)).await.map_err(|e| classify(&e))?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

async fn h2_worker(
    s: Arc<Schedule>,
    mut report: Report,
    shared: Arc<tokio::sync::Mutex<Option<H2>>>,
) -> anyhow::Result<Report> {
    let tls = s.plan.protocol == Protocol::Http2Tls;
    while let Some((i, start)) = s.next().await {
        let t = s.template(i);
        let began = Instant::now();
        let req = s.request(t, true, i)?;
        let outcome = tokio::time::timeout(s.plan.timeout, async {
            let mut sender = {
                let mut slot = shared.lock().await;
                match slot.as_ref() {
                    Some(c) if !c.is_closed() => c.clone(),
                    _ => {
                        let c = connect_h2(s.plan.addr, tls).await?;
                        *slot = Some(c.clone());
                        c
                    }
                }
            };
            sender.ready().await.map_err(|e| classify(&e))?;
            let resp = sender.send_request(req).await.map_err(|e| classify(&e))?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await.map_err(|e| classify(&e))?;
            Ok(status)
        })
        .await
        .unwrap_or_else(|_| Err("timeout".to_owned()));
        record(&mut report, t, start, began, outcome);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::{Behaviour, Latency, Pod};

    async fn pod(behaviour: Behaviour) -> Pod {
        Pod::start(&Handle::current(), behaviour).await.expect("pod")
    }

    use tokio::runtime::Handle;

    #[tokio::test]
    async fn open_loop_sends_exactly_the_scheduled_requests() {
        let p = pod(Behaviour::default()).await;
        let plan =
            Plan::new(p.addr, vec![Template::get("get", "/x")], Mode::Open { rate: 400 }, Duration::from_millis(500));
        let r = run(plan).await.expect("run");
        assert_eq!((r.sent, r.ok), (200, 200));
        assert_eq!(r.statuses.get(&200), Some(&200));
        assert_eq!(p.requests(), 200);
        assert_eq!(r.latency.len(), 200);
    }

    #[tokio::test]
    async fn latency_counts_from_the_intended_send_time() {
        // One connection, answers take 50 ms, 100 requests due per second: the server can
        // do 20/s, so the queue grows and the 25th request is due at 240 ms but answered
        // near 1.25 s. Measured from the actual send, every request would look like 50 ms.
        let p = pod(Behaviour { latency: Latency::Fixed(Duration::from_millis(50)), ..Behaviour::default() }).await;
        let mut plan =
            Plan::new(p.addr, vec![Template::get("get", "/x")], Mode::Open { rate: 100 }, Duration::from_millis(250));
        plan.connections = 1;
        let r = run(plan).await.expect("run");
        assert_eq!(r.ok, 25);
        assert!(
            r.latency.max() >= 900_000,
            "max {} µs: queueing behind the slow server was not counted",
            r.latency.max()
        );
        assert!(r.latency.min() >= 50_000, "min {} µs is below the server's own 50 ms", r.latency.min());
        // The split: the wait for the one connection is the queue, the 50 ms the service.
        assert!(r.queued.max() >= 850_000, "queued max {} µs: the wait for the connection", r.queued.max());
        assert!(
            r.queued.min() < 10_000,
            "queued min {} µs: the first request found the connection free",
            r.queued.min()
        );
        assert!(
            r.service.min() >= 50_000 && r.service.max() < 300_000,
            "service {}..{} µs: each answer took the pod's 50 ms, not the queue's wait",
            r.service.min(),
            r.service.max()
        );
        let j = r.to_json();
        assert!(j["queued_ms"]["p99"].as_f64().is_some_and(|q| q >= 850.0), "{j}");
        assert!(j["service_ms"]["p50"].as_f64().is_some_and(|s| (50.0..300.0).contains(&s)), "{j}");
    }

    #[tokio::test]
    async fn errors_are_counted_by_kind() {
        let failing = pod(Behaviour { error_rate: 1.0, ..Behaviour::default() }).await;
        let plan = Plan::new(
            failing.addr,
            vec![Template::get("get", "/x")],
            Mode::Open { rate: 200 },
            Duration::from_millis(100),
        );
        let r = run(plan).await.expect("run");
        assert_eq!(r.errors.get("status_503"), Some(&20));
        assert_eq!(r.ok, 0);

        let resetting = pod(Behaviour { reset_rate: 1.0, ..Behaviour::default() }).await;
        let plan = Plan::new(
            resetting.addr,
            vec![Template::get("get", "/x")],
            Mode::Open { rate: 200 },
            Duration::from_millis(100),
        );
        let r = run(plan).await.expect("run");
        assert_eq!(r.errors.get("reset"), Some(&20), "{:?}", r.errors);

        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let plan =
            Plan::new(closed, vec![Template::get("get", "/x")], Mode::Open { rate: 200 }, Duration::from_millis(100));
        let r = run(plan).await.expect("run");
        assert_eq!(r.errors.get("connect"), Some(&20), "{:?}", r.errors);

        // Expected non-2xx statuses are not errors.
        let plan = Plan::new(
            failing.addr,
            vec![Template::get("get", "/x").expect(503)],
            Mode::Open { rate: 200 },
            Duration::from_millis(100),
        );
        let r = run(plan).await.expect("run");
        assert_eq!((r.ok, r.error_count()), (20, 0));
    }

    #[tokio::test]
    async fn closed_loop_stops_at_the_deadline_or_count() {
        let p = pod(Behaviour::default()).await;
        let mut plan = Plan::new(p.addr, vec![Template::get("get", "/x")], Mode::Closed, Duration::from_secs(30));
        plan.max_requests = 500;
        plan.connections = 8;
        let r = run(plan).await.expect("run");
        assert_eq!((r.sent, r.ok), (500, 500));
        assert!(r.elapsed < Duration::from_secs(30));
    }

    #[tokio::test]
    async fn weighted_mix_follows_the_weights() {
        let p = pod(Behaviour::default()).await;
        let t = vec![Template::get("a", "/a").weight(3), Template::get("b", "/b").weight(1)];
        let mut plan = Plan::new(p.addr, t, Mode::Closed, Duration::from_secs(30));
        plan.max_requests = 400;
        let r = run(plan).await.expect("run");
        assert_eq!(r.by_label.get("a"), Some(&300));
        assert_eq!(r.by_label.get("b"), Some(&100));
    }

    /// A server answering "ok" over HTTP/2 (`h2`) or HTTP/1.1, and the count of the
    /// connections it accepted.
    async fn counting_server(h2: bool) -> (SocketAddr, Arc<AtomicU64>) {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let want = if h2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
                        assert_eq!(req.version(), want);
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                    });
                    let io = TokioIo::new(stream);
                    let _ = if h2 {
                        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                    } else {
                        hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await
                    };
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn http2_cleartext_multiplexes_streams() {
        let (addr, connections) = counting_server(true).await;
        let mut plan = Plan::new(addr, vec![Template::get("get", "/x")], Mode::Closed, Duration::from_secs(30));
        plan.protocol = Protocol::Http2;
        plan.connections = 32;
        plan.max_requests = 1000;
        let r = run(plan).await.expect("run");
        assert_eq!((r.sent, r.ok), (1000, 1000), "{:?}", r.errors);
        assert_eq!(connections.load(Ordering::Relaxed), 4, "32 streams over 4 connections");
    }

    #[tokio::test]
    async fn connections_are_open_before_the_first_request_falls_due() {
        // Eight connections, two requests: a worker that opened its connection on its first
        // request (on the run's clock) would have opened two.
        let (addr, accepted) = counting_server(false).await;
        let mut plan =
            Plan::new(addr, vec![Template::get("get", "/x")], Mode::Open { rate: 20 }, Duration::from_millis(100));
        plan.connections = 8;
        let r = run(plan).await.expect("run");
        assert_eq!((r.sent, r.ok), (2, 2), "{:?}", r.errors);
        assert_eq!(accepted.load(Ordering::Relaxed), 8, "every connection opened up front");
    }

    #[test]
    fn each_request_number_is_six_characters_of_its_own() {
        assert_eq!(request_number(0), "AAAAAA");
        assert_eq!(request_number(1), "BAAAAA");
        assert_eq!(request_number(64), "ABAAAA");
        let all: std::collections::HashSet<String> = (0..100_000).map(request_number).collect();
        assert_eq!(all.len(), 100_000);
        assert!(all
            .iter()
            .all(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')));
    }

    #[tokio::test]
    async fn refuses_anything_but_loopback() {
        let plan = Plan::new(
            "10.0.0.1:80".parse().expect("addr"),
            vec![Template::get("get", "/")],
            Mode::Open { rate: 1 },
            Duration::from_secs(1),
        );
        let err = run(plan).await.expect_err("not loopback");
        assert!(err.to_string().contains("loopback only"), "{err}");
    }
}
