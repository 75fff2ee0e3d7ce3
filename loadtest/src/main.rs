//! `edgegate-loadtest`: measurement tools for edgegate's benchmarks.
//!
//! Run line:
//!   edgegate-loadtest cpu-per-request --pid 1234 --url http://127.0.0.1:8080/api/x \
//!       --duration 8 --connections 64 [--wrk-cpu 0]
//!
//! `cpu-per-request` drives a fixed-length `wrk` run at one URL (loopback only) and
//! reads the server process's user and kernel CPU time from `/proc/PID/task/*/stat`
//! before and after, reporting CPU microseconds per request — the figure that holds
//! on noisy 2-core machines (see BENCH.md). Output is one JSON object on stdout.
//!
//!   edgegate-loadtest slow-pod [--gateway target/release/edgegate] [--rate 200] [--duration 10]
//!
//! `slow-pod` runs four demo pods (one +200 ms) behind the real gateway and compares
//! latency percentiles of `peak_ewma`, `round_robin` and the all-healthy baseline.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

mod cpu;
mod slow_pod;

#[derive(Parser)]
#[command(name = "edgegate-loadtest", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Four pods, one 200 ms slower: p50/p99/p99.9 for peak_ewma vs round_robin.
    SlowPod {
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/edgegate"))]
        gateway: std::path::PathBuf,
        /// Requests per second (open loop).
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Seconds of measured load per variant.
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// CPU µs per request of a server process under a bounded wrk load.
    CpuPerRequest {
        #[arg(long)]
        pid: u32,
        #[arg(long)]
        url: String,
        /// Seconds of load.
        #[arg(long, default_value_t = 8)]
        duration: u64,
        #[arg(long, default_value_t = 64)]
        connections: u32,
        /// Pin wrk to this CPU (the server under test should be on another).
        #[arg(long)]
        wrk_cpu: Option<u32>,
        /// Label for the result.
        #[arg(long, default_value = "server")]
        label: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::SlowPod { gateway, rate, duration } => {
            if rate == 0 || rate > 20_000 || duration == 0 || duration > 120 {
                bail!("rate must be 1..=20000 and duration 1..=120 s");
            }
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let opts = slow_pod::Options { gateway, rate, duration: Duration::from_secs(duration) };
            let outcomes = runtime.block_on(slow_pod::run(&opts))?;
            let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            let baseline = outcomes.first().map(|o| ms(&o.latency, 0.99)).unwrap_or(1.0);
            println!("| scenario ({rate} req/s, {duration} s, open loop) | p50 ms | p99 ms | p99.9 ms | max ms | p99 vs healthy | share to slow pod | errors |");
            println!("|---|---|---|---|---|---|---|---|");
            for o in &outcomes {
                let h = &o.latency;
                println!(
                    "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2} % | {} of {} |",
                    o.label,
                    ms(h, 0.5),
                    ms(h, 0.99),
                    ms(h, 0.999),
                    h.max() as f64 / 1000.0,
                    ms(h, 0.99) / baseline,
                    o.slow_share * 100.0,
                    o.errors,
                    o.sent
                );
            }
            Ok(())
        }
        Cmd::CpuPerRequest { pid, url, duration, connections, wrk_cpu, label } => {
            if !(url.starts_with("http://127.0.0.1") || url.starts_with("http://localhost")) {
                bail!("load goes to loopback only; got {url}");
            }
            if duration == 0 || duration > 120 {
                bail!("duration must be 1..=120 s");
            }
            let before = cpu::process_cpu(Path::new(&format!("/proc/{pid}")))?;
            let mut cmd = match wrk_cpu {
                Some(c) => {
                    let mut t = Command::new("taskset");
                    t.args(["-c", &c.to_string(), "wrk"]);
                    t
                }
                None => Command::new("wrk"),
            };
            let out = cmd
                .args(["-t1", &format!("-c{connections}"), &format!("-d{duration}s"), "--latency", &url])
                .output()
                .context("running wrk (apt-get install wrk)")?;
            let after = cpu::process_cpu(Path::new(&format!("/proc/{pid}")))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let requests = cpu::wrk_requests(&text).context("no request count in wrk output")?;
            let non_2xx = cpu::wrk_field(&text, "Non-2xx or 3xx responses:").unwrap_or(0);
            let errors = cpu::wrk_socket_errors(&text);
            let user = after.user.saturating_sub(before.user);
            let kernel = after.kernel.saturating_sub(before.kernel);
            let per = |d: Duration| d.as_secs_f64() * 1e6 / requests.max(1) as f64;
            let result = format!(
                "{{\"label\":\"{label}\",\"requests\":{requests},\"rps\":{:.0},\"non_2xx\":{non_2xx},\"socket_errors\":{errors},\"user_us_per_req\":{:.2},\"kernel_us_per_req\":{:.2},\"total_us_per_req\":{:.2},\"p50\":\"{}\",\"p99\":\"{}\"}}",
                requests as f64 / duration as f64,
                per(user),
                per(kernel),
                per(user + kernel),
                cpu::wrk_percentile(&text, "50%").unwrap_or_default(),
                cpu::wrk_percentile(&text, "99%").unwrap_or_default(),
            );
            println!("{result}");
            Ok(())
        }
    }
}
