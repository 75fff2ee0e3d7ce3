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
    pub dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start(yaml: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("edgegate.yaml");
        let ports = dir.path().join("ports.json");
        std::fs::write(&config, yaml).expect("write config");
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--ports-file")
            .arg(&ports)
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).expect("log file"))
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
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
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
