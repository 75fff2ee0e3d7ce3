//! Integration harness: starts the real `edgegate` binary on port-0 listeners against
//! real upstream pods, waits until it is ready, and cleans up on drop. Reusable by
//! every feature's end-to-end tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use edgegate::pod::{Pod, PodSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BIN: &str = env!("CARGO_BIN_EXE_edgegate");

/// Starts a demo pod on a free loopback port.
pub async fn pod(service: &str) -> Pod {
    pod_with_delay(service, Duration::ZERO).await
}

pub async fn pod_with_delay(service: &str, delay: Duration) -> Pod {
    let spec = PodSpec { service: service.into(), name: format!("{service}-1"), delay };
    Pod::start("127.0.0.1:0".parse().expect("addr"), spec).await.expect("pod starts")
}

/// An address nothing listens on: bound once to learn a free port, then released.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A config with one `public` listener and the admin listener on port 0, one worker
/// thread, and the given `upstreams:`/`routes:` (and any other) YAML appended.
pub fn config(body: &str) -> String {
    format!(
        "listeners: [{{name: public, address: \"127.0.0.1:0\"}}]\nadmin: {{address: \"127.0.0.1:0\"}}\nruntime: {{threads: 1}}\n{body}"
    )
}

/// YAML for an upstream group of the given pods' addresses.
pub fn group(name: &str, addrs: &[SocketAddr]) -> String {
    let eps: Vec<String> = addrs.iter().map(|a| format!("{{address: \"{a}\"}}")).collect();
    format!("  {name}: {{endpoints: [{}]}}\n", eps.join(", "))
}

pub struct Gateway {
    child: Child,
    pub admin: SocketAddr,
    pub listeners: HashMap<String, SocketAddr>,
    /// Holds `config/edgegate.yaml`, `state/` (last-known-good), logs and the ports file.
    pub dir: tempfile::TempDir,
}

/// How to start a gateway beyond its config text.
#[derive(Default)]
pub struct Launch {
    /// Reload only on SIGHUP and `POST /-/reload`.
    pub no_watch: bool,
    /// Use this directory (config, state, logs) instead of a fresh one, e.g. to restart
    /// with an earlier run's last-known-good copy.
    pub dir: Option<tempfile::TempDir>,
    /// Leave the config file as it is in `dir` instead of writing the given text.
    pub keep_config: bool,
    /// Extra environment variables for the gateway process.
    pub env: Vec<(String, String)>,
    /// Where the gateway's stdout goes instead of `stdout.log` (e.g. a pipe nobody reads).
    pub stdout: Option<Stdio>,
}

impl Gateway {
    pub async fn start(yaml: &str) -> Gateway {
        Gateway::launch(yaml, Launch::default()).await
    }

    pub async fn launch(yaml: &str, launch: Launch) -> Gateway {
        let dir = match launch.dir {
            Some(d) => d,
            None => tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir_all(dir.path().join("config")).expect("config dir");
        let config = config_path(&dir);
        let ports = dir.path().join("ports.json");
        let _ = std::fs::remove_file(&ports);
        if !launch.keep_config {
            std::fs::write(&config, yaml).expect("write config");
        }
        let mut cmd = Command::new(BIN);
        cmd.arg("run").arg("--config").arg(&config).arg("--state-dir").arg(dir.path().join("state"));
        if launch.no_watch {
            cmd.arg("--no-watch");
        }
        cmd.envs(launch.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .arg("--ports-file")
            .arg(&ports)
            .stdout(
                launch
                    .stdout
                    .unwrap_or_else(|| std::fs::File::create(dir.path().join("stdout.log")).expect("log file").into()),
            )
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log file"))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn edgegate");
        let mut gw = Gateway { child, admin: "0.0.0.0:0".parse().expect("addr"), listeners: HashMap::new(), dir };

        let deadline = Instant::now() + Duration::from_secs(20);
        let doc: serde_json::Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ports) {
                break serde_json::from_str(&text).expect("ports file is JSON");
            }
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("edgegate exited early ({status}): {}", gw.stderr());
            }
            assert!(Instant::now() < deadline, "no ports file; stderr: {}", gw.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        gw.admin = doc["admin"].as_str().and_then(|s| s.parse().ok()).expect("admin address");
        for (name, addr) in doc["listeners"].as_object().expect("listeners") {
            gw.listeners.insert(name.clone(), addr.as_str().and_then(|s| s.parse().ok()).expect("listener address"));
        }
        loop {
            if let Ok(r) = client().get(gw.admin_url("/readyz")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "never ready; stderr: {}", gw.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gw
    }

    pub fn config_path(&self) -> PathBuf {
        config_path(&self.dir)
    }

    /// Replaces the config file atomically (write then rename), as deploy tools do.
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.path().join("config").join(".edgegate.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, self.config_path()).expect("rename config");
    }

    /// Stops the gateway (SIGTERM, wait) and hands back its directory for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.sigterm();
        self.wait_exit(Duration::from_secs(10)).await.expect("gateway exits");
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Kills the gateway at once (SIGKILL: no drain, no flush) and hands back its directory.
    pub async fn kill(mut self) -> tempfile::TempDir {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait_exit(Duration::from_secs(10)).await.expect("gateway exits");
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("send signal");
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        client().get(self.admin_url(path)).send().await.expect("admin").json().await.expect("JSON")
    }

    pub async fn metrics(&self) -> String {
        client().get(self.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text")
    }

    /// Polls `path` until it answers `status`, or panics after `within`.
    pub async fn wait_for_status(&self, path: &str, status: u16, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if let Ok(r) = client().get(self.url(path)).send().await {
                if r.status().as_u16() == status {
                    return started.elapsed();
                }
            }
            assert!(
                started.elapsed() < within,
                "{path} did not answer {status} within {within:?}; stdout:\n{}",
                self.stdout()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listeners["public"]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn sigterm(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.log_path("stdout.log")).unwrap_or_default()
    }

    /// Waits (up to `within`) until the log on stdout holds `needle`: lines are written by a
    /// background writer, a moment after the request they tell of is answered.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.stdout().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} in the log: {}", self.stdout());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log_path("stderr.log")).unwrap_or_default()
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn config_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("config").join("edgegate.yaml")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("client")
}

/// A response read off a raw socket, for checks a convenient client would hide.
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Sends `request` verbatim on a fresh connection and reads one response framed by
/// Content-Length.
pub async fn raw_request(addr: SocketAddr, request: &str) -> RawResponse {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before a full response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    while buf.len() < header_end + len {
        let n = s.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    RawResponse { status, headers, body: buf[header_end..header_end + len].to_vec() }
}

/// One client connection reused for many sequential requests; panics if the server
/// closes it, so a test can tell a dropped connection from a failed request.
pub struct KeepAlive {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> KeepAlive {
        KeepAlive { stream: tokio::net::TcpStream::connect(addr).await.expect("connect"), buf: Vec::new() }
    }

    /// Connects from `source` (any of 127.0.0.0/8 on loopback): another client address.
    pub async fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> KeepAlive {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(source, 0)).expect("bind the source address");
        KeepAlive { stream: socket.connect(addr).await.expect("connect"), buf: Vec::new() }
    }

    /// Whether the gateway closed the connection without a byte of answer to a request.
    pub async fn closed_unanswered(mut self) -> bool {
        let _ = self.stream.write_all(b"GET /refused HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n").await;
        let (text, closed) = read_to_close(&mut self.stream, Duration::from_secs(5)).await;
        closed && text.is_empty()
    }

    /// Sends a GET and reads the response (Content-Length framed); returns the status.
    pub async fn get(&mut self, path: &str) -> u16 {
        let req = format!("GET {path} HTTP/1.1\r\nHost: zwfw.example.gov.cn\r\n\r\n");
        self.stream.write_all(req.as_bytes()).await.expect("write: connection dropped");
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                    })
                    .expect("content-length");
                if head.to_ascii_lowercase().contains("connection: close") {
                    panic!("server asked to close the connection: {head}");
                }
                while self.buf.len() < end + len {
                    let n = self.stream.read(&mut chunk).await.expect("read body");
                    assert!(n > 0, "connection dropped mid-body");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                self.buf.drain(..end + len);
                return status;
            }
            let n = self.stream.read(&mut chunk).await.expect("read: connection dropped");
            assert!(n > 0, "connection dropped by the server");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

pub use edgegate_filters::testing::{forge, Issuer, AUDIENCE, ISSUER};

/// The `listeners:` item of a plain listener behind a TLS-terminating hop (so a citizen's
/// request counts as encrypted), for [`policy_yaml`].
pub const BEHIND_TLS_LISTENER: &str = "  - {name: public, address: \"127.0.0.1:0\", behind_tls: true}\n";

/// A config for a gateway launched on [`policy_dir`]: the shipped policy, the test issuer's
/// keys, one upstream group `svc` on `pod`, plus the given `listeners:` and `routes:` list
/// items (one `  - {…}` line each) and any extra top-level YAML. The audit log is
/// `audit.db` in the launch directory unless `extra` has its own `audit:` section (the
/// shipped policy allows citizens only while audit works).
pub fn policy_yaml(listeners: &str, pod: SocketAddr, routes: &str, extra: &str) -> String {
    let audit = if extra.contains("audit:") { "" } else { "audit: {db: audit.db}\n" };
    let extra = format!("{audit}{extra}");
    format!(
        "listeners:\n{listeners}admin: {{address: \"127.0.0.1:0\"}}\nruntime: {{threads: 1}}\npolicies: {{dir: policy}}\nidentity: {{jwt: {{issuer: \"{ISSUER}\", audience: {AUDIENCE}, keys: jwks.json}}}}\n{extra}upstreams:\n  svc: {{endpoints: [{{address: \"{pod}\"}}]}}\nroutes:\n{routes}"
    )
}

/// A pod and a gateway launched on `dir` (a [`policy_dir`]) with [`BEHIND_TLS_LISTENER`],
/// one upstream group `svc` on the pod and the given `routes:` items.
pub async fn citizen_routes(dir: tempfile::TempDir, routes: &str) -> (Pod, Gateway) {
    let p = pod("svc").await;
    let yaml = policy_yaml(BEHIND_TLS_LISTENER, p.addr, routes, "");
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await;
    (p, gw)
}

/// Runs `edgegate run` on `config` with a fresh state directory until it exits, as it
/// does when it cannot start; returns its exit code and stderr.
pub fn run_until_exit(config: &std::path::Path) -> (Option<i32>, String) {
    let state = tempfile::tempdir().expect("tempdir");
    let out = output(
        Command::new(BIN).arg("run").arg("--config").arg(config).arg("--state-dir").arg(state.path().join("state")),
    );
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Longest any command a test runs may take before the test fails (and the process is
/// killed) instead of hanging the suite.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion, like `Command::output`, but kills it and fails the test after
/// [`COMMAND_TIMEOUT`]. Output goes through files, so a chatty child cannot block on a
/// full pipe while we wait.
pub fn output(cmd: &mut Command) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |p: &PathBuf| std::fs::read(p).unwrap_or_default();
    std::process::Output { status, stdout: read(&out_path), stderr: read(&err_path) }
}

/// A gateway directory with the shipped policy in `config/policy/` and the issuer's JWKS
/// in `config/jwks.json`, ready for [`Launch::dir`].
pub fn policy_dir(issuer: &Issuer) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("config/policy");
    std::fs::create_dir_all(&policy).expect("mkdir");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy");
    for entry in std::fs::read_dir(shipped).expect("shipped policy") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, policy.join(path.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(dir.path().join("config/jwks.json"), &issuer.jwks).expect("jwks");
    dir
}

/// A real `redis-server` on a free loopback port, stopped on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    tls: bool,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_free(&[], &[]).await
    }

    /// On `port`, which the test chose (e.g. to start Redis again where it was).
    pub async fn start_on(port: u16) -> RedisServer {
        let server = Self::spawn(port, &[], &[]).await;
        server.unwrap_or_else(|| panic!("another server answers on {port}"))
    }

    /// A Redis started with these arguments too (e.g. `--user …` ACL rules).
    pub async fn start_with(args: &[&str]) -> RedisServer {
        Self::start_free(&[], args).await
    }

    /// A Redis that speaks only TLS, with `dir/redis.crt` and `dir/redis.key`.
    pub async fn start_tls(dir: &std::path::Path) -> RedisServer {
        let (cert, key) = (dir.join("redis.crt"), dir.join("redis.key"));
        let tls = ["--tls-cert-file", path_str(&cert), "--tls-key-file", path_str(&key), "--tls-auth-clients", "no"];
        let mut server = Self::start_free(&tls, &[]).await;
        server.tls = true;
        server
    }

    /// On a port free when it is picked. Between the pick and the server's bind another
    /// test's server may take the same port: this one then fails to bind, and the port
    /// answers all the same — two tests would share one Redis. Another port is tried then.
    async fn start_free(tls: &[&str], extra: &[&str]) -> RedisServer {
        for _ in 0..10 {
            if let Some(server) = Self::spawn(closed_port().port(), tls, extra).await {
                return server;
            }
        }
        panic!("no free port for redis-server in ten tries");
    }

    /// With `tls` arguments the port is the TLS one, and there is no plain one. `None` when
    /// the server answering on `port` is not the one started (it could not bind).
    async fn spawn(port: u16, tls: &[&str], extra: &[&str]) -> Option<RedisServer> {
        let number = port.to_string();
        let listen = if tls.is_empty() { vec!["--port", &number] } else { vec!["--port", "0", "--tls-port", &number] };
        let mut child = Command::new("redis-server")
            .args(listen)
            .args(tls)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/deps.sh --test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A plain server says whose it is (unless its users may not ask); one that could
        // not bind exits at once.
        let pid = if tls.is_empty() { server_pid(port).await } else { None };
        let ours = match pid {
            Some(pid) => pid == child.id(),
            None => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                matches!(child.try_wait(), Ok(None))
            }
        };
        if !ours {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(RedisServer { child, port, tls: false })
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "rediss" } else { "redis" }, self.port)
    }

    /// A connection of the test's own to this (plain) Redis, to read or write what the
    /// gateways share. Its commands may take 30 s (the client's own default, 0.5 s, is less
    /// than a 64 MiB `SET` takes on a loaded machine), so a test fails rather than hangs.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("redis url");
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        client.get_multiplexed_async_connection_with_config(&config).await.expect("connect to redis")
    }

    /// How many keys the server holds (`DBSIZE`, spoken in RESP on a fresh connection).
    pub async fn keys(&self) -> u64 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.expect("connect to redis");
        s.write_all(b"*1\r\n$6\r\nDBSIZE\r\n").await.expect("DBSIZE");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.expect("DBSIZE reply");
        let reply = std::str::from_utf8(&buf[..n]).expect("RESP");
        reply.trim().strip_prefix(':').and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("DBSIZE said {reply:?}"))
    }
}

/// The process id the plain Redis on `port` gives in `INFO server`.
async fn server_pid(port: u16) -> Option<u32> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n").await.ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the line with the id has come whole, or an error (a user who may not ask).
    while !(reply.starts_with(b"-") || reply.windows(11).any(|w| w == b"process_id:")) || !reply.ends_with(b"\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    text.lines().find_map(|l| l.strip_prefix("process_id:")).and_then(|v| v.trim().parse().ok())
}

fn path_str(path: &std::path::Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `bytes` on a fresh connection and reads until the server closes it (or 5 s
/// pass); returns the status of the first response, if any, everything read, and whether
/// the server closed the connection.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (Option<u16>, String, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before reading everything: a failed write is fine.
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok());
    (status, text, closed)
}

/// Reads one whole response (head and `Content-Length` body) from `s` within 5 s: its
/// status and body.
pub async fn read_response(s: &mut tokio::net::TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .expect("read");
        assert!(n > 0, "connection closed before a whole response: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else { continue };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0);
        if buf.len() >= end + len {
            let status = head[9..12].parse().expect("status");
            return (status, String::from_utf8_lossy(&buf[end..end + len]).into_owned());
        }
    }
}

/// Sends `request` on the kept-alive connection `s` and reads its response.
pub async fn exchange(s: &mut tokio::net::TcpStream, request: &[u8]) -> (u16, String) {
    s.write_all(request).await.expect("write");
    read_response(s).await
}

/// The resident memory of process `pid`, from `/proc`.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// The most resident memory process `pid` has held, from `/proc`.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or_else(|| panic!("the process's {field}"))
}

/// Serves HTTP/1.1 POSTs on `listener` (keep-alive, `Content-Length` bodies): `handle`
/// gets each request's lower-cased head and its body and returns the status to answer.
/// A stand-in for a central collector (audit records, spans).
pub fn serve_posts(listener: tokio::net::TcpListener, handle: impl Fn(&str, Vec<u8>) -> u16 + Send + Sync + 'static) {
    serve_http(listener, move |head, body| {
        let status = handle(head, body);
        format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n")
    });
}

/// Serves HTTP/1.1 requests on `listener` (keep-alive, `Content-Length` bodies): `handle`
/// gets each request's lower-cased head and its body and returns the whole answer to send
/// (its status line, fields and body).
pub fn serve_http(listener: tokio::net::TcpListener, handle: impl Fn(&str, Vec<u8>) -> String + Send + Sync + 'static) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let handle = std::sync::Arc::new(handle);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let handle = std::sync::Arc::clone(&handle);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16384];
                loop {
                    let Some(head) = read_head(&mut conn, &mut buf).await else { return };
                    let head = head.to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
                        .unwrap_or(0);
                    while buf.len() < len {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..len).collect();
                    let reply = handle(&head, body);
                    if conn.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// Reads one HTTP/1.1 request head from `conn` (what arrived after it stays in `buf`);
/// None when the peer closed first.
pub async fn read_head(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end);
            return Some(head);
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// GETs `url` (with a bearer token and a request id when given), reads the body, returns
/// the status.
pub fn get_status(
    c: &reqwest::Client,
    url: String,
    token: Option<&str>,
    request_id: Option<&str>,
) -> impl std::future::Future<Output = u16> + 'static {
    let mut req = c.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    async move {
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        resp.bytes().await.expect("body");
        status
    }
}

/// The value of the series written exactly `series` (name and labels as the scrape
/// writes them) in a Prometheus text scrape.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// [`metric_value`], or -1 when the series is absent (for polling until it appears).
pub fn metric(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or(-1.0)
}

/// Every byte a [`raw_pod`] was sent, on all its connections, in arrival order.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// What a [`Received`] holds now, as text (and empties it when `clear`).
pub fn received(seen: &Received, clear: bool) -> String {
    let mut all = seen.lock().unwrap_or_else(|p| p.into_inner());
    let text = String::from_utf8_lossy(&all).into_owned();
    if clear {
        all.clear();
    }
    text
}

/// A [`raw_pod`] answering every request with a body of `len` bytes.
pub async fn big_body_pod(len: usize) -> SocketAddr {
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    let answer = [head, vec![b'z'; len]].concat();
    raw_pod(move |_| vec![answer.clone()]).await.0
}

/// A pod on raw sockets, for tests that must see, or send, bytes no HTTP library would:
/// it keeps every byte it is sent, and for each whole request it reads — a head, then a body
/// of its `Content-Length`, or a chunked body up to its last chunk — writes what `answer`
/// returns for the head, each piece 50 ms after the one before; an empty piece closes the
/// connection instead. A request that never completes is never answered.
pub async fn raw_pod(answer: impl Fn(&str) -> Vec<Vec<u8>> + Send + Sync + 'static) -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Received::default();
    let (all, answer) = (seen.clone(), std::sync::Arc::new(answer));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (all, answer) = (all.clone(), answer.clone());
            tokio::spawn(async move {
                let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
                while let Ok(n @ 1..) = conn.read(&mut chunk).await {
                    all.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let lower = head.to_ascii_lowercase();
                        let length = lower.lines().find_map(|l| {
                            l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok())
                        });
                        let whole = if lower.contains("\r\ntransfer-encoding: chunked\r\n") {
                            // From the head's own last CRLF, so that an empty body counts.
                            buf[end - 2..].windows(7).position(|w| w == b"\r\n0\r\n\r\n").map(|i| end - 2 + i + 7)
                        } else {
                            Some(end + length.unwrap_or(0)).filter(|&n| n <= buf.len())
                        };
                        let Some(whole) = whole else { break };
                        buf.drain(..whole);
                        for (i, piece) in answer(&head).into_iter().enumerate() {
                            if i > 0 {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            if piece.is_empty() || conn.write_all(&piece).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Reads until the server closes (or `within` passes); returns what arrived and whether
/// the connection was closed.
pub async fn read_to_close(s: &mut tokio::net::TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}
