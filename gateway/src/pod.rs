//! Demo upstream "pods": small HTTP/1.1 services that answer JSON the way a
//! government service would. `edgegate demo` starts them beside the gateway; tests
//! and load scenarios use them as real upstreams.
//!
//! A pod echoes what it received (method, path, query, headers) so callers can see
//! exactly what the gateway forwarded. Query parameters steer it: `delay_ms=N` answers
//! after N ms, `status=N` answers with that status. It counts connections and requests.
//! `GET /healthz` answers 200, or 503 after [`Pod::set_healthy`]`(false)`;
//! [`Pod::force_status`] makes every other answer carry one status (failure injection).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug, Clone)]
pub struct PodSpec {
    /// The service this pod belongs to, e.g. `permits`.
    pub service: String,
    /// This pod's own name, e.g. `permits-1`.
    pub name: String,
    /// Added to every answer, on top of any `delay_ms`.
    pub delay: Duration,
}

#[derive(Debug, Default)]
pub struct PodStats {
    pub connections: AtomicUsize,
    /// Requests other than health checks.
    pub requests: AtomicUsize,
    pub health_checks: AtomicUsize,
    unhealthy: AtomicBool,
    /// Status forced on every answer; 0 for none.
    forced_status: AtomicU16,
    /// Request targets as received (path and query, byte for byte), when recording.
    targets: std::sync::Mutex<Option<Vec<String>>>,
}

/// A running pod; stops (closing its listener and connections) when dropped.
pub struct Pod {
    pub addr: SocketAddr,
    pub stats: Arc<PodStats>,
    task: JoinHandle<()>,
}

impl Pod {
    /// Binds `addr` (port 0 for any free port) and serves on the current tokio runtime.
    pub async fn start(addr: SocketAddr, spec: PodSpec) -> std::io::Result<Pod> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(PodStats::default());
        let spec = Arc::new(spec);
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&spec), Arc::clone(&stats)));
        Ok(Pod { addr, stats, task })
    }

    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    pub fn health_checks(&self) -> usize {
        self.stats.health_checks.load(Ordering::SeqCst)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.stats.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    /// Keep every request target this pod receives from now on (see [`Pod::targets`]).
    pub fn record_targets(&self) {
        if let Ok(mut t) = self.stats.targets.lock() {
            t.get_or_insert_with(Vec::new);
        }
    }

    /// The request targets received since [`Pod::record_targets`], oldest first.
    pub fn targets(&self) -> Vec<String> {
        self.stats.targets.lock().ok().and_then(|t| t.clone()).unwrap_or_default()
    }

    /// Answer every request with `status` (`None` to stop).
    pub fn force_status(&self, status: Option<u16>) {
        self.stats.forced_status.store(status.unwrap_or(0), Ordering::SeqCst);
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, spec: Arc<PodSpec>, stats: Arc<PodStats>) {
    // Owning the connection tasks here means aborting this task ends them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                stats.connections.fetch_add(1, Ordering::SeqCst);
                let (spec, stats) = (Arc::clone(&spec), Arc::clone(&stats));
                connections.spawn(async move {
                    let service = service_fn(move |req| answer(req, Arc::clone(&spec), Arc::clone(&stats)));
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

async fn answer(
    req: Request<Incoming>,
    spec: Arc<PodSpec>,
    stats: Arc<PodStats>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        stats.health_checks.fetch_add(1, Ordering::SeqCst);
        let (status, body) = if stats.unhealthy.load(Ordering::SeqCst) {
            (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"unhealthy"}"#)
        } else {
            (StatusCode::OK, r#"{"status":"ok"}"#)
        };
        let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *resp.status_mut() = status;
        return Ok(resp);
    }
    stats.requests.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut recording) = stats.targets.lock() {
        if let Some(targets) = recording.as_mut() {
            targets.push(req.uri().path_and_query().map_or_else(|| req.uri().to_string(), |pq| pq.as_str().to_owned()));
        }
    }
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect();
    let delay = spec.delay + Duration::from_millis(query.get("delay_ms").and_then(|v| v.parse().ok()).unwrap_or(0));
    let forced = stats.forced_status.load(Ordering::SeqCst);
    let status = (forced != 0)
        .then_some(forced)
        .or_else(|| query.get("status").and_then(|v| v.parse().ok()))
        .and_then(|s| StatusCode::from_u16(s).ok());
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let hop_test = req.headers().contains_key("x-pod-hop-test");
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let body_bytes = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let doc = serde_json::json!({
        "service": spec.service,
        "pod": spec.name,
        "message": format!("{} service is open", spec.service),
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut resp = Response::new(Full::new(Bytes::from(doc.to_string())));
    *resp.status_mut() = status.unwrap_or(StatusCode::OK);
    let h = resp.headers_mut();
    h.insert("content-type", http::HeaderValue::from_static("application/json"));
    // Caching tests steer the answer's cache headers through the query.
    if let Some(cc) = query.get("cache_control").and_then(|v| http::HeaderValue::from_str(&v.replace("%20", " ")).ok())
    {
        h.insert("cache-control", cc);
    }
    if query.contains_key("set_cookie") {
        h.insert("set-cookie", http::HeaderValue::from_static("session=abc"));
    }
    if hop_test {
        // Headers meant for the gateway's hop only: it must not pass them on.
        h.insert("connection", http::HeaderValue::from_static("x-pod-private"));
        h.insert("x-pod-private", http::HeaderValue::from_static("secret"));
        h.insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
    }
    Ok(resp)
}
