//! Load-test pods: small real HTTP/1.1 servers (hyper, keep-alive) answering a fixed JSON
//! body, with a configurable latency distribution and failure injection (a share of 503s,
//! a share of connections reset mid-request, or stopped outright and started again on the
//! same port). Leaner than the demo pods so that the upstream costs little beside the
//! proxy under test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::task::{JoinHandle, JoinSet};

/// How long a pod takes to answer. Delays are slept on tokio's timer, which has millisecond
/// granularity: a sampled delay is served rounded up to the next millisecond tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    None,
    Fixed(Duration),
    /// Uniform between the two bounds.
    Uniform(Duration, Duration),
    /// Log-normal with this median and 99th percentile — the long tail real services have.
    LogNormal {
        median: Duration,
        p99: Duration,
    },
}

impl Latency {
    /// `none`, `fixed:5ms`, `uniform:1ms:3ms` or `lognormal:MEDIAN:P99` (e.g. `lognormal:2ms:10ms`).
    pub fn parse(spec: &str) -> anyhow::Result<Latency> {
        let parts: Vec<&str> = spec.split(':').collect();
        let d = |s: &str| humantime::parse_duration(s).with_context(|| format!("bad duration {s:?} in {spec:?}"));
        Ok(match parts.as_slice() {
            ["none"] => Latency::None,
            ["fixed", a] => Latency::Fixed(d(a)?),
            ["uniform", a, b] if d(a)? <= d(b)? => Latency::Uniform(d(a)?, d(b)?),
            ["lognormal", m, p] if d(m)? <= d(p)? && !d(m)?.is_zero() => {
                Latency::LogNormal { median: d(m)?, p99: d(p)? }
            }
            _ => anyhow::bail!(
                "latency {spec:?}: expected none, fixed:D, uniform:MIN:MAX or lognormal:MEDIAN:P99 (MIN <= MAX, MEDIAN <= P99)"
            ),
        })
    }

    fn sample(&self, rng: &mut fastrand::Rng) -> Duration {
        match *self {
            Latency::None => Duration::ZERO,
            Latency::Fixed(d) => d,
            Latency::Uniform(lo, hi) => lo + (hi.saturating_sub(lo)).mul_f64(rng.f64()),
            Latency::LogNormal { median, p99 } => {
                // z of the 99th percentile of the standard normal.
                let sigma = (p99.as_secs_f64() / median.as_secs_f64().max(1e-9)).ln().max(0.0) / 2.326;
                // Box–Muller.
                let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                median.mul_f64((sigma * z).exp().min(1e3))
            }
        }
    }
}

/// What a pod does with each request.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub latency: Latency,
    /// Share of requests answered 503.
    pub error_rate: f64,
    /// Share of requests whose connection is dropped without an answer.
    pub reset_rate: f64,
    /// `Cache-Control` on every answer, if any.
    pub cache_control: Option<&'static str>,
    pub body: Bytes,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            latency: Latency::None,
            error_rate: 0.0,
            reset_rate: 0.0,
            cache_control: None,
            body: Bytes::from_static(br#"{"service":"permits","status":"open"}"#),
        }
    }
}

struct Shared {
    behaviour: Mutex<Arc<Behaviour>>,
    requests: AtomicU64,
}

/// A running pod. `stop` closes its listener and every connection; `start_again` binds
/// the same port. Stops when dropped.
pub struct Pod {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Handle,
    task: Option<JoinHandle<()>>,
}

impl Pod {
    /// Starts a pod on a free loopback port, served by `runtime`.
    pub async fn start(runtime: &Handle, behaviour: Behaviour) -> anyhow::Result<Pod> {
        let shared = Arc::new(Shared { behaviour: Mutex::new(Arc::new(behaviour)), requests: AtomicU64::new(0) });
        let listener = bind(runtime, "127.0.0.1:0".parse()?).await?;
        let addr = listener.local_addr()?;
        let task = Some(runtime.spawn(accept_loop(listener, Arc::clone(&shared))));
        Ok(Pod { addr, shared, runtime: runtime.clone(), task })
    }

    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Kills the pod: the listener closes and open connections are dropped.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Brings a stopped pod back on its port.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.task.is_some() {
            return Ok(());
        }
        // The aborted accept loop releases the port once its task is dropped.
        let mut tries = 0;
        let listener = loop {
            match bind(&self.runtime, self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let _ = e;
                }
                Err(e) => return Err(e).with_context(|| format!("rebinding {}", self.addr)),
            }
        };
        self.task = Some(self.runtime.spawn(accept_loop(listener, Arc::clone(&self.shared))));
        Ok(())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn bind(runtime: &Handle, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    // Bind inside the pod runtime so the listener is registered with its reactor.
    runtime.spawn(async move { TcpListener::bind(addr).await }).await?.with_context(|| format!("binding {addr}"))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owning the connection tasks here means aborting this task ends them all.
    let mut connections = JoinSet::new();
    let mut seed = 1u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
                connections.spawn(async move {
                    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
                    let service = service_fn(move |req| answer(req, Arc::clone(&shared), Arc::clone(&rng)));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected reset")
    }
}

impl std::error::Error for Reset {}

async fn answer(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    rng: Arc<Mutex<fastrand::Rng>>,
) -> Result<Response<Full<Bytes>>, Reset> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let behaviour = shared.behaviour.lock().map(|b| Arc::clone(&b)).map_err(|_| Reset)?;
    let (delay, roll) = {
        let mut rng = rng.lock().map_err(|_| Reset)?;
        (behaviour.latency.sample(&mut rng), rng.f64())
    };
    let _ = req.into_body().collect().await;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if roll < behaviour.reset_rate {
        // An error from the service makes hyper drop the connection unanswered.
        return Err(Reset);
    }
    let mut resp = if roll < behaviour.reset_rate + behaviour.error_rate {
        let mut r = Response::new(Full::new(Bytes::from_static(br#"{"error":"injected failure"}"#)));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r
    } else {
        Response::new(Full::new(behaviour.body.clone()))
    };
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    if let Some(cc) = behaviour.cache_control {
        h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static(cc));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lognormal_has_the_asked_median_and_tail() {
        let mut rng = fastrand::Rng::with_seed(7);
        let l = Latency::LogNormal { median: Duration::from_millis(10), p99: Duration::from_millis(50) };
        let mut v: Vec<f64> = (0..20_000).map(|_| l.sample(&mut rng).as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let (p50, p99) = (v[10_000], v[19_800]);
        assert!((9.0..11.0).contains(&p50), "median {p50} ms");
        assert!((42.0..58.0).contains(&p99), "p99 {p99} ms");
    }

    #[test]
    fn parses_latency_specs() {
        assert_eq!(Latency::parse("none").ok(), Some(Latency::None));
        assert_eq!(Latency::parse("fixed:5ms").ok(), Some(Latency::Fixed(Duration::from_millis(5))));
        assert_eq!(
            Latency::parse("lognormal:2ms:10ms").ok(),
            Some(Latency::LogNormal { median: Duration::from_millis(2), p99: Duration::from_millis(10) })
        );
        for bad in ["uniform:3ms:1ms", "lognormal:10ms:2ms", "fixed", "gauss:1ms", "fixed:fast"] {
            let err = Latency::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(bad) || err.contains("fast"), "{bad}: {err}");
        }
    }

    #[test]
    fn uniform_stays_in_bounds() {
        let mut rng = fastrand::Rng::with_seed(7);
        let l = Latency::Uniform(Duration::from_millis(2), Duration::from_millis(4));
        for _ in 0..1000 {
            let d = l.sample(&mut rng);
            assert!(d >= Duration::from_millis(2) && d <= Duration::from_millis(4), "{d:?}");
        }
    }
}
