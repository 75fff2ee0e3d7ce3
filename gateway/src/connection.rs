//! Client connections before the HTTP layer sees them: a cap on open connections per
//! listener and per client address, a rate of new connections per client address, and a
//! total deadline for receiving each request head (slowloris).
//!
//! Pingora times each read of a request head separately (with the keep-alive timeout),
//! so a client sending one byte every few seconds holds its connection, a task and its
//! buffers for ever. [`Guarded`] wraps the proxy application: every accepted stream is
//! wrapped in a [`HeadDeadline`], which fails the read with a 408 once
//! `limits.head_timeout` has passed since the connection was accepted (first request) or
//! since the first byte of a later request, unless the proxy has said the head arrived.
//! The proxy says so from its first hook ([`head_received`]) and re-arms the deadline when
//! the request is done ([`request_done`]).

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::{
    Digest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use pingora_timeout::fast_timeout::KeptTimer;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use edgegate_filters::ratelimit::LimitOutcome;

use crate::state::GatewayState;

/// A request head is being awaited: the deadline applies.
const AWAITING_HEAD: u8 = 0;
/// The head arrived; reads are the body (or an upgraded tunnel): no head deadline.
const IN_REQUEST: u8 = 1;
/// HTTP/2, or an upgraded tunnel: no head deadline, no body rate.
const OFF: u8 = 2;
/// The request is done, and the next read starts the next head: the last head's state
/// (its deadline, whether bytes of it came) is dropped there. A request answered without
/// reading past its head — a cache hit, a refusal — leaves that state behind otherwise.
const REQUEST_DONE: u8 = 3;

/// Per-listener connection accounting, indexed like the config's listeners.
pub struct ListenerConnections {
    open: AtomicUsize,
    gauge: IntGauge,
    refused: IntCounter,
}

/// Open connections per client address, for `limits.max_connections_per_client`: without
/// it one address could hold every one of a listener's `max_connections` (idle connections
/// cost it almost nothing) and every other client would be refused.
///
/// Keyed by the IPv4 address, or an IPv6 address's /64 (what one subscriber or host is
/// given; a client with a /64 has 2^64 addresses). Sharded to keep accepts on different
/// threads apart; SipHash, as the keys are chosen by clients.
#[derive(Default)]
pub struct PerClient {
    shards: [std::sync::Mutex<std::collections::HashMap<u128, usize>>; 16],
}

impl PerClient {
    /// An IPv4 address with bit 32 set, so its low half is never zero; an IPv6 /64 as its
    /// top half, with a zero low half: the two never meet.
    fn key(ip: std::net::IpAddr) -> u128 {
        match edgegate_filters::addr::client_of(ip) {
            std::net::IpAddr::V4(a) => (1u128 << 32) | u128::from(u32::from(a)),
            std::net::IpAddr::V6(prefix) => u128::from(prefix),
        }
    }

    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, std::collections::HashMap<u128, usize>> {
        let i = ((key >> 64) as u64 ^ key as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60;
        self.shards[i as usize].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a connection from `ip` and returns its key for [`Self::leave`], or
    /// `None` when the address already has `limit` open.
    fn enter(&self, ip: std::net::IpAddr, limit: usize) -> Option<u128> {
        let key = Self::key(ip);
        let mut shard = self.shard(key);
        let open = shard.entry(key).or_insert(0);
        if *open >= limit {
            return None;
        }
        *open += 1;
        Some(key)
    }

    /// Gives back a place [`Self::enter`] took.
    fn leave(&self, key: u128) {
        let mut shard = self.shard(key);
        if let std::collections::hash_map::Entry::Occupied(mut e) = shard.entry(key) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Open connections from `ip` now.
    pub fn open(&self, ip: std::net::IpAddr) -> usize {
        let key = Self::key(ip);
        self.shard(key).get(&key).copied().unwrap_or(0)
    }
}

/// What [`Guarded`] counts connections in, shared with the places it hands out.
struct Admission {
    per_client: PerClient,
    per_client_refused: IntCounter,
    /// Closed above `limits.new_connections_per_client` (its limiter is the snapshot's).
    new_per_client_refused: IntCounter,
    listeners: Vec<ListenerConnections>,
}

/// A connection's places — in its listener's count and its client address's —, taken before
/// its handshake and given back when it ends.
struct Admitted {
    admission: Arc<Admission>,
    listener: Option<usize>,
    client: Option<u128>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(l) = self.listener.and_then(|i| self.admission.listeners.get(i)) {
            l.open.fetch_sub(1, Ordering::Relaxed);
            l.gauge.dec();
        }
        if let Some(key) = self.client {
            self.admission.per_client.leave(key);
        }
    }
}

/// The proxy application behind the connection caps and head deadline.
pub struct Guarded<A> {
    inner: Arc<A>,
    state: Arc<GatewayState>,
    admission: Arc<Admission>,
    head_timeouts: IntCounter,
    slow_bodies: IntCounter,
    /// TLS handshakes failed: [error, timeout].
    handshake_failures: [IntCounter; 2],
}

impl<A> Guarded<A> {
    pub fn new(inner: A, state: Arc<GatewayState>) -> Guarded<A> {
        let metrics = &state.metrics;
        let listeners = state
            .snapshot
            .load()
            .config
            .listeners
            .iter()
            .map(|l| ListenerConnections {
                open: AtomicUsize::new(0),
                gauge: metrics.client_connections.with_label_values(&[&l.name]),
                refused: metrics.connections_refused.with_label_values(&[&l.name]),
            })
            .collect();
        let _ = PINGORA_REPLIES.set(metrics.replies_vec());
        let head_timeouts = metrics.head_timeouts.clone();
        let slow_bodies = metrics.slow_bodies.clone();
        let admission = Arc::new(Admission {
            per_client: PerClient::default(),
            per_client_refused: metrics.connections_refused_per_client.clone(),
            new_per_client_refused: metrics.connections_rate_limited.clone(),
            listeners,
        });
        let handshake_failures = ["error", "timeout"].map(|r| metrics.tls_handshake_failures.with_label_values(&[r]));
        Guarded { inner: Arc::new(inner), state, admission, head_timeouts, slow_bodies, handshake_failures }
    }

    /// Mutable access to the wrapped application before the service starts.
    pub fn inner_mut(&mut self) -> Option<&mut A> {
        Arc::get_mut(&mut self.inner)
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    /// Counts the connection in its client address's `new_connections_per_client`, and in
    /// its listener's `max_connections` and its address's `max_connections_per_client`, as
    /// soon as it is accepted — before a TLS handshake, so that connections which never
    /// finish one are capped too, and a client opening connection after connection pays
    /// for the handshakes it is refused, not the node (Pingora patch 49).
    fn admit(
        &self,
        peer: Option<&pingora_core::protocols::l4::socket::SocketAddr>,
        local: Option<&pingora_core::protocols::l4::socket::SocketAddr>,
    ) -> Option<Box<dyn Any + Send>> {
        let snapshot = self.state.snapshot.load();
        let limits = &snapshot.config.limits;
        let mut admitted = Admitted { admission: Arc::clone(&self.admission), listener: None, client: None };
        if let Some(ip) = peer.and_then(|a| a.as_inet()).map(|a| a.ip()) {
            if !snapshot.config.trusted_proxies.iter().any(|c| c.contains(ip)) {
                if snapshot.new_connections.check_client(Some(ip)) != LimitOutcome::Allowed {
                    self.admission.new_per_client_refused.inc();
                    tracing::debug!(client = %ip, "client above limits.new_connections_per_client: connection closed");
                    return None;
                }
                let Some(key) = self.admission.per_client.enter(ip, limits.max_connections_per_client) else {
                    self.admission.per_client_refused.inc();
                    tracing::debug!(client = %ip, "client at limits.max_connections_per_client: connection closed");
                    return None;
                };
                admitted.client = Some(key);
            }
        }
        let listener = local.and_then(|a| a.as_inet()).and_then(|a| self.state.listeners.of(*a));
        if let Some((i, l)) = listener.and_then(|i| Some((i, self.admission.listeners.get(i)?))) {
            if l.open.fetch_add(1, Ordering::Relaxed) >= limits.max_connections {
                l.open.fetch_sub(1, Ordering::Relaxed);
                l.refused.inc();
                tracing::debug!("listener at limits.max_connections: connection closed");
                return None;
            }
            l.gauge.inc();
            admitted.listener = Some(i);
        }
        Some(Box::new(admitted))
    }

    /// A TLS handshake must be done within `limits.head_timeout`, as a request head must.
    fn handshake_timeout(&self) -> Duration {
        self.state.snapshot.load().config.limits.head_timeout
    }

    /// Counted in `edgegate_tls_handshake_failures_total{reason}` (Pingora patch 97).
    fn handshake_failed(&self, timed_out: bool) {
        self.handshake_failures[usize::from(timed_out)].inc();
    }

    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let limits = self.state.snapshot.load().config.limits;
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let mut wrapped = HeadDeadline::new(stream, limits.head_timeout, h2, self.head_timeouts.clone());
        wrapped.min_body_rate = limits.min_body_rate;
        wrapped.slow_bodies = Some(self.slow_bodies.clone());
        if h2 {
            // Pingora's own connection handling: the HTTP/2 handshake and one task per stream.
            ServerApp::process_new(&self.inner, Box::new(wrapped), shutdown).await;
        } else {
            self.serve_http1(wrapped, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.inner).await
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> Guarded<A> {
    /// One HTTP/1 connection, request after request, as Pingora's own loop does — except
    /// that between two requests the connection waits in [`HeadDeadline::wait_for_request`],
    /// holding only the stream: the proxy's per-request state (Pingora's request future,
    /// its header buffer) exists only while a request is being served. An idle kept-alive
    /// client then costs its socket and this small future, not a whole request's state.
    async fn serve_http1(&self, stream: HeadDeadline, shutdown: &ShutdownWatch) {
        let mut session = http1_session(Box::new(stream));
        // As Pingora does for a new connection: keep-alive unless shutting down, and the
        // configured number of reuses.
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        session.set_keepalive_reuses_remaining(self.inner.server_options().and_then(|o| o.keepalive_request_limit));
        // One wait for the shutdown signal for the connection's whole life: registered with
        // the signal once, not once per request (and taken off again when the request came).
        let mut watch = shutdown.clone();
        let stopping = watch.changed();
        tokio::pin!(stopping);
        let mut stop_armed = false;
        loop {
            let Some(reused) = self.inner.process_new_http_boxed(session, shutdown).await else { return };
            let (stream, settings) = reused.consume();
            let Ok(mut stream) = stream.into_any().downcast::<HeadDeadline>() else { return };
            let idle = self.state.snapshot.load().config.limits.keepalive_timeout;
            if settings.as_ref().is_some_and(|s| s.has_pipelined_prefix()) {
                // HTTP/1.1 pipelining: the next request was read with this one (Pingora
                // hands its bytes on). Nothing to wait for; its head's deadline runs from now.
                if *shutdown.borrow() {
                    return;
                }
                stream.head_begun();
            } else if !stream.wait_for_request(idle, shutdown, stopping.as_mut(), &mut stop_armed).await {
                return;
            }
            session = http1_session(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }
}

/// An HTTP/1 session on `stream` that refuses a request target with a raw space or another
/// character not allowed in it (400), where Pingora would percent-encode it and go on: a
/// target the client did not send is not forwarded (nginx and HAProxy refuse it too).
/// Its own refusals are JSON with a request id, like edgegate's. Made on the heap, where
/// the proxy keeps it for the request.
fn http1_session(stream: Stream) -> Box<ServerSession> {
    let mut session = Box::new(ServerSession::new_http1(stream));
    if let ServerSession::H1(h1) = &mut *session {
        h1.set_escape_illegal_request_line(false);
        h1.set_error_responder(pingora_error_reply);
        // Field names reach the pod in lower case (as over HTTP/2), without a second map
        // of their original spelling built for every request.
        h1.set_preserve_header_case(false);
        // Requests a client sends before it has the answers to those before are served in
        // order (RFC 9112 §9.3.2), one at a time; kept across the connection's requests.
        h1.set_pipelining_enabled(true);
    }
    session
}

/// Counts the replies [`pingora_error_reply`] writes (`edgegate_gateway_replies_total`);
/// set once, when the proxy service is built.
static PINGORA_REPLIES: std::sync::OnceLock<prometheus::IntCounterVec> = std::sync::OnceLock::new();

/// The answer to a request Pingora refuses before any of edgegate's steps sees it (a head
/// it cannot parse: 400): the same JSON body and request id as every other reply. `None`
/// (Pingora's own bodiless answer) only for a status no response can carry.
fn pingora_error_reply(status: u16) -> Option<(pingora_http::ResponseHeader, bytes::Bytes)> {
    let reason = match status {
        400 => "bad_request",
        // `CONNECT`, which Pingora does not proxy.
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        431 => "request_header_fields_too_large",
        502 => "upstream_unavailable",
        504 => "upstream_timeout",
        500 => "internal_error",
        _ => "error",
    };
    let id = edgegate_filters::RequestId::generate();
    let reply = edgegate_filters::Reply::new(status, reason);
    let body = reply.body(&id);
    let id_header = http::HeaderValue::from_str(id.as_str()).ok()?;
    let head = crate::proxy::reply::head(&reply, id_header, body.len()).ok()?;
    if let Some(replies) = PINGORA_REPLIES.get() {
        crate::metrics::count_reply(replies, status, reason);
    }
    Some((head, bytes::Bytes::from(body)))
}

/// Marks the head of the current request received: its deadline no longer applies.
pub fn head_received(stream: Option<&Stream>) {
    if let Some(d) = stream.and_then(|s| s.as_any().downcast_ref::<HeadDeadline>()) {
        let _ = d.phase.compare_exchange(AWAITING_HEAD, IN_REQUEST, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// `X-Forwarded-For` for a request from `peer` that is not a trusted proxy: its address
/// alone. A connection's requests share one value, formatted for the first of them (a
/// kept-alive client's later requests clone it: a reference count, no formatting, no
/// allocation); a stream that is not a [`HeadDeadline`] (HTTP/2) formats it each time.
pub fn peer_forwarded_for(stream: Option<&Stream>, peer: std::net::IpAddr) -> pingora_error::Result<http::HeaderValue> {
    let kept = stream.and_then(|s| s.as_any().downcast_ref::<HeadDeadline>()).map(|d| &d.forwarded_for);
    if let Some((_, value)) = kept.and_then(|k| k.get()).filter(|(ip, _)| *ip == peer) {
        return Ok(value.clone());
    }
    let value = crate::forwarded::forwarded_for(None, peer)?;
    if let Some(kept) = kept {
        // Kept only by the connection's first request (a set value is never replaced).
        let _ = kept.set((peer, value.clone()));
    }
    Ok(value)
}

/// Marks the connection an upgraded tunnel (a WebSocket after its 101): its bytes are the
/// application's, with no head deadline or body rate.
pub fn tunnel(stream: Option<&Stream>) {
    if let Some(d) = stream.and_then(|s| s.as_any().downcast_ref::<HeadDeadline>()) {
        d.phase.store(OFF, Ordering::Relaxed);
    }
}

/// Marks the request done: the next head's deadline starts at its first byte.
pub fn request_done(stream: Option<&Stream>) {
    if let Some(d) = stream.and_then(|s| s.as_any().downcast_ref::<HeadDeadline>()) {
        let _ = d.phase.compare_exchange(IN_REQUEST, REQUEST_DONE, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// A client stream whose request heads must arrive within a deadline.
///
/// The clock is read, and a timer registered, only when a read of a head has to wait: a
/// kept-alive client whose head arrives in one read costs no clock read and no timer. A
/// later head's deadline therefore runs from the first wait after its first bytes — the
/// same instant give or take the microseconds it takes to look at those bytes, since a
/// read of a head that is not whole yet finds nothing more and waits.
pub struct HeadDeadline {
    inner: Stream,
    phase: AtomicU8,
    timeout: Duration,
    /// When the head being read must be complete.
    deadline: Option<Instant>,
    /// Wakes a read that waits past the deadline; created on the first such wait.
    timer: Option<Pin<Box<Sleep>>>,
    /// The keep-alive wait's timer ([`HeadDeadline::wait_for_request`]).
    idle_timer: KeptTimer,
    /// Bytes of the current head arrived (a 408 is owed, not a silent close).
    started: bool,
    timeouts: IntCounter,
    /// `limits.min_body_rate` in bytes per second (0: off), and the current request's
    /// body so far: when its first byte came and how many.
    pub min_body_rate: u64,
    body_since: Option<Instant>,
    body_bytes: u64,
    pub slow_bodies: Option<IntCounter>,
    /// The first bytes of the next request, read while the connection waited idle; served
    /// to the HTTP layer before the socket is read again. Empty (no allocation) otherwise.
    stash: Vec<u8>,
    stash_read: usize,
    /// The digest the last HTTP session on this connection built (peer and local address,
    /// timing, TLS), for the next one: a session takes it instead of building its own.
    /// Dropped when the proxy or socket digest it copies is replaced.
    session_digest: Option<Box<Digest>>,
    /// The `X-Forwarded-For` value of a request from this connection's peer when the peer
    /// is not a trusted proxy — its address alone —, formatted for the first such request
    /// and shared by the rest ([`peer_forwarded_for`]).
    forwarded_for: std::sync::OnceLock<(std::net::IpAddr, http::HeaderValue)>,
}

impl std::fmt::Debug for HeadDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadDeadline").field("inner", &self.inner).field("timeout", &self.timeout).finish()
    }
}

impl HeadDeadline {
    /// The first head's deadline runs from now (the accept): a connection that never
    /// sends anything is closed at the deadline too.
    pub fn new(inner: Stream, timeout: Duration, h2: bool, timeouts: IntCounter) -> HeadDeadline {
        HeadDeadline {
            inner,
            phase: AtomicU8::new(if h2 { OFF } else { AWAITING_HEAD }),
            timeout,
            deadline: (!h2).then(|| Instant::now() + timeout),
            timer: None,
            idle_timer: KeptTimer::for_one_task(),
            started: false,
            timeouts,
            min_body_rate: 0,
            body_since: None,
            body_bytes: 0,
            slow_bodies: None,
            stash: Vec::new(),
            stash_read: 0,
            session_digest: None,
            forwarded_for: std::sync::OnceLock::new(),
        }
    }

    /// Waits, between two requests, for the first bytes of the next one: true when they
    /// arrived (kept for the next read), false when the client closed, failed, stayed
    /// silent past `idle` (`limits.keepalive_timeout`) or the gateway is shutting down.
    /// The read goes into a buffer on the stack of each poll, so a waiting connection
    /// holds no read buffer.
    ///
    /// `stopping` completes when the shutdown signal changes; the caller keeps it for the
    /// connection's life and `stop_armed` with it. It is polled once, by the first wait that
    /// has to wait: that registers the connection's task with the signal, which wakes it
    /// when shutdown begins, and the registration stays until then — a later wait reads the
    /// signal's value instead of registering again (each registration takes the signal's
    /// lock).
    ///
    /// The idle timeout's timer is Pingora's coarse one (what its own keep-alive wait uses),
    /// kept from one wait to the next ([`pingora_timeout::fast_timeout::KeptTimer`], for one
    /// task: the connection's waits are all its own task's): a kept-alive client whose next
    /// request comes within the timeout costs a clock read, not a timer registered and
    /// cancelled per request. The timeout runs from this wait's start.
    pub async fn wait_for_request<S: Future>(
        &mut self,
        idle: Duration,
        shutdown: &ShutdownWatch,
        mut stopping: Pin<&mut S>,
        stop_armed: &mut bool,
    ) -> bool {
        if *shutdown.borrow() {
            return false;
        }
        let mut timer = std::mem::replace(&mut self.idle_timer, KeptTimer::for_one_task());
        let wait = std::future::poll_fn(|cx| {
            // Not zeroed: callers of `poll_read` only ever see the bytes read into it.
            let mut space = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut buf = ReadBuf::uninit(&mut space);
            match Pin::new(&mut *self).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.stash = buf.filled().to_vec();
                    self.stash_read = 0;
                    return Poll::Ready(true);
                }
                Poll::Ready(_) => return Poll::Ready(false),
                Poll::Pending => {}
            }
            if !*stop_armed {
                if stopping.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                *stop_armed = true;
            } else if *shutdown.borrow() {
                return Poll::Ready(false);
            }
            Poll::Pending
        });
        let arrived = timer.timeout(idle, wait).await.unwrap_or(false);
        self.idle_timer = timer;
        arrived
    }

    /// Counts a body read; an error once the body's average rate since its first byte has
    /// stayed under `min_body_rate` for longer than `limits.head_timeout` (the grace a
    /// head gets, given to a body too). A slow-body attack holds a request, its buffers and
    /// an upstream connection open for as long as it trickles.
    fn body_read(&mut self, n: usize) -> Option<std::io::Error> {
        let now = Instant::now();
        let since = *self.body_since.get_or_insert(now);
        self.body_bytes += n as u64;
        let elapsed = now.saturating_duration_since(since);
        if elapsed > self.timeout && self.body_bytes < self.min_body_rate.saturating_mul(elapsed.as_secs()) {
            if let Some(c) = &self.slow_bodies {
                c.inc();
            }
            return Some(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body slower than limits.min_body_rate",
            ));
        }
        None
    }

    /// The next head began with bytes read before it was asked for (a pipelined request):
    /// its deadline runs from now.
    pub fn head_begun(&mut self) {
        self.forget_head();
        self.phase.store(AWAITING_HEAD, Ordering::Relaxed);
        self.started = true;
        self.deadline = Some(Instant::now() + self.timeout);
    }

    /// Drops the last head's state: its deadline, whether bytes of it came, and its timer (an
    /// idle kept-alive connection holds none).
    fn forget_head(&mut self) {
        self.deadline = None;
        self.started = false;
        self.timer = None;
    }

    /// The deadline passed: answer 408 if part of a head arrived (best effort, the
    /// socket buffer takes it), and fail the read so the HTTP layer closes.
    fn expire(&mut self, cx: &mut Context<'_>) -> std::io::Error {
        self.timeouts.inc();
        self.deadline = None;
        if self.started {
            let reply = edgegate_filters::Reply::new(408, "request_head_timeout");
            let id = edgegate_filters::RequestId::generate();
            let body = reply.body(&id);
            let mut out = format!(
                "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {}\r\nconnection: close\r\n\r\n",
                body.len(),
                id.as_str()
            )
            .into_bytes();
            out.extend_from_slice(&body);
            let _ = Pin::new(&mut self.inner).poll_write(cx, &out);
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        std::io::Error::new(std::io::ErrorKind::TimedOut, "request head not received within limits.head_timeout")
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.stash_read < this.stash.len() {
            // Counted as head bytes when they were read.
            let n = buf.remaining().min(this.stash.len() - this.stash_read);
            buf.put_slice(&this.stash[this.stash_read..this.stash_read + n]);
            this.stash_read += n;
            if this.stash_read == this.stash.len() {
                this.stash = Vec::new();
                this.stash_read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let mut phase = this.phase.load(Ordering::Relaxed);
        if phase == REQUEST_DONE {
            // The next head: nothing of it has arrived, and the idle wait before it is the
            // keep-alive timeout's, not this deadline's.
            this.forget_head();
            phase = AWAITING_HEAD;
            this.phase.store(AWAITING_HEAD, Ordering::Relaxed);
        }
        if phase != AWAITING_HEAD {
            this.forget_head();
            let before = buf.filled().len();
            let read = Pin::new(&mut this.inner).poll_read(cx, buf);
            let n = buf.filled().len() - before;
            if phase == IN_REQUEST && this.min_body_rate > 0 && n > 0 && matches!(read, Poll::Ready(Ok(()))) {
                if let Some(e) = this.body_read(n) {
                    return Poll::Ready(Err(e));
                }
            }
            return read;
        }
        this.body_since = None;
        this.body_bytes = 0;
        if this.deadline.is_some_and(|d| Instant::now() >= d) {
            return Poll::Ready(Err(this.expire(cx)));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &read {
            Poll::Ready(Ok(())) if buf.filled().len() > before && !this.started => {
                this.started = true;
            }
            Poll::Pending => {
                if this.started && this.deadline.is_none() {
                    // A later request on a kept-alive connection, its head not whole yet:
                    // its deadline starts now.
                    this.deadline = Some(Instant::now() + this.timeout);
                }
                if let Some(deadline) = this.deadline {
                    let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(this.expire(cx)));
                    }
                }
            }
            Poll::Ready(_) => {}
        }
        read
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }

    fn take_session_digest(&mut self) -> Option<Box<Digest>> {
        self.session_digest.take()
    }

    fn keep_session_digest(&mut self, digest: Box<Digest>) {
        self.session_digest = Some(digest);
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.session_digest = None;
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.session_digest = None;
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

// `IO` is implemented for every type with the traits above; `as_any` makes the proxy's
// hooks able to find this wrapper behind the `Stream` box.
const _: fn() = || {
    fn is_io<T: pingora_core::protocols::IO + Any>() {}
    is_io::<HeadDeadline>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> std::net::IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn a_client_gets_its_limit_and_each_closed_connection_gives_a_place_back() {
        let table = PerClient::default();
        let a = ip("203.0.113.7");
        let mut held: Vec<_> = (0..3).map(|_| table.enter(a, 3).expect("within the limit")).collect();
        assert!(table.enter(a, 3).is_none(), "a fourth connection from the same address");
        // Another address is not affected.
        let other = table.enter(ip("203.0.113.8"), 3).expect("another client");
        table.leave(held.pop().expect("held"));
        assert_eq!(table.open(a), 2);
        let again = table.enter(a, 3).expect("a place was given back");
        table.leave(again);
        table.leave(other);
        assert_eq!(table.open(a), 2);
        held.into_iter().for_each(|key| table.leave(key));
        assert_eq!(table.open(a), 0);
        assert!(
            table.shards.iter().all(|s| s.lock().expect("shard").is_empty()),
            "an address with none open is forgotten"
        );
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_and_a_mapped_ipv4_as_ipv4() {
        let table = PerClient::default();
        // Two addresses of one /64 share a count; the next /64 does not.
        table.enter(ip("2001:db8:1:2::1"), 2).expect("first");
        table.enter(ip("2001:db8:1:2:ffff::9"), 2).expect("second");
        assert!(table.enter(ip("2001:db8:1:2:abcd::1"), 2).is_none(), "a third from the same /64");
        table.enter(ip("2001:db8:1:3::1"), 2).expect("another /64");
        // ::ffff:192.0.2.1 is 192.0.2.1; and no IPv4 address shares a key with an IPv6 /64.
        table.enter(ip("192.0.2.1"), 1).expect("v4");
        assert!(table.enter(ip("::ffff:192.0.2.1"), 1).is_none(), "the mapped form is the same client");
        // IPv6 loopback's /64 and the lowest IPv4 addresses are told apart.
        table.enter(ip("::1"), 1).expect("::1");
        table.enter(ip("0.0.0.0"), 1).expect("0.0.0.0");
        table.enter(ip("0.0.0.1"), 1).expect("0.0.0.1");
        assert_eq!(table.open(ip("::2")), 1, "::2 shares ::1's /64");
    }
}
