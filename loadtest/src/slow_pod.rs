//! The slow-pod scenario: four pods behind the real gateway, one answering 200 ms
//! slower, driven open-loop at a fixed rate. Compares `peak_ewma` with `round_robin`
//! and with the all-healthy baseline (issue 4's target: p99 ≤ 1.5× the all-healthy p99).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use edgegate::pod::{Pod, PodSpec};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

pub struct Options {
    pub gateway: PathBuf,
    pub rate: u32,
    pub duration: Duration,
}

pub struct Outcome {
    pub label: &'static str,
    pub latency: Histogram<u64>,
    pub errors: u64,
    pub slow_share: f64,
    pub sent: u64,
}

struct Gateway {
    child: Child,
    addr: SocketAddr,
    _dir: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn start_gateway(bin: &Path, pods: &[SocketAddr], policy: &str) -> anyhow::Result<Gateway> {
    let dir = std::env::temp_dir().join(format!("edgegate-slow-pod-{}-{policy}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let eps: Vec<String> = pods.iter().map(|a| format!("{{address: \"{a}\"}}")).collect();
    let yaml = format!(
        "listeners: [{{name: public, address: \"127.0.0.1:0\"}}]\nadmin: {{address: \"127.0.0.1:0\"}}\nruntime: {{threads: 1, work_stealing: false}}\nlogging: {{access_log: false}}\nupstreams:\n  svc:\n    endpoints: [{}]\n    balancer: {{policy: {policy}}}\nroutes: [{{name: r, upstream: svc, public: true}}]\n",
        eps.join(", ")
    );
    let config = dir.join("edgegate.yaml");
    std::fs::write(&config, yaml)?;
    let ports = dir.join("ports.json");
    let child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--ports-file")
        .arg(&ports)
        .env("EDGEGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let started = Instant::now();
    let addr = loop {
        if let Ok(text) = std::fs::read_to_string(&ports) {
            let doc: serde_json::Value = serde_json::from_str(&text)?;
            break doc["listeners"]["public"].as_str().context("no public listener")?.parse()?;
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("gateway did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Gateway { child, addr, _dir: dir })
}

/// Open loop: request i is due at start + i/rate and its latency is measured from
/// then, so a stalled gateway cannot hide its stall by sending less (coordinated
/// omission).
async fn drive(url: &str, rate: u32, duration: Duration) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(256).build()?;
    // Microseconds, up to a minute, 3 significant figures.
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs(1) / rate;
    let total = (duration.as_secs_f64() * f64::from(rate)) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let (client, url, hist, errors) = (client.clone(), url.to_owned(), Arc::clone(&hist), Arc::clone(&errors));
        tasks.push(tokio::spawn(async move {
            let ok = match client.get(&url).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            let micros = due.elapsed().as_micros() as u64;
            if !ok {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let _ = hist.lock().await.record(micros.max(1));
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let hist = hist.lock().await.clone();
    Ok((hist, errors.load(std::sync::atomic::Ordering::Relaxed), total))
}

pub async fn run(opts: &Options) -> anyhow::Result<Vec<Outcome>> {
    let mut out = Vec::new();
    for (label, slow, policy) in [
        ("all healthy (peak_ewma)", false, "peak_ewma"),
        ("one pod +200 ms, peak_ewma", true, "peak_ewma"),
        ("one pod +200 ms, round_robin", true, "round_robin"),
    ] {
        let mut pods = Vec::new();
        for i in 0..4 {
            let delay = if slow && i == 3 { Duration::from_millis(200) } else { Duration::ZERO };
            let spec = PodSpec { service: "svc".into(), name: format!("svc-{i}"), delay };
            pods.push(Pod::start("127.0.0.1:0".parse()?, spec).await?);
        }
        let addrs: Vec<SocketAddr> = pods.iter().map(|p| p.addr).collect();
        let gw = start_gateway(&opts.gateway, &addrs, policy)?;
        let url = format!("http://{}/api/slow-pod", gw.addr);
        // Warm-up: connections and a first latency estimate for every pod.
        drive(&url, opts.rate, Duration::from_secs(1)).await?;
        let before: Vec<usize> = pods.iter().map(Pod::requests).collect();
        let (latency, errors, sent) = drive(&url, opts.rate, opts.duration).await?;
        let during: Vec<usize> = pods.iter().zip(&before).map(|(p, b)| p.requests() - b).collect();
        let total: usize = during.iter().sum();
        out.push(Outcome { label, latency, errors, slow_share: during[3] as f64 / total.max(1) as f64, sent });
        drop(gw);
    }
    Ok(out)
}
