//! Active health checks, off the request path: an HTTP GET to each endpoint of every
//! group that configures `health`, at its interval and with its timeout, on a thread
//! of its own. Results flip the endpoint's active state after the configured streaks
//! and merge with passive outlier ejection in `EndpointState::is_healthy`. The checker
//! follows config reloads: each round looks at the snapshot serving now.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edgegate_config::HealthCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::balancer::clock::now_ms;
use crate::state::GatewayState;

/// How often the checker looks for endpoints whose check is due.
const TICK: Duration = Duration::from_millis(50);

pub fn spawn(state: Arc<GatewayState>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("health-check".into()).spawn(move || runtime.block_on(run(state)))?;
    Ok(())
}

async fn run(state: Arc<GatewayState>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let snapshot = state.snapshot.load_full();
        let now = now_ms();
        for pool in &snapshot.pools {
            let Some(check) = &pool.config.health else { continue };
            for ep in &pool.endpoints {
                if ep.next_check_ms.load(Ordering::Relaxed) > now || ep.check_running.swap(true, Ordering::AcqRel) {
                    continue;
                }
                ep.next_check_ms.store(now + check.interval.as_millis() as u64, Ordering::Relaxed);
                let (ep, check, upstream) = (Arc::clone(ep), check.clone(), pool.name().to_owned());
                tokio::spawn(async move {
                    let ok = probe(ep.address, &check).await;
                    if let Some(down) = ep.record_check(ok, check.healthy_threshold, check.unhealthy_threshold) {
                        if down {
                            tracing::warn!(%upstream, endpoint = %ep.address, path = %check.path, "endpoint failed its health checks");
                        } else {
                            tracing::info!(%upstream, endpoint = %ep.address, "endpoint passed its health checks again");
                        }
                    }
                    ep.check_running.store(false, Ordering::Release);
                });
            }
        }
    }
}

/// One check: a 2xx or 3xx answer within the timeout is healthy.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> bool {
    matches!(tokio::time::timeout(check.timeout, status_of(addr, &check.path)).await, Ok(Some(200..=399)))
}

async fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: edgegate-health-check\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = [0u8; 64];
    let mut len = 0;
    // The status line is all we need: "HTTP/1.1 200 ".
    while len < 12 {
        let n = stream.read(&mut buf[len..]).await.ok()?;
        if n == 0 {
            return None;
        }
        len += n;
    }
    let line = std::str::from_utf8(&buf[..len]).ok()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}
