//! Active health checks, off the request path: an HTTP GET to each endpoint of every
//! group that configures `health`, at its interval and with its timeout. A Pingora
//! background service: it starts with the server and stops on its shutdown signal.
//! Probes connect through the same peer builder as traffic (`peer::http_peer`), so a group
//! with `tls:` is probed over TLS with its SNI and CA. Results flip the endpoint's active
//! state after the configured streaks and merge with passive outlier ejection in
//! `EndpointState::is_healthy`. Each round looks at the snapshot serving now.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use edgegate_config::{HealthCheck, RouteTimeouts};
use pingora_core::connectors::http::Connector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_http::RequestHeader;

use crate::balancer::clock::now_ms;
use crate::state::{BackgroundGuard, GatewayState};
use crate::tls::PeerTls;

/// How often the checker looks for endpoints whose check is due.
const TICK: Duration = Duration::from_millis(50);

pub struct HealthChecker {
    state: Arc<GatewayState>,
    connector: Arc<Connector>,
}

impl HealthChecker {
    pub fn new(state: Arc<GatewayState>) -> HealthChecker {
        HealthChecker { state, connector: Arc::new(Connector::new(None)) }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _running = BackgroundGuard::new(&self.state);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => self.round(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl HealthChecker {
    /// Starts the checks that are due.
    fn round(&self) {
        let snapshot = self.state.snapshot.load_full();
        let now = now_ms();
        for pool in &snapshot.pools {
            let Some(check) = &pool.config.health else { continue };
            let tls = snapshot.upstream_tls.get(pool.name()).cloned();
            for ep in &pool.endpoints {
                if ep.next_check_ms.load(Ordering::Relaxed) > now || ep.check_running.swap(true, Ordering::AcqRel) {
                    continue;
                }
                ep.next_check_ms.store(now + check.interval.as_millis() as u64, Ordering::Relaxed);
                let (ep, check, upstream) = (Arc::clone(ep), check.clone(), pool.name().to_owned());
                let (connector, tls) = (Arc::clone(&self.connector), tls.clone());
                tokio::spawn(async move {
                    let ok = probe(&connector, ep.address, tls.as_deref(), &check).await;
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

/// One check: a 2xx or 3xx answer within the timeout is healthy. A fresh connection each
/// time: a pooled one would hide a firewall or a dead listener.
pub async fn probe(connector: &Connector, addr: SocketAddr, tls: Option<&PeerTls>, check: &HealthCheck) -> bool {
    let timeouts = RouteTimeouts { connect: check.timeout, read: check.timeout, write: check.timeout };
    let peer = crate::peer::http_peer(addr, tls, &timeouts);
    let status = tokio::time::timeout(check.timeout, async {
        let (mut session, _) = connector.get_http_session(&peer).await.ok()?;
        let mut req = RequestHeader::build("GET", check.path.as_bytes(), None).ok()?;
        let host = tls.map_or_else(|| addr.to_string(), |t| t.sni.clone());
        req.insert_header(http::header::HOST, host).ok()?;
        req.insert_header(http::header::USER_AGENT, "edgegate-health-check").ok()?;
        req.insert_header(http::header::CONNECTION, "close").ok()?;
        session.write_request_header(Box::new(req)).await.ok()?;
        session.finish_request_body().await.ok()?;
        session.read_response_header().await.ok()?;
        session.response_header().map(|r| r.status.as_u16())
    })
    .await;
    matches!(status, Ok(Some(200..=399)))
}
