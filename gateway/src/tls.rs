//! HTTPS on public listeners (rustls through Pingora): certificates chosen by SNI from
//! the names in each certificate (exact, then wildcard, then the listener's default),
//! TLS 1.2 and 1.3 only (Pingora's rustls acceptor offers no older version), ALPN `h2`
//! and `http/1.1`. Certificates are loaded and checked
//! (parse, key matches, not expired) when a config snapshot is built and swapped into
//! the listener's resolver on reload, so a new certificate applies without a restart
//! and a bad one is rejected while the old keeps serving.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use edgegate_config::{files, Config, Tls};
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::TlsAccept;
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{CertificateDer, ClientHello, CryptoProvider, PrivateKeyDer, ResolvesServerCert, SignatureScheme};
use rustls_pki_types::pem::PemObject;

/// Certificates closer than this to expiry are reported at load time.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// One loaded certificate.
#[derive(Debug)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// DNS names from the certificate's subject alternative names (lower-case;
    /// wildcards as `*.example.gov.cn`).
    pub names: Vec<String>,
    pub not_after: SystemTime,
    pub file: String,
}

/// The certificates of one listener. A name may have several, in the order listed (an
/// ECDSA one, then an RSA one for clients that cannot check ECDSA signatures).
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Vec<usize>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Vec<usize>>,
    pub certs: Vec<Loaded>,
}

impl CertStore {
    /// Loads every pair of a listener's `tls` block; paths relative to `base`.
    pub fn load(tls: &Tls, base: &Path, field: &str) -> Result<CertStore, Vec<String>> {
        // Normally installed at start already; a process that loads certificates first (a
        // test, `edgegate check`) installs it here. Keys load through it either way.
        crate::tls_keys::install();
        let provider = crate::tls_keys::provider();
        let mut errors = Vec::new();
        let mut certs = Vec::new();
        for (i, pair) in tls.certificates.iter().enumerate() {
            let (cert, key) = (base.join(&pair.cert), base.join(&pair.key));
            match load_pair(&cert, &key, provider) {
                Ok(loaded) => certs.push(loaded),
                Err(e) => errors.push(format!("{field}.certificates[{i}]: {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut store = CertStore { exact: HashMap::new(), wildcard: HashMap::new(), certs };
        for (i, c) in store.certs.iter().enumerate() {
            for name in &c.names {
                let of_name = match name.strip_prefix("*.") {
                    Some(suffix) => store.wildcard.entry(suffix.to_owned()).or_default(),
                    None => store.exact.entry(name.clone()).or_default(),
                };
                if !of_name.contains(&i) {
                    of_name.push(i);
                }
            }
        }
        Ok(store)
    }

    /// Exact name, then the wildcard one label up, then the default (first) certificate;
    /// of a name's certificates, the first whose key signs with a scheme the client
    /// offers (`schemes`), else the first. (A client that can check none of them fails
    /// its handshake, as it would with the one certificate.)
    pub fn pick(&self, server_name: Option<&str>, schemes: &[SignatureScheme]) -> Option<&Arc<CertifiedKey>> {
        let by_name = server_name.map(str::to_ascii_lowercase).and_then(|name| {
            self.exact.get(&name).or_else(|| name.split_once('.').and_then(|(_, rest)| self.wildcard.get(rest)))
        });
        let usable = |c: &&Loaded| c.key.key.choose_scheme(schemes).is_some();
        let chosen = match by_name {
            Some(indices) => {
                let mut of_name = indices.iter().filter_map(|&i| self.certs.get(i));
                of_name.clone().find(usable).or_else(|| of_name.next())
            }
            // No name, or one no certificate has: the first certificate the client can use.
            None => self.certs.iter().find(usable).or_else(|| self.certs.first()),
        };
        chosen.map(|c| &c.key)
    }
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Loaded, String> {
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    // Read here, bounded and only if regular files (a FIFO would hold the reload forever),
    // naming the file that cannot be read and why.
    let read = |what: &str, path: &Path| {
        files::read(path, files::KEY_FILE).map_err(|e| format!("{what}: cannot read {}: {e}", path.display()))
    };
    let (cert_pem, key_pem) = (read("cert", cert)?, read("key", key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot load {cert_s}: {e}"))?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!("no private key in {key_s}"),
        e => format!("cannot load {key_s}: {e}"),
    })?;
    let first = chain.first().ok_or_else(|| format!("no certificate in {cert_s}"))?.clone();
    let key = CertifiedKey::from_der(chain, private, provider)
        .map_err(|e| format!("{key_s} does not match {cert_s} or is unusable: {e}"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(first.as_ref())
        .map_err(|e| format!("{cert_s}: not an X.509 certificate: {e}"))?;
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(parsed.validity().not_after.timestamp().max(0) as u64);
    if not_after <= SystemTime::now() {
        return Err(format!("{cert_s} expired at {}", humantime::format_rfc3339(not_after)));
    }
    let mut names: Vec<String> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        // Old certificates may carry the name only in the subject's common name.
        names
            .extend(parsed.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase));
    }
    if let Ok(left) = not_after.duration_since(SystemTime::now()) {
        if left < EXPIRY_WARNING {
            tracing::warn!(certificate = %cert_s, days_left = left.as_secs() / 86_400, "certificate expires soon");
        }
    }
    Ok(Loaded { key: Arc::new(key), names, not_after, file: cert_s })
}

/// Loads the certificates of every TLS listener, keyed by listener name.
pub fn load_all(config: &Config, base: &Path) -> Result<HashMap<String, Arc<CertStore>>, Vec<String>> {
    let mut stores = HashMap::new();
    let mut errors = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        match CertStore::load(tls, base, &format!("listeners[{i}].tls")) {
            Ok(store) => {
                stores.insert(l.name.clone(), Arc::new(store));
            }
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(stores)
    } else {
        Err(errors)
    }
}

/// The SNI resolver of one listener; its store is replaced on reload.
#[derive(Debug)]
pub struct SniResolver {
    pub store: ArcSwap<CertStore>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.load().pick(hello.server_name(), hello.signature_schemes()).cloned()
    }
}

/// Counts completed handshakes by negotiated version, and those that resumed a session.
/// Failed handshakes end inside Pingora before any hook runs; Pingora logs them.
struct HandshakeCounter {
    /// TLS 1.3, TLS 1.2, other: all, then resumed.
    counts: [(prometheus::IntCounter, prometheus::IntCounter); 3],
}

#[async_trait::async_trait]
impl TlsAccept for HandshakeCounter {
    async fn handshake_complete_callback(
        &self,
        tls: &pingora_core::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        // rustls names versions like its enum ("TLSv1_3"); accept either spelling.
        let (all, resumed) = match tls.version().unwrap_or_default() {
            "TLSv1_3" | "TLSv1.3" => &self.counts[0],
            "TLSv1_2" | "TLSv1.2" => &self.counts[1],
            _ => &self.counts[2],
        };
        all.inc();
        if tls.resumed() {
            resumed.inc();
        }
        None
    }
}

/// Pingora TLS settings for a listener: TLS 1.2 and 1.3 (Pingora's rustls default), no
/// client certificates, certificates from `resolver`, ALPN h2 then http/1.1, and session
/// resumption as `tls` sets it (no early data: 0-RTT requests could be replayed), and the
/// handshakes on `handshake_threads` threads of their own (`runtime.tls_handshake_threads`;
/// 0: on the workers).
pub fn settings(
    listener: &str,
    tls: &Tls,
    base: &Path,
    handshake_threads: usize,
    resolver: Arc<SniResolver>,
    metrics: &crate::metrics::Metrics,
) -> pingora_error::Result<TlsSettings> {
    pingora_rustls::install_default_crypto_provider();
    let count = |version| {
        (
            metrics.tls_handshakes.with_label_values(&[listener, version]),
            metrics.tls_resumed.with_label_values(&[listener, version]),
        )
    };
    let counter = HandshakeCounter { counts: [count("TLSv1.3"), count("TLSv1.2"), count("other")] };
    let mut settings = TlsSettings::with_callbacks(Box::new(counter))?;
    settings.set_cert_resolver(resolver);
    settings.enable_h2();
    let resumption = resumption(listener, tls, base).map_err(|e| {
        pingora_error::Error::explain(pingora_error::ErrorType::InternalError, format!("session tickets: {e}"))
    })?;
    settings.set_server_config_hook(Box::new(move |config| {
        config.session_storage = resumption.storage;
        config.ticketer = resumption.ticketer;
    }));
    if handshake_threads > 0 {
        // Pingora's offload pool, one shard, each thread at the lowest nice value: the
        // handshakes take the workers' idle time, and a worker's requests never wait behind
        // one.
        settings.set_offload_threadpool(1, handshake_threads);
        settings.set_offload_thread_start(Arc::new(|| {
            if !crate::process::lowest_nice() {
                tracing::warn!("cannot lower the TLS handshake thread's priority: it runs at normal priority");
            }
        }));
    }
    Ok(settings)
}

/// How a listener's clients resume sessions.
struct Resumption {
    storage: Arc<dyn rustls::server::StoresServerSessions>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
}

/// rustls' defaults are a cache of 256 sessions and no tickets: a node that sees more
/// than ~128 clients between two connections of one of them resumes none, and each new
/// connection pays for a full handshake (the certificate's signature among it).
/// Tickets resume any number of clients for no memory; the cache serves clients that
/// resume by session id (TLS 1.2 without tickets, and TLS 1.3 when tickets are off).
fn resumption(listener: &str, tls: &Tls, base: &Path) -> Result<Resumption, rustls::Error> {
    let storage: Arc<dyn rustls::server::StoresServerSessions> = if tls.session_cache == 0 {
        Arc::new(rustls::server::NoServerSessionStorage {})
    } else {
        rustls::server::ServerSessionMemoryCache::new(tls.session_cache)
    };
    let fleet = tls.session_ticket_keys.as_ref().and_then(|path| {
        // Read at start only. A file that cannot be used leaves the listener with keys of
        // its own: clients resume on this node only, and it serves on.
        crate::tickets::FleetTickets::load(&base.join(path))
            .inspect_err(|e| {
                tracing::error!(listener, error = %e, "tls.session_ticket_keys cannot be used: tickets under this process's own keys instead")
            })
            .ok()
    });
    let ticketer: Arc<dyn rustls::server::ProducesTickets> = match (tls.session_tickets, fleet) {
        // The fleet's secrets: a ticket resumes on every node that has them (`tickets.rs`).
        (true, Some(fleet)) => Arc::new(fleet),
        // Keys made here from the system's randomness, a new one every 6 h and the one
        // before still accepted: a ticket resumes for at most 12 h, and never after a
        // restart.
        (true, None) => rustls::crypto::ring::Ticketer::new()?,
        (false, _) => Arc::new(NoTickets),
    };
    Ok(Resumption { storage, ticketer })
}

/// The ticketer of a listener whose tickets are off (rustls' own is not public).
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

static CERT_SPECS: [crate::metrics::family::Spec; 1] = [crate::metrics::family::Spec {
    name: "edgegate_tls_certificate_expiry_timestamp_seconds",
    help: "When the certificate expires (Unix time)",
    kind: prometheus::proto::MetricType::GAUGE,
    labels: &["listener", "certificate", "name"],
}];

/// Certificate expiry per listener and certificate file, read from the listeners'
/// certificate stores at scrape time (a reload that swaps a certificate shows at once).
pub fn certificate_collector(
    state: std::sync::Weak<crate::state::GatewayState>,
) -> crate::metrics::family::ScrapeCollector {
    crate::metrics::family::ScrapeCollector::new(&CERT_SPECS, move || {
        let Some(state) = state.upgrade() else { return Vec::new() };
        let mut family = CERT_SPECS[0].family();
        for (listener, r) in &state.listeners.tls {
            for c in &r.store.load().certs {
                let at = c.not_after.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let name = c.names.first().map_or("", String::as_str);
                family.push(&[listener, &c.file, name], at as f64);
            }
        }
        vec![family.finish()]
    })
}

/// How to connect to the endpoints of a group that uses TLS.
#[derive(Debug)]
pub struct PeerTls {
    pub sni: String,
    /// CAs to trust instead of the system roots.
    pub ca: Option<Arc<[pingora_core::utils::tls::WrappedX509]>>,
    pub verify: bool,
}

/// Loads the CA bundles of upstream groups that use TLS, keyed by group name.
pub fn upstream_tls(config: &Config, base: &Path) -> Result<HashMap<String, Arc<PeerTls>>, Vec<String>> {
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    for g in &config.upstreams {
        let Some(t) = &g.tls else { continue };
        let ca = match &t.ca {
            None => None,
            Some(path) => match load_ca(&base.join(path)) {
                Ok(cas) => Some(cas),
                Err(e) => {
                    errors.push(format!("upstreams.{}.tls.ca: {e}", g.name));
                    continue;
                }
            },
        };
        out.insert(g.name.clone(), Arc::new(PeerTls { sni: t.sni.clone(), ca, verify: t.verify }));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn load_ca(path: &Path) -> Result<Arc<[pingora_core::utils::tls::WrappedX509]>, String> {
    let pem = files::read(path, files::CA_BUNDLE).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut cas = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(&pem) {
        let block = block.map_err(|e| format!("{}: {e}", path.display()))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|e| format!("{}: not an X.509 certificate: {e}", path.display()))?;
        cas.push(pingora_core::utils::tls::WrappedX509::new(block.contents, |raw| {
            pingora_core::utils::tls::parse_x509(raw)
        }));
    }
    if cas.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(cas.into())
}
