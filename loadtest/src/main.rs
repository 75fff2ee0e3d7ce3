//! `edgegate-loadtest`: edgegate's load generator and benchmark scenarios.
//!
//!   edgegate-loadtest load --url http://127.0.0.1:8080/api/x --rate 2000 --duration 10 [--http2] [--json out.json]
//!   edgegate-loadtest load --url http://127.0.0.1:8080/api/x --max --connections 64 --duration 10
//!
//! `load` is an open-loop, fixed-rate generator (latency from each request's intended send
//! time, so coordinated omission is corrected) or, with `--max`, a closed-loop maximum
//! throughput run. It prints p50/p90/p99/p99.9/max, the achieved rate and errors by kind,
//! and writes the same as JSON with `--json`. Loopback only, bounded in time and count.
//!
//!   edgegate-loadtest scenario NAME|all [--duration 8] [--runs 3] [--rate 2000] [--smoke]
//!
//! runs one of the scenarios in `scenarios.rs` against the release gateway binary
//! (`loadtest/run` builds it and pins processes to cores), writing `loadtest/results/NAME.json`.
//!
//!   edgegate-loadtest pod --count 4 --latency lognormal:2ms:10ms --error-rate 0.01
//!
//! serves load-test pods (latency distribution, injected 503s and resets) until interrupted.
//!
//!   edgegate-loadtest train --gateway target/pgo-gen/.../edgegate [--seconds 30]
//!
//! drives the workload a profile-guided build learns from (see `scripts/build-pgo.sh`).
//!
//!   edgegate-loadtest stalls [--seconds 5] [--sleep-us 200] [--json out.json]
//!
//! measures the machine's own stalls per core (see `stalls.rs`): what any server's tail on
//! this machine is measured against.
//!
//!   edgegate-loadtest handshakes --addr 127.0.0.1:8443 --clients 2000 --connections 20000 [--no-resume] [--tls12] [--server-pid PID]
//!
//! opens new HTTPS connections (a handshake and one request each) from many clients with
//! session stores of their own, and reports how many resumed and, with `--server-pid`, the
//! server's CPU per connection (see `handshakes.rs`).
//!
//!   edgegate-loadtest report
//!
//! regenerates the tables in docs/benchmarks.md from those files and criterion's estimates.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

mod cpu;
mod gen;
mod handshakes;
mod pod;
mod procs;
mod report;
mod scenarios;
mod stalls;
mod tls;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[derive(Parser)]
#[command(name = "edgegate-loadtest", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Drive load at one URL (loopback only) and report latency percentiles and errors.
    Load {
        /// http://127.0.0.1:PORT/path (https:// with --http2 for h2 over TLS).
        #[arg(long)]
        url: String,
        /// Requests per second, open loop. Ignored with --max.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Closed loop: each connection sends its next request as soon as it is answered.
        #[arg(long)]
        max: bool,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// HTTP/1.1 connections, or HTTP/2 concurrent streams.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// HTTP/2 (over TLS with ALPN for https:// URLs, prior knowledge for http://).
        #[arg(long)]
        http2: bool,
        /// Stop after this many requests.
        #[arg(long, default_value_t = 10_000_000)]
        requests: u64,
        /// Extra request header, `name: value` (repeatable). Each `{n}` in a value is replaced
        /// by six base64url characters of the request's number, a value that differs each time;
        /// each `{ip}` by an address in 10.0.0.0/8 from it (e.g. `x-forwarded-for: {ip}`: a
        /// client of its own each time); each `{line}` by a line of `--lines`, the request's
        /// number modulo their count.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// A file whose lines `{line}` in a header takes in turn (e.g. bearer tokens each
        /// valid and each new, from `issuer --tokens N`).
        #[arg(long)]
        lines: Option<PathBuf>,
        /// The status an answer must have to count as served (others count as errors; without
        /// it, any 2xx); the latency percentiles are the served answers'.
        #[arg(long)]
        expect: Option<u16>,
        /// Write the result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Serve load-test pods on free loopback ports until interrupted (or for --seconds).
    Pod {
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// none, fixed:5ms, uniform:1ms:3ms or lognormal:MEDIAN:P99.
        #[arg(long, default_value = "none")]
        latency: String,
        /// Share of requests answered 503.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Share of requests whose connection is dropped unanswered.
        #[arg(long, default_value_t = 0.0)]
        reset_rate: f64,
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Run a scenario (or `all`) and write loadtest/results/NAME.json.
    Scenario {
        name: String,
        /// The gateway binary under test.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/edgegate"))]
        gateway: PathBuf,
        /// Seconds of load per measured phase.
        #[arg(long, default_value_t = 8)]
        duration: u64,
        /// Repetitions of the CPU measurements.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Open-loop rate for the fixed-rate scenarios.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        /// One short low-rate pass to prove the scenario works (no pinning).
        #[arg(long)]
        smoke: bool,
        /// Where the JSON results go.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
        out: PathBuf,
    },
    /// Drive the workload a profile-guided build learns from (`scripts/build-pgo.sh`) through
    /// a gateway binary — an instrumented one — and stop it with SIGTERM so that it writes
    /// its profile. Fails when the gateway errs; writes no result file.
    Train {
        #[arg(long)]
        gateway: PathBuf,
        /// Seconds of load in all (two thirds HTTP/1.1, one third HTTP/2 over TLS).
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Write a test issuer's JWKS (`DIR/jwks.json`) and the shipped policy (`DIR/policy/`),
    /// and print a citizen's bearer token for them (issuer `https://id.example.gov.cn`,
    /// audience `zwfw`): what a policy route needs, for `loadtest/scenarios/instructions.sh`.
    Issuer {
        dir: PathBuf,
        /// Print this many tokens, one a line, each for another citizen (`citizen-1`, …).
        #[arg(long, default_value_t = 1)]
        tokens: usize,
    },
    /// The machine's own stalls, with nothing else started: one probe thread per core, first
    /// spinning (a gap between two clock reads is time the thread did not run), then
    /// sleeping and waking again and again (the overshoot is how late it woke). Prints each
    /// core's stalls over 0.5, 1, 2 and 5 ms and the kernel's steal count meanwhile.
    Stalls {
        /// Seconds per mode.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// The sleeping probe's interval, in microseconds.
        #[arg(long, default_value_t = stalls::SLEEP_US)]
        sleep_us: u64,
        /// Write the result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// New HTTPS connections from many clients with session stores of their own: how many
    /// resumed, and the server's CPU per connection (loopback only).
    Handshakes {
        #[command(flatten)]
        plan: handshakes::Plan,
        /// Write the result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Regenerate the tables in docs/benchmarks.md from loadtest/results/ and criterion.
    Report {
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
        results: PathBuf,
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/benchmarks.md"))]
        doc: PathBuf,
    },
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

fn load(
    url: &str,
    mode: gen::Mode,
    duration: u64,
    connections: usize,
    http2: bool,
    requests: u64,
    (headers, lines, expect): (&[String], Vec<String>, Option<u16>),
) -> anyhow::Result<gen::Report> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let https = uri.scheme_str() == Some("https");
    if https && !http2 {
        bail!("https:// is supported with --http2 only");
    }
    let host = uri.host().context("URL without a host")?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let ip: std::net::IpAddr = if host == "localhost" { [127, 0, 0, 1].into() } else { host.parse()? };
    let addr = std::net::SocketAddr::new(ip, port);
    let mut template = gen::Template::get("request", uri.path_and_query().map_or("/", |p| p.as_str()));
    if let Some(status) = expect {
        template = template.expect(status);
    }
    for h in headers {
        let (name, value) = h.split_once(':').with_context(|| format!("header {h:?} is not `name: value`"))?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())?;
        if ["{n}", "{ip}", "{line}"].iter().any(|p| value.contains(p)) {
            template.varying.push((name, value.trim().to_owned()));
        } else {
            template.headers.push((name, value.trim().parse()?));
        }
    }
    if template.varying.iter().any(|(_, v)| v.contains("{line}")) && lines.is_empty() {
        bail!("a header takes {{line}} but --lines gave none");
    }
    template.lines = lines.into();
    let mut plan = gen::Plan::new(addr, vec![template], mode, Duration::from_secs(duration));
    plan.connections = connections;
    plan.max_requests = requests;
    plan.host = uri.authority().map_or_else(|| host.to_owned(), |a| a.to_string());
    plan.protocol = match (http2, https) {
        (false, _) => gen::Protocol::Http1,
        (true, true) => gen::Protocol::Http2Tls,
        (true, false) => gen::Protocol::Http2,
    };
    runtime()?.block_on(gen::run(plan))
}

/// Pins the calling thread, and every thread it starts later, to one core: called before a
/// scenario starts any thread, that is the whole process.
fn pin_to(core: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Load { url, rate, max, duration, connections, http2, requests, headers, lines, expect, json } => {
            let mode = if max { gen::Mode::Closed } else { gen::Mode::Open { rate } };
            let lines = match lines {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .lines()
                    .map(str::to_owned)
                    .collect(),
                None => Vec::new(),
            };
            let report = load(&url, mode, duration, connections, http2, requests, (&headers, lines, expect))?;
            println!("{}", report.summary());
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report.to_json())? + "\n")?;
            }
            Ok(())
        }
        Cmd::Pod { count, latency, error_rate, reset_rate, seconds } => {
            if !(0.0..=1.0).contains(&error_rate) || !(0.0..=1.0).contains(&reset_rate) || count == 0 || count > 64 {
                bail!("count must be 1..=64 and the rates between 0 and 1");
            }
            let behaviour = pod::Behaviour {
                latency: pod::Latency::parse(&latency)?,
                error_rate,
                reset_rate,
                ..Default::default()
            };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let handle = rt.handle().clone();
            rt.block_on(async {
                let mut pods = Vec::new();
                for _ in 0..count {
                    let p = pod::Pod::start(&handle, behaviour.clone()).await?;
                    println!("pod listening on http://{}", p.addr);
                    pods.push(p);
                }
                match seconds {
                    Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                    None => tokio::signal::ctrl_c().await?,
                }
                let served: u64 = pods.iter().map(pod::Pod::requests).sum();
                // Whoever started the pods may have stopped reading its output.
                let _ = writeln!(std::io::stdout(), "served {served} requests");
                anyhow::Ok(())
            })
        }
        Cmd::Scenario { name, gateway, duration, runs, rate, smoke, out } => {
            if !gateway.is_file() {
                bail!("no gateway binary at {} (loadtest/run builds it)", gateway.display());
            }
            if duration == 0 || duration > 120 || runs == 0 || runs > 10 || rate == 0 || rate > 200_000 {
                bail!("duration must be 1..=120 s, runs 1..=10, rate 1..=200000");
            }
            let two_cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1) >= 2;
            let pin = !smoke && two_cores;
            if pin {
                pin_to(0)?;
            }
            let opts = scenarios::Options {
                gateway,
                duration: if smoke { Duration::from_secs(1) } else { Duration::from_secs(duration) },
                runs: if smoke { 1 } else { runs },
                rate: if smoke { rate.min(100) } else { rate },
                smoke,
                pin,
            };
            // Pods get a thread of their own so they never wait on the generator.
            let pods = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let ctx = scenarios::Ctx { opts, pods: pods.handle().clone() };
            let names: Vec<&str> = if name == "all" { scenarios::ALL.to_vec() } else { vec![name.as_str()] };
            std::fs::create_dir_all(&out)?;
            let rt = runtime()?;
            for n in names {
                eprintln!("edgegate-loadtest: scenario {n}");
                let doc = rt.block_on(scenarios::run(&ctx, n)).with_context(|| format!("scenario {n}"))?;
                let path = out.join(format!("{n}.json"));
                std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
                println!("{n}: {}", path.display());
            }
            pods.shutdown_timeout(Duration::from_secs(1));
            Ok(())
        }
        Cmd::Train { gateway, seconds } => {
            if !gateway.is_file() || !(3..=600).contains(&seconds) {
                bail!("--gateway must be a file and --seconds 3..=600");
            }
            let opts = scenarios::Options {
                gateway,
                duration: Duration::from_secs(seconds),
                runs: 1,
                rate: 2000,
                smoke: false,
                pin: false,
            };
            let pods = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let ctx = scenarios::Ctx { opts, pods: pods.handle().clone() };
            let doc = runtime()?.block_on(scenarios::train(&ctx))?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
            pods.shutdown_timeout(Duration::from_secs(1));
            Ok(())
        }
        Cmd::Issuer { dir, tokens } => {
            println!("{}", scenarios::write_issuer(&dir)?);
            for i in 2..=tokens {
                println!("{}", scenarios::citizen_token(i)?);
            }
            Ok(())
        }
        Cmd::Handshakes { plan, json } => handshakes::run(plan, json.as_deref()),
        Cmd::Stalls { seconds, sleep_us, json } => {
            let doc = stalls::both(Duration::from_secs_f64(seconds), Duration::from_micros(sleep_us))?;
            for mode in ["spin", "sleep"] {
                print!("{}", stalls::summary(&doc[mode]));
            }
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
            }
            Ok(())
        }
        Cmd::Report { results, doc } => {
            report::render(&results, &doc, &PathBuf::from(ROOT).join("target/criterion"))?;
            println!("{} regenerated from {}", doc.display(), results.display());
            Ok(())
        }
    }
}
