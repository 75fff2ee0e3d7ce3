//! The processes a scenario starts and stops: the gateway (the real binary), redis-server,
//! and the peers nginx and HAProxy. Each is pinned to its core when asked, lives in a
//! scratch directory, listens on free loopback ports, and is killed (by its own pid) when
//! dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cpu::{self, CpuTime};

/// A free loopback port (bound and released; the short race is acceptable on loopback).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `taskset -c CORE program` when pinned, else the program itself.
fn command(program: &str, core: Option<u32>) -> anyhow::Result<Command> {
    Ok(match core {
        Some(c) => {
            which("taskset")?;
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &c.to_string(), program]);
            cmd
        }
        None => Command::new(program),
    })
}

pub fn which(program: &str) -> anyhow::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]);
    for dir in dirs {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{program} not found (scripts/deps.sh --test or --loadtest installs it)")
}

fn wait_for_port(addr: SocketAddr, what: &str, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}) before listening on {addr}");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> anyhow::Result<Scratch> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("edgegate-loadtest-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `yaml` as `edgegate.yaml` in `dir` and runs `bin run` on it (with a ports file
/// `ports.json` and its log in `gateway.log`), pinned to `core`.
pub fn spawn_gateway(bin: &Path, dir: &Scratch, yaml: &str, core: Option<u32>) -> anyhow::Result<Child> {
    spawn_gateway_env(bin, dir, yaml, core, &[])
}

/// [`spawn_gateway`] without the environment variables named in `unset`.
pub fn spawn_gateway_env(
    bin: &Path,
    dir: &Scratch,
    yaml: &str,
    core: Option<u32>,
    unset: &[&str],
) -> anyhow::Result<Child> {
    let config = dir.0.join("edgegate.yaml");
    std::fs::write(&config, yaml)?;
    let mut cmd = command(&bin.to_string_lossy(), core)?;
    for name in unset {
        cmd.env_remove(name);
    }
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .arg("--ports-file")
        .arg(dir.0.join("ports.json"))
        .env("EDGEGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.0.join("gateway.log"))?))
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// The edgegate binary running a scenario's config.
pub struct Gateway {
    child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    /// Kept until the gateway is gone.
    _dir: Scratch,
}

impl Gateway {
    /// [`spawn_gateway`], then waits for the ports file: the config's listeners use port 0
    /// and their addresses come back through `--ports-file`.
    pub fn start(bin: &Path, dir: Scratch, yaml: &str, core: Option<u32>) -> anyhow::Result<Gateway> {
        let config = dir.0.join("edgegate.yaml");
        let ports = dir.0.join("ports.json");
        let mut child = spawn_gateway(bin, &dir, yaml, core)?;
        let started = Instant::now();
        let doc: serde_json::Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ports) {
                break serde_json::from_str(&text)?;
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.0.join("gateway.log")).unwrap_or_default();
                bail!("gateway exited ({status}):\n{log}");
            }
            if started.elapsed() > Duration::from_secs(30) {
                stop(&mut child);
                bail!("gateway did not start within 30 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let addr = |v: &serde_json::Value| -> Option<SocketAddr> { v.as_str()?.parse().ok() };
        let (Some(public), Some(admin)) = (addr(&doc["listeners"]["public"]), addr(&doc["admin"])) else {
            stop(&mut child);
            bail!("ports file without a `public` listener and admin: {doc}");
        };
        wait_for_port(public, "gateway", &mut child)?;
        Ok(Gateway { child, public, admin, config, _dir: dir })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu(&self) -> anyhow::Result<CpuTime> {
        cpu::process_cpu(Path::new(&format!("/proc/{}", self.pid())))
    }

    /// SIGTERM, then waits (30 s at most) for the gateway to drain and exit by itself, as a
    /// kubelet stops it: the process ends through its own exit path (an instrumented build
    /// writes its profile there). Fails when it does not exit in time or exits non-zero.
    pub fn terminate(mut self) -> anyhow::Result<()> {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid())?);
        kill(pid, Signal::SIGTERM).context("signalling the gateway")?;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("gateway exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("gateway still running 30 s after SIGTERM")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A real redis-server on a free loopback port.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
}

impl Redis {
    pub fn start() -> anyhow::Result<Redis> {
        let mut r = Redis { child: None, port: free_port()? };
        r.start_again()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }

    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let mut child = Command::new(which("redis-server")?)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        wait_for_port(SocketAddr::from(([127, 0, 0, 1], self.port)), "redis-server", &mut child)?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a peer does with each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// Keep-alive reverse proxy to this upstream.
    Proxy(SocketAddr),
    /// Answers the pod's JSON body itself (the least a server can spend on a request).
    Static,
}

pub const STATIC_BODY: &str = r#"{"service":"permits","status":"open"}"#;

/// A certificate and key for a TLS listener: PEM files, plus both in one file for HAProxy.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub combined: PathBuf,
    _dir: Scratch,
}

impl TlsFiles {
    /// A throwaway self-signed ECDSA P-256 certificate for `localhost`.
    pub fn self_signed() -> anyhow::Result<TlsFiles> {
        let dir = Scratch::new("tls")?;
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let (cert_pem, key_pem) = (cert.cert.pem(), cert.key_pair.serialize_pem());
        let files = TlsFiles {
            cert: dir.0.join("cert.pem"),
            key: dir.0.join("key.pem"),
            combined: dir.0.join("combined.pem"),
            _dir: dir,
        };
        std::fs::write(&files.cert, &cert_pem)?;
        std::fs::write(&files.key, &key_pem)?;
        std::fs::write(&files.combined, format!("{cert_pem}{key_pem}"))?;
        Ok(files)
    }
}

/// nginx or HAProxy configured for a fair comparison: one worker, keep-alive both sides; with
/// `tls`, the listener terminates TLS and offers HTTP/2 and HTTP/1.1 by ALPN.
pub struct Peer {
    pub name: &'static str,
    /// The server's program (`nginx`, `haproxy`): its worker's process name.
    program: &'static str,
    child: Child,
    pub addr: SocketAddr,
    /// The process doing the work (nginx's worker, HAProxy itself).
    pub worker_pid: u32,
    _dir: Scratch,
}

/// The name of [`Peer::nginx_forwarding`]'s rows with nginx's own request ids.
pub const NGINX_FORWARDING: &str = "nginx, forwarding like edgegate";
/// The name of its rows with one fixed request id: the same bytes, no id made.
pub const NGINX_FORWARDING_FIXED_ID: &str = "nginx, forwarding, fixed id";
/// The request id [`NGINX_FORWARDING_FIXED_ID`] sends every time.
const FIXED_ID: &str = "c4a9121f4cdaf8b2fe15cb0a0612a423";

/// Where [`Peer::nginx_forwarding`]'s request ids come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestIds {
    /// nginx's `$request_id`: 128 random bits per request, as edgegate's are.
    Made,
    /// One fixed id: what sending the headers costs without making an id.
    Fixed,
}

impl Peer {
    pub fn nginx(role: PeerRole, tls: Option<&TlsFiles>, core: Option<u32>) -> anyhow::Result<Peer> {
        Peer::nginx_with("nginx", role, tls, core, "")
    }

    /// nginx proxying to `pod` as [`Peer::nginx`] does, and also adding to each request
    /// what edgegate adds: the Host as the client sent it, the client's address, the scheme,
    /// a request id (on the answer too) and a W3C `traceparent` of the same length (nginx
    /// cannot make a span id, so that part is fixed). Both then send the pod and the client
    /// the same bytes: the yardstick for what edgegate costs beyond the work itself.
    pub fn nginx_forwarding(pod: SocketAddr, core: Option<u32>, ids: RequestIds) -> anyhow::Result<Peer> {
        let (name, id) = match ids {
            RequestIds::Made => (NGINX_FORWARDING, "$request_id"),
            RequestIds::Fixed => (NGINX_FORWARDING_FIXED_ID, FIXED_ID),
        };
        let directives = format!(
            "proxy_set_header Host $http_host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; \
             proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Request-Id {id}; \
             proxy_set_header traceparent 00-{id}-f39f05b06c64c9f1-00; add_header X-Request-Id {id} always;"
        );
        Peer::nginx_with(name, PeerRole::Proxy(pod), None, core, &directives)
    }

    /// `extra`: more directives for a proxying location.
    fn nginx_with(
        name: &'static str,
        role: PeerRole,
        tls: Option<&TlsFiles>,
        core: Option<u32>,
        extra: &str,
    ) -> anyhow::Result<Peer> {
        let dir = Scratch::new("nginx")?;
        let port = free_port()?;
        let d = dir.0.display();
        let location = match role {
            PeerRole::Proxy(_) => format!(
                "location / {{ proxy_pass http://pods; proxy_http_version 1.1; proxy_set_header Connection \"\"; {extra} }}"
            ),
            PeerRole::Static => format!("location / {{ default_type application/json; return 200 '{STATIC_BODY}'; }}"),
        };
        let upstream = match role {
            PeerRole::Proxy(up) => format!("upstream pods {{ server {up}; keepalive 128; }}"),
            PeerRole::Static => String::new(),
        };
        let listen_tls = tls.map_or(String::new(), |t| {
            format!(
                " ssl http2; ssl_certificate {}; ssl_certificate_key {}; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:tls:10m",
                t.cert.display(),
                t.key.display()
            )
        });
        let conf = format!(
            "worker_processes 1; daemon off; error_log {d}/error.log warn; pid {d}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               keepalive_requests 1000000;\n\
               {upstream}\n\
               server {{ listen 127.0.0.1:{port}{listen_tls}; {location} }} }}\n"
        );
        std::fs::write(dir.0.join("nginx.conf"), conf)?;
        let mut child = command(&which("nginx")?.to_string_lossy(), core)?
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(dir.0.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr, "nginx", &mut child)?;
        let worker_pid = child_of(child.id()).context("nginx worker process not found")?;
        Ok(Peer { name, program: "nginx", child, addr, worker_pid, _dir: dir })
    }

    pub fn haproxy(role: PeerRole, tls: Option<&TlsFiles>, core: Option<u32>) -> anyhow::Result<Peer> {
        let dir = Scratch::new("haproxy")?;
        let port = free_port()?;
        let backend = match role {
            PeerRole::Proxy(up) => {
                format!("  default_backend pods\nbackend pods\n  http-reuse always\n  server pod1 {up}\n")
            }
            PeerRole::Static => {
                format!("  http-request return status 200 content-type application/json string '{STATIC_BODY}'\n")
            }
        };
        let bind_tls = tls.map_or(String::new(), |t| format!(" ssl crt {} alpn h2,http/1.1", t.combined.display()));
        let conf = format!(
            "global\n  nbthread 1\n  maxconn 8192\n\
             defaults\n  mode http\n  option http-keep-alive\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  timeout http-keep-alive 30s\n\
             frontend fe\n  bind 127.0.0.1:{port}{bind_tls}\n{backend}"
        );
        let cfg = dir.0.join("haproxy.cfg");
        std::fs::write(&cfg, conf)?;
        let mut child = command(&which("haproxy")?.to_string_lossy(), core)?
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.0.join("haproxy.log"))?))
            .spawn()
            .context("starting haproxy")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr, "haproxy", &mut child)?;
        let worker_pid = child.id();
        Ok(Peer { name: "haproxy", program: "haproxy", child, addr, worker_pid, _dir: dir })
    }

    pub fn cpu(&self) -> anyhow::Result<CpuTime> {
        cpu::process_cpu(Path::new(&format!("/proc/{}", self.worker_pid)))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SIGTERM lets nginx's master take its worker down with it; SIGKILL would orphan
        // the worker, still holding the port.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        stop(&mut self.child);
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.worker_pid)).unwrap_or_default();
        if self.worker_pid != self.child.id() && comm.trim() == self.program {
            // The worker outlived its master: end it too.
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.worker_pid as i32), nix::sys::signal::SIGKILL);
        }
    }
}

/// The first child process of `parent` (nginx's worker), waiting up to 5 s for it.
fn child_of(parent: u32) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            if cpu::parent_pid(&stat) == Some(parent) {
                return Some(pid);
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// Reads from `s` until the end of a message head; the head as text.
    fn read_head(s: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                other => {
                    panic!("connection ended before the head did: {other:?}, {:?}", String::from_utf8_lossy(&head))
                }
            }
        }
        String::from_utf8(head).expect("head is text")
    }

    /// A header's value in `head`, by its name (any case).
    fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().find_map(|l| l.split_once(": ").filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v))
    }

    /// Two requests through [`Peer::nginx_forwarding`] on one connection: what the pod
    /// received and what the client got back, for each.
    fn through_forwarding_nginx(ids: RequestIds) -> Vec<(String, String)> {
        let pod = TcpListener::bind("127.0.0.1:0").expect("bind");
        let pod_addr = pod.local_addr().expect("addr");
        let seen = std::thread::spawn(move || {
            // nginx keeps its connection to the pod alive: both requests come on it.
            let (mut s, _) = pod.accept().expect("accept");
            (0..2)
                .map(|_| {
                    let head = read_head(&mut s);
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").expect("answer");
                    head
                })
                .collect::<Vec<_>>()
        });
        let nginx =
            Peer::nginx_forwarding(pod_addr, None, ids).expect("nginx starts (scripts/deps.sh --test installs it)");
        let mut client = TcpStream::connect(nginx.addr).expect("connect");
        client.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let answers: Vec<String> = (0..2)
            .map(|_| {
                client.write_all(b"GET /api/x HTTP/1.1\r\nHost: h.test:8080\r\n\r\n").expect("send");
                let head = read_head(&mut client);
                let mut body = [0u8; 2];
                client.read_exact(&mut body).expect("body");
                head
            })
            .collect();
        seen.join().expect("pod thread").into_iter().zip(answers).collect()
    }

    /// The yardstick for edgegate's forwarding work really does that work: the pod receives
    /// the client's Host, its address, the scheme, a 128-bit request id and a `traceparent`
    /// carrying it, and the client gets the same request id back. With nginx's own ids,
    /// each request gets a new one; with the fixed id, the same bytes every time.
    #[test]
    fn forwarding_nginx_sends_what_edgegate_sends() {
        for ids in [RequestIds::Made, RequestIds::Fixed] {
            let exchanges = through_forwarding_nginx(ids);
            let mut seen_ids = Vec::new();
            for (sent, answer) in &exchanges {
                assert!(sent.starts_with("GET /api/x HTTP/1.1\r\n"), "{sent}");
                assert_eq!(field(sent, "host"), Some("h.test:8080"), "{sent}");
                assert_eq!(field(sent, "x-forwarded-for"), Some("127.0.0.1"), "{sent}");
                assert_eq!(field(sent, "x-forwarded-proto"), Some("http"), "{sent}");
                let id = field(sent, "x-request-id").expect("a request id");
                assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
                let parent = field(sent, "traceparent").expect("a traceparent");
                assert_eq!(parent, format!("00-{id}-f39f05b06c64c9f1-00"), "{sent}");
                assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
                assert_eq!(field(answer, "x-request-id"), Some(id), "{answer}");
                seen_ids.push(id.to_owned());
            }
            match ids {
                RequestIds::Made => assert_ne!(seen_ids[0], seen_ids[1], "a new id per request"),
                RequestIds::Fixed => assert_eq!(seen_ids, [FIXED_ID, FIXED_ID]),
            }
        }
    }
}
