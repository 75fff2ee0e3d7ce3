//! The one place an upstream `HttpPeer` is built: proxying, active health checks and
//! background revalidation all connect through it, so TLS, SNI, CA and timeouts cannot
//! drift apart between them.

use std::net::SocketAddr;
use std::time::Duration;

use edgegate_config::RouteTimeouts;
use pingora_core::upstreams::peer::HttpPeer;

use crate::tls::PeerTls;

/// How long an idle upstream connection stays in the keep-alive pool.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A peer for `address`, over TLS when its group uses TLS.
pub fn http_peer(address: SocketAddr, tls: Option<&PeerTls>, timeouts: &RouteTimeouts) -> HttpPeer {
    let mut peer = match tls {
        None => HttpPeer::new(address, false, String::new()),
        Some(tls) => {
            let mut peer = HttpPeer::new(address, true, tls.sni.clone());
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
            peer.options.ca = tls.ca.clone();
            peer
        }
    };
    peer.options.connection_timeout = Some(timeouts.connect);
    peer.options.read_timeout = Some(timeouts.read);
    peer.options.write_timeout = Some(timeouts.write);
    peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
    // Hop-by-hop headers, and the ones `Connection` names, are removed here (before the
    // request step that adds edgegate's own headers); WebSocket upgrades are normalised.
    peer.options.http_upstream_request_policy = pingora_core::upstreams::peer::HttpUpstreamRequestPolicy::standard();
    // The pod's spelling of its response header names is not kept (well-known names go out
    // in their usual capitalisation, others in lower case, as over HTTP/2): no second map of
    // their spelling is built for every response.
    peer.options.preserve_h1_response_header_case = false;
    peer.group_key = worker_pool();
    peer
}

/// This thread's pool of pod (and Redis) connections: its own on a no-steal worker, 0 on a
/// work-stealing runtime's workers and outside any runtime (see [`pool_of_this_thread`]).
pub fn worker_pool() -> u64 {
    POOL.with(|pool| *pool)
}

/// The upstream keep-alive pool a thread's connections go to, by `HttpPeer::group_key`: a
/// pool per no-steal worker, one for all the workers of a work-stealing runtime. A no-steal
/// worker is a single-threaded runtime with an I/O driver of its own, where the
/// connections it opens are registered; one another worker took from a shared pool would
/// have every readiness event seen by the first worker's driver and handed over with a
/// cross-thread wake-up (and wait while that worker is busy). Each worker keeps the pod
/// connections it opened, as each nginx worker process does. A work-stealing runtime has
/// one driver, and its tasks move between threads: one pool.
fn pool_of_this_thread() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        _ => 0,
    }
}

thread_local! {
    /// This thread's [`pool_of_this_thread`], found on its first use.
    static POOL: u64 = pool_of_this_thread();
}
