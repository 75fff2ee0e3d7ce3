//! New HTTPS connections, each a TLS handshake and one HTTP/1.1 request, from many clients
//! of their own: what a node's citizens coming back on new connections cost the server,
//! with their sessions resumed or not.
//!
//! Each client has its own session store, as each phone does. Connections are made by
//! `concurrency` tasks taking clients in turn, so between two connections of one client
//! all the others have connected once: a server that holds fewer sessions than there are
//! clients resumes none of them. With `--server-pid`, the server's CPU time (every
//! thread's, from `/proc`) is read before and after the measured connections, after a
//! first round in which each client connects once to get a session. Each connection's
//! handshake time (from the TCP connect to the handshake's end, as the client sees it) is
//! reported as percentiles: what a new connection waits for while the server is busy.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::HandshakeKind;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cpu;

/// A run of the `handshakes` command: its options.
#[derive(clap::Args)]
pub struct Plan {
    /// The TLS listener, 127.0.0.1:PORT.
    #[arg(long)]
    pub addr: SocketAddr,
    /// The name sent in SNI and `Host`.
    #[arg(long, default_value = "localhost")]
    pub sni: String,
    /// The path of each connection's one request.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Clients, each with its own session store, taking turns.
    #[arg(long, default_value_t = 2000)]
    pub clients: usize,
    /// Connections measured, after each client has connected once.
    #[arg(long, default_value_t = 20_000)]
    pub connections: u64,
    /// Connections open at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Clients never offer to resume: every handshake a full one.
    #[arg(long)]
    pub no_resume: bool,
    /// TLS 1.2 instead of TLS 1.3.
    #[arg(long)]
    pub tls12: bool,
    /// New connections a second at most (default: as fast as the server takes them).
    #[arg(long)]
    pub rate: Option<f64>,
    /// The server process (every thread counted) whose CPU time to report per connection.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

struct Counts {
    resumed: AtomicU64,
    full: AtomicU64,
    failed: AtomicU64,
    not_ok: AtomicU64,
    /// Handshake times of the connections that made one, µs.
    handshake_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            resumed: AtomicU64::new(0),
            full: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            not_ok: AtomicU64::new(0),
            // 1 µs to 60 s, three significant digits.
            handshake_us: std::sync::Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            ),
        }
    }
}

/// One connection: handshake, `GET path` with `Connection: close`, the answer read to its
/// end. Its handshake's kind, how long the handshake took (from the TCP connect), and
/// whether the status was 200.
async fn connection(
    plan: &Plan,
    config: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<(HandshakeKind, Duration, bool)> {
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(plan.addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(plan.sni.clone())?;
    let mut s = tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name, tcp).await?;
    let took = started.elapsed();
    let kind = s.get_ref().1.handshake_kind().unwrap_or(HandshakeKind::Full);
    let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", plan.path, plan.sni);
    s.write_all(request.as_bytes()).await?;
    let mut answer = Vec::with_capacity(1024);
    // A server may close without close_notify after `Connection: close`: what was read
    // before counts.
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    Ok((kind, took, answer.starts_with(b"HTTP/1.1 200")))
}

/// `n` connections from the plan's clients in turn, `concurrency` at a time.
async fn round(plan: &Arc<Plan>, clients: &Arc<Vec<Arc<rustls::ClientConfig>>>, n: u64) -> Counts {
    let next = Arc::new(AtomicU64::new(0));
    let counts = Arc::new(Counts::default());
    let mut tasks = Vec::new();
    for _ in 0..plan.concurrency {
        let (plan, clients, next, counts) =
            (Arc::clone(plan), Arc::clone(clients), Arc::clone(&next), Arc::clone(&counts));
        tasks.push(tokio::spawn(async move {
            let mut pace = plan.rate.map(|r| {
                let mut t = tokio::time::interval(Duration::from_secs_f64(plan.concurrency as f64 / r.max(0.001)));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            loop {
                if let Some(t) = pace.as_mut() {
                    t.tick().await;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let config = &clients[(i % clients.len() as u64) as usize];
                match connection(&plan, config).await {
                    Ok((kind, took, ok)) => {
                        let c = if kind == HandshakeKind::Resumed { &counts.resumed } else { &counts.full };
                        c.fetch_add(1, Ordering::Relaxed);
                        let us = (took.as_micros() as u64).clamp(1, 60_000_000);
                        let _ = counts.handshake_us.lock().unwrap_or_else(|e| e.into_inner()).record(us);
                        if !ok {
                            counts.not_ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Arc::try_unwrap(counts).unwrap_or_default()
}

pub fn run(plan: Plan, json_out: Option<&Path>) -> anyhow::Result<()> {
    anyhow::ensure!(plan.addr.ip().is_loopback(), "handshakes are sent to loopback addresses only");
    anyhow::ensure!(plan.clients > 0 && plan.concurrency > 0, "--clients and --concurrency must be positive");
    let clients: Arc<Vec<_>> = Arc::new(
        (0..plan.clients).map(|_| crate::tls::client_config(!plan.no_resume, plan.tls12)).collect::<Result<_, _>>()?,
    );
    let plan = Arc::new(plan);
    let rt = crate::runtime()?;
    // Every client connects once first, so that each has a session to offer.
    let warm = rt.block_on(round(&plan, &clients, plan.clients as u64));
    let server_cpu = |pid: Option<u32>| pid.map(|p| cpu::process_cpu(Path::new(&format!("/proc/{p}")))).transpose();
    let before = server_cpu(plan.server_pid)?;
    let started = Instant::now();
    let counts = rt.block_on(round(&plan, &clients, plan.connections));
    let elapsed = started.elapsed();
    let after = server_cpu(plan.server_pid)?;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let done = get(&counts.resumed) + get(&counts.full);
    let mut out = json!({
        "clients": plan.clients,
        "connections": plan.connections,
        "concurrency": plan.concurrency,
        "tls": if plan.tls12 { "1.2" } else { "1.3" },
        "offered_resumption": !plan.no_resume,
        "warm_up_failed": get(&warm.failed),
        "resumed": get(&counts.resumed),
        "full": get(&counts.full),
        "failed": get(&counts.failed),
        "not_200": get(&counts.not_ok),
        "seconds": elapsed.as_secs_f64(),
        "connections_per_second": done as f64 / elapsed.as_secs_f64(),
    });
    {
        let h = counts.handshake_us.lock().unwrap_or_else(|e| e.into_inner());
        if !h.is_empty() {
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            out["handshake_ms"] =
                json!({"p50": ms(0.5), "p99": ms(0.99), "p99_9": ms(0.999), "max": h.max() as f64 / 1000.0});
        }
    }
    if let (Some(b), Some(a)) = (before, after) {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / done.max(1) as f64;
        out["server_user_us_per_connection"] = json!(us(a.user - b.user));
        out["server_kernel_us_per_connection"] = json!(us(a.kernel - b.kernel));
        out["server_cpu_us_per_connection"] = json!(us(a.user + a.kernel - b.user - b.kernel));
    }
    println!("{out}");
    if let Some(path) = json_out {
        std::fs::write(path, format!("{out:#}\n"))?;
    }
    Ok(())
}
