//! TLS session resumption on the citizen-facing listener: a client comes back after many
//! others have connected and resumes its session instead of paying for a full handshake;
//! the two ways to resume (tickets, the session cache) each work alone and can be turned
//! off; a ticket another process issued is refused and the client still gets its answer,
//! unless the two share the fleet's ticket secrets.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use crate::tls::{a_gov_test_dir, Ca};

/// Full handshakes of other clients between a client's two connections: more than rustls'
/// own default cache (256 sessions, two stored per TLS 1.3 handshake) keeps.
const OTHERS: usize = 300;

/// A gateway whose one TLS listener resumes as `tls` (YAML after the certificates) says,
/// with one public route to `pod`; new connections from loopback are not rate-limited
/// below what the test opens.
async fn gateway(ca: &Ca, pod: SocketAddr, tls: &str) -> Gateway {
    gateway_in(a_gov_test_dir(ca), pod, tls).await
}

/// [`gateway`] in `dir` (its `config/` holding the certificate, and any key file `tls`
/// names).
async fn gateway_in(dir: tempfile::TempDir, pod: SocketAddr, tls: &str) -> Gateway {
    gateway_with(dir, pod, tls, "").await
}

/// [`gateway_in`] with more `runtime` settings (`runtime` YAML after `threads: 1`).
async fn gateway_with(dir: tempfile::TempDir, pod: SocketAddr, tls: &str, runtime: &str) -> Gateway {
    let yaml = format!(
        "listeners: [{{name: public, address: \"127.0.0.1:0\", tls: {{certificates: [{{cert: a.crt, key: a.key}}]{tls}}}}}]\n\
         admin: {{address: \"127.0.0.1:0\"}}\n\
         runtime: {{threads: 1{runtime}}}\n\
         limits: {{new_connections_per_client: {{rate: 100000, burst: 100000}}}}\n\
         upstreams: {{svc: {{endpoints: [{{address: \"{pod}\"}}]}}}}\n\
         routes: [{{name: public, match: {{path_prefix: /public/}}, upstream: svc, public: true}}]\n"
    );
    Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await
}

/// A gateway resuming with the fleet's ticket secrets `keys` (the file's text).
async fn fleet_gateway(ca: &Ca, pod: SocketAddr, keys: &str) -> Gateway {
    let dir = a_gov_test_dir(ca);
    std::fs::write(dir.path().join("config/fleet.keys"), keys).expect("keys");
    gateway_in(dir, pod, ", session_ticket_keys: fleet.keys").await
}

/// A client of its own (its own session store), speaking `versions`; `resume: false` for one
/// that never offers to resume.
fn client(ca: &Ca, versions: &[&'static rustls::SupportedProtocolVersion], resume: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca.der())).expect("CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = if resume { Resumption::in_memory_sessions(8) } else { Resumption::disabled() };
    Arc::new(config)
}

/// One request on a new connection: how its handshake went and the answer's status line.
/// Reading the answer also takes in the session tickets the server sends after the
/// handshake, so the client can resume next time.
async fn get(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> (HandshakeKind, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("a.gov.test").expect("name");
    let mut s = tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name, tcp).await.expect("handshake");
    let kind = s.get_ref().1.handshake_kind().expect("handshake done");
    s.write_all(b"GET /public/x HTTP/1.1\r\nHost: a.gov.test\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    // The gateway may close without close_notify after a `Connection: close` answer.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    (kind, text.lines().next().unwrap_or_default().to_owned())
}

/// `OTHERS` clients that never resume, each with a full handshake and a request.
async fn others(addr: SocketAddr, ca: &Ca, versions: &[&'static rustls::SupportedProtocolVersion]) {
    let stranger = client(ca, versions, false);
    for _ in 0..OTHERS {
        assert_eq!(get(addr, &stranger).await, (HandshakeKind::Full, "HTTP/1.1 200 OK".to_owned()));
    }
}

/// A client's first and second connection, `OTHERS` strangers between them: how the
/// second handshake went.
async fn come_back(addr: SocketAddr, ca: &Ca, versions: &[&'static rustls::SupportedProtocolVersion]) -> HandshakeKind {
    let citizen = client(ca, versions, true);
    assert_eq!(get(addr, &citizen).await, (HandshakeKind::Full, "HTTP/1.1 200 OK".to_owned()));
    others(addr, ca, versions).await;
    let (kind, status) = get(addr, &citizen).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    kind
}

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_citizen_resumes_its_session_after_hundreds_of_others_connected() {
    let ca = Ca::new();
    let p = pod("svc").await;
    let gw = gateway(&ca, p.addr, "").await;
    let addr = gw.addr();

    // Defaults: tickets, TLS 1.3 and TLS 1.2.
    assert_eq!(come_back(addr, &ca, TLS13).await, HandshakeKind::Resumed, "TLS 1.3 by ticket");
    assert_eq!(come_back(addr, &ca, TLS12).await, HandshakeKind::Resumed, "TLS 1.2 by ticket");
    let m = gw.metrics().await;
    assert_eq!(metric(&m, r#"edgegate_tls_resumed_handshakes_total{listener="public",version="TLSv1.3"}"#), 1.0);
    assert_eq!(metric(&m, r#"edgegate_tls_resumed_handshakes_total{listener="public",version="TLSv1.2"}"#), 1.0);
    assert_eq!(
        metric(&m, r#"edgegate_tls_handshakes_total{listener="public",version="TLSv1.3"}"#),
        (OTHERS + 2) as f64,
        "every handshake counted, resumed or not"
    );

    // A ticket this process did not issue (the same client, its ticket from the first
    // gateway) is not accepted: a full handshake, and the answer all the same.
    let citizen = client(&ca, TLS13, true);
    assert_eq!(get(addr, &citizen).await.0, HandshakeKind::Full);
    assert_eq!(get(addr, &citizen).await.0, HandshakeKind::Resumed);
    let other = gateway(&ca, p.addr, "").await;
    assert_eq!(get(other.addr(), &citizen).await, (HandshakeKind::Full, "HTTP/1.1 200 OK".to_owned()));
    assert_eq!(get(other.addr(), &citizen).await.0, HandshakeKind::Resumed, "with the new gateway's ticket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cache_alone_resumes_and_both_can_be_turned_off() {
    let ca = Ca::new();
    let p = pod("svc").await;

    // Tickets off: the sessions held in memory, more than rustls' default 256 of them.
    let cache_only = gateway(&ca, p.addr, ", session_tickets: false").await;
    assert_eq!(come_back(cache_only.addr(), &ca, TLS13).await, HandshakeKind::Resumed, "TLS 1.3 from the cache");
    assert_eq!(come_back(cache_only.addr(), &ca, TLS12).await, HandshakeKind::Resumed, "TLS 1.2 by session id");

    // A cache smaller than the others between: the citizen's session is gone.
    let small = gateway(&ca, p.addr, ", session_tickets: false, session_cache: 100").await;
    assert_eq!(come_back(small.addr(), &ca, TLS13).await, HandshakeKind::Full);

    // Neither: every connection a full handshake.
    let none = gateway(&ca, p.addr, ", session_tickets: false, session_cache: 0").await;
    let citizen = client(&ca, TLS13, true);
    for _ in 0..3 {
        assert_eq!(get(none.addr(), &citizen).await, (HandshakeKind::Full, "HTTP/1.1 200 OK".to_owned()));
    }
    let citizen = client(&ca, TLS12, true);
    for _ in 0..3 {
        assert_eq!(get(none.addr(), &citizen).await.0, HandshakeKind::Full);
    }
    let m = none.metrics().await;
    assert_eq!(metric(&m, r#"edgegate_tls_resumed_handshakes_total{listener="public",version="TLSv1.3"}"#), 0.0);
    assert_eq!(metric(&m, r#"edgegate_tls_handshakes_total{listener="public",version="TLSv1.3"}"#), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fleets_secrets_a_ticket_resumes_on_every_node_and_through_a_rotation() {
    let ca = Ca::new();
    let p = pod("svc").await;
    let old = format!("# the fleet's ticket secrets, the first seals\n{}\n", "o".repeat(44));
    let new = "n".repeat(44);
    let node_a = fleet_gateway(&ca, p.addr, &old).await;
    let node_b = fleet_gateway(&ca, p.addr, &old).await;

    // A ticket from node A resumes on node B: another process, the same secret.
    let citizen = client(&ca, TLS13, true);
    assert_eq!(get(node_a.addr(), &citizen).await.0, HandshakeKind::Full);
    assert_eq!(get(node_b.addr(), &citizen).await, (HandshakeKind::Resumed, "HTTP/1.1 200 OK".to_owned()));
    // TLS 1.2 tickets too.
    let citizen12 = client(&ca, TLS12, true);
    assert_eq!(get(node_a.addr(), &citizen12).await.0, HandshakeKind::Full);
    assert_eq!(get(node_b.addr(), &citizen12).await.0, HandshakeKind::Resumed);

    // Rotation: a node with the new secret first and the old one after opens the old
    // tickets and seals with the new secret, which a node with only the new one opens.
    let rotating = fleet_gateway(&ca, p.addr, &format!("{new}\n{old}")).await;
    let citizen = client(&ca, TLS13, true);
    assert_eq!(get(node_a.addr(), &citizen).await.0, HandshakeKind::Full);
    assert_eq!(get(rotating.addr(), &citizen).await.0, HandshakeKind::Resumed, "the old secret still opens");
    let rotated = fleet_gateway(&ca, p.addr, &new).await;
    assert_eq!(get(rotated.addr(), &citizen).await.0, HandshakeKind::Resumed, "sealed with the new secret");
    assert_eq!(get(node_a.addr(), &citizen).await.0, HandshakeKind::Full, "the old-only node cannot open it");

    // Another fleet's secret: a full handshake, and the answer all the same.
    let stranger = fleet_gateway(&ca, p.addr, &"s".repeat(44)).await;
    assert_eq!(get(node_a.addr(), &citizen).await.0, HandshakeKind::Resumed);
    assert_eq!(get(stranger.addr(), &citizen).await, (HandshakeKind::Full, "HTTP/1.1 200 OK".to_owned()));

    // A secrets file that cannot be used: `check` names the field; `run` serves with keys
    // of its own and says why.
    let dir = a_gov_test_dir(&ca);
    std::fs::write(dir.path().join("config/fleet.keys"), "short\n").expect("keys");
    let yaml = format!(
        "listeners: [{{name: public, address: \"127.0.0.1:0\", tls: {{certificates: [{{cert: a.crt, key: a.key}}], session_ticket_keys: fleet.keys}}}}]\n\
         upstreams: {{svc: {{endpoints: [{{address: \"{}\"}}]}}}}\n\
         routes: [{{name: public, upstream: svc, public: true}}]\n",
        p.addr
    );
    let config = dir.path().join("config/edgegate.yaml");
    std::fs::write(&config, &yaml).expect("config");
    let out = output(std::process::Command::new(BIN).arg("check").arg("--config").arg(&config));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listeners[0].tls.session_ticket_keys:") && stderr.contains("line 1: the secret is 5 bytes"),
        "{stderr}"
    );
    let bad = gateway_in(dir, p.addr, ", session_ticket_keys: fleet.keys").await;
    let citizen = client(&ca, TLS13, true);
    assert_eq!(get(bad.addr(), &citizen).await, (HandshakeKind::Full, "HTTP/1.1 200 OK".to_owned()));
    assert_eq!(get(bad.addr(), &citizen).await.0, HandshakeKind::Resumed, "its own keys");
    // Log lines are written by a thread of their own: wait for it.
    for _ in 0..50 {
        if bad.stdout().contains("tls.session_ticket_keys cannot be used") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the start log does not say why: {}", bad.stdout());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_on_threads_of_their_own_run_at_the_lowest_priority_and_resume_alike() {
    let ca = Ca::new();
    let p = pod("svc").await;
    let gw = gateway_with(a_gov_test_dir(&ca), p.addr, "", ", tls_handshake_threads: 2").await;
    // Full handshakes, resumed ones, TLS 1.3 and 1.2, each answered.
    for versions in [TLS13, TLS12] {
        let citizen = client(&ca, versions, true);
        assert_eq!(get(gw.addr(), &citizen).await, (HandshakeKind::Full, "HTTP/1.1 200 OK".to_owned()));
        for _ in 0..20 {
            assert_eq!(get(gw.addr(), &citizen).await, (HandshakeKind::Resumed, "HTTP/1.1 200 OK".to_owned()));
        }
    }
    // The handshakes ran on the pool's threads (made on the first handshake), each at the
    // lowest nice value; the workers stay at normal priority.
    let mut pool = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", gw.pid())).expect("tasks") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // After the `(comm)` field, which may hold spaces: nice is the 17th.
        let nice: i32 =
            stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(16)?.parse().ok()).expect("nice");
        if comm.starts_with("downstream TLS") {
            pool.push(nice);
        } else {
            assert!(nice <= 0 || comm.starts_with("audit"), "{} at nice {nice}", comm.trim());
        }
    }
    assert_eq!(pool, vec![19, 19], "two handshake threads at nice 19");
    let m = gw.metrics().await;
    assert_eq!(metric(&m, r#"edgegate_tls_resumed_handshakes_total{listener="public",version="TLSv1.3"}"#), 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_new_connections_takes_turns_on_the_worker_and_every_one_is_answered() {
    let ca = Ca::new();
    let p = pod("svc").await;
    let gw = gateway(&ca, p.addr, "").await;
    let before = metric(&gw.metrics().await, "edgegate_tls_handshake_waits_total");
    // 64 clients connect, then all start their handshakes at once: the one worker has
    // more ClientHellos than it can answer in one round, and they wait in line.
    const N: usize = 64;
    let start = Arc::new(tokio::sync::Barrier::new(N));
    let mut clients = Vec::new();
    for _ in 0..N {
        let (config, start, addr) = (client(&ca, TLS13, false), Arc::clone(&start), gw.addr());
        clients.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            start.wait().await;
            let name = rustls::pki_types::ServerName::try_from("a.gov.test").expect("name");
            let mut s = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.expect("handshake");
            s.write_all(b"GET /public/x HTTP/1.1\r\nHost: a.gov.test\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut answer)).await;
            String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
        }));
    }
    for c in clients {
        assert_eq!(c.await.expect("client"), "HTTP/1.1 200 OK");
    }
    let m = gw.metrics().await;
    assert!(metric(&m, "edgegate_tls_handshake_waits_total") > before, "handshake steps waited for the turn");
    // Every one that waited left the line: the gauge is back to none.
    assert_eq!(metric(&m, "edgegate_tls_handshakes_waiting"), 0.0);
    assert_eq!(metric(&m, r#"edgegate_tls_handshakes_total{listener="public",version="TLSv1.3"}"#), N as f64);
}
