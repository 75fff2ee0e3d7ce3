//! Start-up and shutdown: binds the listeners, builds the Pingora server with the
//! proxy and admin services, and turns SIGTERM into a bounded drain.
//!
//! Listeners are bound here, before Pingora starts, and handed to Pingora through its
//! listen-fd table. That is how port 0 works (the OS picks the port and we can report
//! it), and it means "listeners bound" is true before readiness is reported.

use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use edgegate_config::Config;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{
    ExecutionPhase, ListenFds, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service as ListeningService;
use pingora_core::services::Service;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::signal::unix::{signal, SignalKind};

use crate::access::Guards;
use crate::connection::Guarded;
use crate::control::admin::AdminApp;
use crate::control::reload::{ConfigSource, Reloader};
use crate::control::status::ConfigStatus;
use crate::control::watch::ConfigWatch;
use crate::proxy::EdgeProxy;
use crate::state::{GatewayState, Listeners};

/// Command-line options of `edgegate run` that are not part of the config file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Write the bound addresses here as JSON once listening (useful with port 0).
    pub ports_file: Option<PathBuf>,
    /// Watch the config file's directory and reload on changes.
    pub watch: bool,
}

/// A socket bound and listening before Pingora starts.
struct Bound {
    name: String,
    address: SocketAddr,
    fd: RawFd,
}

fn bind(name: &str, address: SocketAddr) -> anyhow::Result<Bound> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into()).with_context(|| format!("cannot bind {name} to {address}"))?;
    socket.listen(65535)?;
    socket.set_nonblocking(true)?;
    let address = socket.local_addr()?.as_socket().context("bound address is not an IP socket")?;
    let listener: std::net::TcpListener = socket.into();
    // Ownership of the descriptor passes to Pingora, which adopts it by address.
    Ok(Bound { name: name.to_owned(), address, fd: listener.into_raw_fd() })
}

/// A Pingora service whose listeners were bound in advance: on start it registers the
/// descriptors in Pingora's listen-fd table, keyed by the address the service listens
/// on, then runs the service.
struct PreBound<S> {
    inner: S,
    sockets: Vec<(String, RawFd)>,
    on_start: Option<Arc<GatewayState>>,
}

#[async_trait]
impl<S: Service> Service for PreBound<S> {
    async fn start_service(&mut self, fds: Option<ListenFds>, shutdown: ShutdownWatch, listeners_per_fd: usize) {
        match &fds {
            Some(table) => {
                let mut table = table.lock();
                for (addr, fd) in &self.sockets {
                    table.add(addr.clone(), *fd);
                }
            }
            None => tracing::error!(service = self.inner.name(), "no listen-fd table: Pingora will bind again"),
        }
        if let Some(state) = &self.on_start {
            state.lifecycle.ready.store(true, Ordering::Release);
        }
        self.inner.start_service(fds, shutdown, listeners_per_fd).await;
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }
}

/// SIGTERM (and SIGQUIT: edgegate does not do fd-passing upgrades) drain gracefully;
/// SIGINT stops at once.
struct Signals {
    state: Arc<GatewayState>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) =
            (signal(SignalKind::terminate()), signal(SignalKind::quit()), signal(SignalKind::interrupt()))
        else {
            tracing::error!("cannot install signal handlers; the gateway can only be killed");
            return std::future::pending().await;
        };
        let kind = tokio::select! {
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = quit.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
        };
        if matches!(kind, ShutdownSignal::GracefulTerminate) {
            self.state.lifecycle.draining.store(true, Ordering::Release);
            tracing::info!("shutdown signal: draining in-flight requests");
        } else {
            tracing::info!("interrupt: stopping now");
        }
        kind
    }
}

/// What the gateway starts with: the validated config, where it came from, and (when
/// it came from a file) where to reload it from and keep last-known-good copies.
pub struct Startup {
    pub config: Config,
    pub guards: Guards,
    /// Certificates of each TLS listener, by listener name.
    pub tls: std::collections::HashMap<String, Arc<crate::tls::CertStore>>,
    /// TLS settings of upstream groups that use TLS.
    pub upstream_tls: std::collections::HashMap<String, Arc<crate::tls::PeerTls>>,
    pub status: ConfigStatus,
    pub source: Option<ConfigSource>,
    /// The config file's bytes, to be kept as the last-known-good copy once serving (none
    /// when starting from that copy).
    pub keep: Option<Vec<u8>>,
}

impl Startup {
    /// Start-up from a config file, falling back to the last-known-good copy.
    pub fn from_source(source: ConfigSource) -> anyhow::Result<Startup> {
        let (loaded, status) = crate::control::reload::load_initial(&source)?;
        let keep = (status.serving_from == crate::control::status::ServingFrom::File).then_some(loaded.bytes);
        Ok(Startup {
            config: loaded.config,
            guards: loaded.guards,
            tls: loaded.tls,
            upstream_tls: loaded.upstream_tls,
            status,
            source: Some(source),
            keep,
        })
    }
}

/// Runs the gateway until it is told to stop.
pub fn run(startup: Startup, options: RunOptions) -> anyhow::Result<()> {
    let Startup { config, guards, tls, upstream_tls, status, source, keep } = startup;
    let keep = keep.map(|bytes| (bytes, status.hash.clone()));
    let listeners: Vec<Bound> =
        config.listeners.iter().map(|l| bind(&l.name, l.address)).collect::<anyhow::Result<_>>()?;
    let admin = bind("admin", config.admin.address)?;
    for b in listeners.iter().chain(std::iter::once(&admin)) {
        tracing::info!(listener = %b.name, address = %b.address, "listening");
    }
    if let Some(path) = &options.ports_file {
        write_ports_file(path, &listeners, &admin)?;
    }

    let threads = config.runtime.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let grace = config.shutdown.grace_period;
    let conf = ServerConf {
        threads,
        work_stealing: config.runtime.work_stealing,
        // Upper bound only: the drain watcher below exits as soon as nothing is in flight.
        grace_period_seconds: Some(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)),
        graceful_shutdown_timeout_seconds: Some(1),
        // Idle pod connections kept per request thread (Pingora's default is 128): a node
        // with more requests than that in flight to its pods would otherwise close the
        // surplus as each request ends and connect again for the next. Idle ones still
        // close after a minute, and the newest are taken first, so a quiet node keeps
        // only what it uses.
        upstream_keepalive_pool_size: UPSTREAM_POOL_PER_THREAD,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    // Nothing reads how long socket reads waited (Pingora's per-stream pending-time
    // accounting): two clock reads saved per read that waits (vendored patch 25).
    pingora_core::protocols::l4::stream::set_track_read_pending_time(false);

    let behind: Vec<(SocketAddr, bool)> =
        listeners.iter().zip(&config.listeners).map(|(b, l)| (b.address, l.behind_tls)).collect();
    let resolvers: Vec<(String, Arc<crate::tls::SniResolver>)> = tls
        .into_iter()
        .map(|(name, store)| (name, Arc::new(crate::tls::SniResolver { store: arc_swap::ArcSwap::new(store) })))
        .collect();
    // Relative paths in the config resolve from its directory (the working directory for
    // the embedded demo config).
    let base = match &source {
        Some(s) => s.base_dir(),
        None => std::env::current_dir().context("reading the working directory")?,
    };
    ignore_file_size_signal();
    let state = GatewayState::new(
        config,
        guards,
        status,
        Listeners { bound: behind, tls: resolvers.clone() },
        upstream_tls,
        Some(&base),
        source.as_ref().map(|s| s.state_dir.as_path()),
    )?;
    let reloader = source.map(|s| Arc::new(Reloader::new(Arc::clone(&state), s)));
    crate::control::watch::claim_sighup()?;
    let watch = ConfigWatch {
        state: Arc::clone(&state),
        reloader: reloader.clone(),
        watch_files: options.watch,
        keep: std::sync::Mutex::new(keep),
    };
    add_background(&mut server, "config-watch", watch);
    add_background(&mut server, "health-check", crate::health::HealthChecker::new(Arc::clone(&state)));
    if let Some(sink) = &state.audit {
        if let Some(forward) = &state.snapshot.load().config.audit.forward {
            let forwarder = crate::audit::forward::Forwarder { sink: Arc::clone(sink), config: forward.clone() };
            add_background(&mut server, "audit-forward", forwarder);
        }
    }
    add_background(&mut server, "endpoint-discovery", crate::discovery::DiscoveryService { state: Arc::clone(&state) });
    if let Some(queue) = &state.spans {
        add_background(&mut server, "span-export", crate::otlp::Exporter { queue: Arc::clone(queue) });
    }
    if let Some(sync) = crate::ratelimit::GlobalRateSync::new(&state) {
        add_background(&mut server, "rate-limit-sync", sync);
    }
    if state.cache.l2.is_some() {
        add_background(&mut server, "cache-purges", crate::cache::PurgeFollower { state: Arc::clone(&state) });
    }

    let mut http = pingora_proxy::http_proxy(&server.configuration, EdgeProxy::new(Arc::clone(&state)));
    let mut options = HttpServerOptions::default();
    // Closing a connection now and then frees what it has accumulated, as nginx's
    // keepalive_requests does; Pingora's default is no limit.
    // Pingora counts reuses after the first request.
    let requests = state.snapshot.load().config.limits.keepalive_requests;
    options.keepalive_request_limit = Some(requests.saturating_sub(1));
    http.server_options = Some(options);
    // HTTP/2 clients: the same head budget as HTTP/1 (decoded header list), and a bound on
    // streams per connection.
    let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
    let limits = state.snapshot.load().config.limits;
    h2.max_header_list_size(u32::try_from(limits.header_bytes).unwrap_or(u32::MAX));
    h2.max_concurrent_streams(limits.h2_max_concurrent_streams);
    http.h2_options = Some(h2);
    let mut proxy = ListeningService::new("proxy".to_owned(), Guarded::new(http, Arc::clone(&state)));
    let snapshot = state.snapshot.load();
    let handshake_threads = snapshot.config.runtime.tls_handshake_threads;
    for (b, l) in listeners.iter().zip(&snapshot.config.listeners) {
        match (resolvers.iter().find(|(name, _)| *name == l.name), &l.tls) {
            (Some((_, resolver)), Some(tls)) => {
                let settings =
                    crate::tls::settings(&l.name, tls, &base, handshake_threads, Arc::clone(resolver), &state.metrics)
                        .map_err(|e| anyhow::anyhow!("TLS on listener {}: {e}", l.name))?;
                proxy.add_listener(ListenerConfig::tcp(b.address.to_string()).tls(settings).l4_buffer(CLIENT_BUFFERS));
            }
            _ => proxy.add_listener(ListenerConfig::tcp(b.address.to_string()).l4_buffer(CLIENT_BUFFERS)),
        }
    }
    // Not held while the server runs: reloads replace it.
    drop(snapshot);
    server.add_service(PreBound {
        inner: proxy,
        sockets: listeners.iter().map(|b| (b.address.to_string(), b.fd)).collect(),
        on_start: Some(Arc::clone(&state)),
    });

    let mut admin_service =
        ListeningService::new("admin".to_owned(), HttpServer::new_app(AdminApp::new(Arc::clone(&state), reloader)));
    admin_service.threads = Some(1);
    admin_service.add_tcp(&admin.address.to_string());
    server.add_service(PreBound {
        inner: admin_service,
        sockets: vec![(admin.address.to_string(), admin.fd)],
        on_start: None,
    });

    spawn_drain_watcher(&server, Arc::clone(&state), grace);
    server.run(RunArgs { shutdown_signal: Box::new(Signals { state: Arc::clone(&state) }) });
    if let Some(sink) = &state.audit {
        sink.flush_and_stop(Duration::from_secs(2));
    }
    crate::logging::flush();
    Ok(())
}

/// Idle pod connections pooled per request thread, at most.
const UPSTREAM_POOL_PER_THREAD: usize = 1024;

/// Client connections read straight into the HTTP layer's own buffer (4 KiB to start,
/// grown only for large heads) and the TLS layer's, instead of through a 64 KiB buffer
/// allocated per connection: that buffer made every idle keep-alive connection cost ~60 KiB
/// (docs/benchmarks.md, idle connections). Writes keep a one-segment buffer.
const CLIENT_BUFFERS: L4BufferSettings = L4BufferSettings { read: Some(0), write: None };

/// Background work runs as Pingora services on one thread each, and stops on the
/// server's shutdown signal.
fn add_background<S: BackgroundService + Send + Sync + 'static>(server: &mut Server, name: &str, task: S) {
    let mut service = background_service(name, task);
    service.threads = Some(1);
    server.add_service(service);
}

/// After SIGTERM Pingora stops accepting and then sleeps out the whole grace period.
/// This watcher ends the process sooner, in order: once no request has been in flight for
/// a few consecutive polls, and then every background service has stopped (they were
/// signalled at SIGTERM; later, the audit sink flushes here) — or when the grace period
/// is over.
fn spawn_drain_watcher(server: &Server, state: Arc<GatewayState>, grace: Duration) {
    let mut phases = server.watch_execution_phase();
    let spawned = std::thread::Builder::new().name("drain-watcher".into()).spawn(move || {
        loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::GracefulTerminate | ExecutionPhase::ShutdownGracePeriod) => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
        let deadline = Instant::now() + grace;
        let mut idle_polls = 0;
        loop {
            let inflight = state.metrics.inflight.get();
            let background = state.lifecycle.background.load(Ordering::Acquire);
            idle_polls = if inflight == 0 { idle_polls + 1 } else { 0 };
            // The last requests' audit records are committed before the process ends.
            let audit_done = match (&state.audit, idle_polls >= 3) {
                (Some(sink), true) => sink.flush_and_stop(Duration::ZERO) || sink.is_stopped(),
                (Some(_), false) => false,
                (None, _) => true,
            };
            if idle_polls >= 3 && background == 0 && audit_done {
                tracing::info!("drained: no request in flight, background work stopped, audit flushed, exiting");
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    inflight,
                    background,
                    grace_ms = grace.as_millis() as u64,
                    "grace period over, exiting with work pending"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        crate::logging::flush();
        std::process::exit(0);
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the drain watcher; shutdown waits out the full grace period");
    }
}

/// A write past a file-size limit (`RLIMIT_FSIZE`) fails with `EFBIG` instead of
/// killing the process: the audit log then reports itself failing and recovers when the
/// limit is lifted.
fn ignore_file_size_signal() {
    // A registered handler replaces the default action (terminate); the flag is unused.
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, flag) {
        tracing::warn!(error = %e, "cannot take over SIGXFSZ: exceeding a file-size limit kills the process");
    }
}

fn write_ports_file(path: &std::path::Path, listeners: &[Bound], admin: &Bound) -> anyhow::Result<()> {
    let listeners: serde_json::Map<String, serde_json::Value> =
        listeners.iter().map(|b| (b.name.clone(), serde_json::Value::String(b.address.to_string()))).collect();
    let doc = serde_json::json!({ "admin": admin.address.to_string(), "listeners": listeners });
    // Write then rename, so a reader never sees a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
