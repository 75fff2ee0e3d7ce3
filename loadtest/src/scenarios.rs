//! The scenarios: each starts everything it needs (the gateway binary, pods, redis-server,
//! peers) on free loopback ports, drives load with [`crate::gen`], stops it all, and
//! returns one JSON document that `report` turns into docs/benchmarks.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::runtime::Handle;

use crate::cpu::CpuTime;
use crate::gen::{self, Mode, Plan, Protocol, Report, Template};
use crate::pod::{Behaviour, Latency, Pod};
use crate::procs::{Gateway, Peer, PeerRole, Redis, RequestIds, Scratch, TlsFiles};

pub const ALL: &[&str] = &[
    "proxy",
    "cache-hit",
    "h2",
    "policy",
    "mixed",
    "slow-pod",
    "pod-failure",
    "reload-storm",
    "redis-down",
    "startup",
];

pub struct Options {
    pub gateway: PathBuf,
    /// Seconds of load per measured phase.
    pub duration: Duration,
    /// Repetitions of the CPU measurements (medians are quoted).
    pub runs: usize,
    /// Open-loop rate where a scenario has a fixed one.
    pub rate: u32,
    /// One short, low-rate pass (the smoke test): no pinning, one run, few connections.
    pub smoke: bool,
    /// Pin the server under test to core 1 and this process to core 0.
    pub pin: bool,
}

pub struct Ctx {
    pub opts: Options,
    /// The runtime the pods run on (a thread of their own).
    pub pods: Handle,
}

impl Ctx {
    fn core(&self) -> Option<u32> {
        self.opts.pin.then_some(1)
    }

    fn connections(&self) -> usize {
        if self.opts.smoke {
            4
        } else {
            64
        }
    }

    async fn pods(&self, behaviours: Vec<Behaviour>) -> anyhow::Result<Vec<Pod>> {
        let mut pods = Vec::new();
        for b in behaviours {
            pods.push(Pod::start(&self.pods, b).await?);
        }
        Ok(pods)
    }

    fn gateway(&self, name: &str, yaml: &str) -> anyhow::Result<Gateway> {
        Gateway::start(&self.opts.gateway, Scratch::new(name)?, yaml, self.core())
    }

    /// A measured phase: the scenario's duration.
    fn plan(&self, addr: SocketAddr, templates: Vec<Template>, mode: Mode) -> Plan {
        self.plan_for(addr, templates, mode, self.opts.duration)
    }

    /// A phase of its own length (warm-ups, fills, checks).
    fn plan_for(&self, addr: SocketAddr, templates: Vec<Template>, mode: Mode, duration: Duration) -> Plan {
        let mut plan = Plan::new(addr, templates, mode, duration);
        plan.connections = self.connections();
        plan
    }
}

/// The public listener on a free loopback port, plain HTTP.
const PLAIN: &str = "address: \"127.0.0.1:0\"";
/// The same, counted as TLS-terminated in front of the gateway (the policy wants that).
const BEHIND_TLS: &str = "address: \"127.0.0.1:0\", behind_tls: true";

/// The gateway config every scenario starts from: one listener named `public` with the
/// given settings (`PLAIN`, `BEHIND_TLS`, or an address/TLS of the scenario's own), one
/// worker thread, no access log.
fn base_yaml(listener: &str, extra: &str, upstreams: &str, routes: &str) -> String {
    format!(
        "listeners: [{{name: public, {listener}}}]\n\
         admin: {{address: \"127.0.0.1:0\"}}\n\
         runtime: {{threads: 1, work_stealing: false}}\n\
         logging: {{access_log: false}}\n\
         {extra}\
         upstreams:\n{upstreams}\
         routes:\n{routes}"
    )
}

fn group(name: &str, pods: &[&Pod], options: &str) -> String {
    let eps: Vec<String> = pods.iter().map(|p| format!("{{address: \"{}\"}}", p.addr)).collect();
    format!("  {name}: {{endpoints: [{}]{options}}}\n", eps.join(", "))
}

/// A server whose CPU time can be read.
#[derive(Clone, Copy)]
enum Target<'a> {
    Gateway(&'a Gateway),
    /// Another gateway measured beside the first, under a name of its own (`proxy`: the same
    /// config without the audit log).
    Variant(&'a Gateway, &'static str),
    Peer(&'a Peer),
}

impl Target<'_> {
    fn name(&self) -> &'static str {
        match self {
            Target::Gateway(_) => "edgegate",
            Target::Variant(_, name) => name,
            Target::Peer(p) => p.name,
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Target::Gateway(g) | Target::Variant(g, _) => g.public,
            Target::Peer(p) => p.addr,
        }
    }

    fn cpu(&self) -> anyhow::Result<CpuTime> {
        match self {
            Target::Gateway(g) | Target::Variant(g, _) => g.cpu(),
            Target::Peer(p) => p.cpu(),
        }
    }
}

/// One load run with the server's CPU time read before and after.
async fn measured(target: &Target<'_>, plan: Plan) -> anyhow::Result<(Report, CpuTime)> {
    let before = target.cpu()?;
    let report = gen::run(plan).await?;
    let after = target.cpu()?;
    let used =
        CpuTime { user: after.user.saturating_sub(before.user), kernel: after.kernel.saturating_sub(before.kernel) };
    Ok((report, used))
}

fn per_request_us(d: Duration, requests: u64) -> f64 {
    d.as_secs_f64() * 1e6 / requests.max(1) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `x` to two decimals, as every figure in the results is kept.
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// CPU µs per request of each target, closed loop, alternating targets run by run so
/// drift in machine load hits all alike; medians over `runs`.
async fn cpu_table(
    ctx: &Ctx,
    targets: &[Target<'_>],
    templates: &[Template],
    protocol: Protocol,
) -> anyhow::Result<Vec<Value>> {
    // Warm-up: connections, caches, the first latency estimates.
    for t in targets {
        let warm = Duration::from_millis(if ctx.opts.smoke { 200 } else { 1000 });
        let mut plan = ctx.plan_for(t.addr(), templates.to_vec(), Mode::Closed, warm);
        plan.protocol = protocol;
        gen::run(plan).await?;
    }
    let mut samples: Vec<Vec<(f64, f64, f64, u64)>> = vec![Vec::new(); targets.len()];
    // What each target's errors were, over its runs (a status not expected, a timeout…).
    let mut kinds: Vec<std::collections::BTreeMap<String, u64>> = vec![Default::default(); targets.len()];
    for _ in 0..ctx.opts.runs {
        for (i, t) in targets.iter().enumerate() {
            let mut plan = ctx.plan(t.addr(), templates.to_vec(), Mode::Closed);
            plan.protocol = protocol;
            let (report, cpu) = measured(t, plan).await?;
            samples[i].push((
                report.achieved_rps(),
                per_request_us(cpu.user, report.sent),
                per_request_us(cpu.kernel, report.sent),
                report.error_count(),
            ));
            for (kind, n) in &report.errors {
                *kinds[i].entry(kind.clone()).or_default() += n;
            }
        }
    }
    // Each target's CPU per request (user + kernel) run by run.
    let totals: Vec<Vec<f64>> = samples.iter().map(|s| s.iter().map(|x| x.1 + x.2).collect()).collect();
    // Each run's ratio to the first target in the same run: the targets of one run are
    // measured back to back, so a drift in the machine's speed between runs shows as a spread
    // of these rather than hiding in the medians' ratio.
    let first_runs = totals.first().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    let mut reference = None;
    for (((t, s), runs), kinds) in targets.iter().zip(samples).zip(totals).zip(kinds) {
        let vs_first_runs: Vec<f64> =
            runs.iter().zip(&first_runs).map(|(run, first)| round2(run / first.max(1e-9))).collect();
        let total = median(runs);
        let reference = *reference.get_or_insert(total);
        rows.push(json!({
            "server": t.name(),
            "rps": median(s.iter().map(|x| x.0).collect()).round(),
            "user_us": round2(median(s.iter().map(|x| x.1).collect())),
            "kernel_us": round2(median(s.iter().map(|x| x.2).collect())),
            "total_us": round2(total),
            "vs_first": round2(total / reference.max(1e-9)),
            "vs_first_runs": vs_first_runs,
            "errors": s.iter().map(|x| x.3).sum::<u64>(),
            "error_kinds": kinds,
            "runs": s.len(),
        }));
    }
    Ok(rows)
}

/// Open-loop latency of each target at fractions of the weakest one's capacity, `runs`
/// times each (targets alternating), reporting per-quantile medians over the runs — a
/// single run's p99 on a shared 2-core machine swings by a factor of several.
async fn latency_table(
    ctx: &Ctx,
    targets: &[Target<'_>],
    templates: &[Template],
    capacity: f64,
    baseline: Option<SocketAddr>,
    protocol: Protocol,
) -> anyhow::Result<Vec<Value>> {
    let fractions: &[f64] = if ctx.opts.smoke { &[0.5] } else { &[0.25, 0.5, 0.75] };
    let mut rows = Vec::new();
    for &f in fractions {
        let rate = if ctx.opts.smoke { ctx.opts.rate } else { (capacity * f).max(1.0) as u32 };
        rows.extend(latency_rows_at(ctx, targets, templates, f, rate, baseline, protocol).await?);
    }
    Ok(rows)
}

/// Each server stronger than the weakest at half of *its own* closed-loop capacity (the
/// weakest one's row at 50 % is in [`latency_table`] already), each beside the same rate
/// sent straight to the pod: how much p99 a server adds when it is as busy as the gateway
/// is in the 50 % row — what the machine itself does to a tail at that load.
async fn own_capacity_table(
    ctx: &Ctx,
    targets: &[Target<'_>],
    templates: &[Template],
    capacities: &[f64],
    baseline: Option<SocketAddr>,
    protocol: Protocol,
) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    if ctx.opts.smoke {
        return Ok(rows);
    }
    let weakest = capacities.iter().copied().fold(f64::MAX, f64::min);
    for (t, &c) in targets.iter().zip(capacities) {
        if c <= weakest {
            continue;
        }
        let rate = (c * 0.5).max(1.0) as u32;
        rows.extend(latency_rows_at(ctx, std::slice::from_ref(t), templates, 0.5, rate, baseline, protocol).await?);
    }
    Ok(rows)
}

/// One load level of [`latency_table`]: `targets` (and the pod directly, when given) at
/// `rate`, `runs` times each, alternating.
async fn latency_rows_at(
    ctx: &Ctx,
    targets: &[Target<'_>],
    templates: &[Template],
    f: f64,
    rate: u32,
    baseline: Option<SocketAddr>,
    protocol: Protocol,
) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    let mut addrs = Vec::new();
    // The pod itself speaks plain HTTP/1.1; its CPU is not the question.
    if let Some(addr) = baseline {
        names.push("direct to pod");
        addrs.push((addr, Protocol::Http1, None));
    }
    for t in targets {
        names.push(t.name());
        addrs.push((t.addr(), protocol, Some(t)));
    }
    let mut runs: Vec<Vec<Report>> = vec![Vec::new(); addrs.len()];
    // Each server's CPU µs per request (user, kernel) at this rate, run by run: every
    // server here carries the same load, so unlike the closed loop's figures these
    // compare work at an equal request rate.
    let mut cpu: Vec<Vec<(f64, f64)>> = vec![Vec::new(); addrs.len()];
    for _ in 0..ctx.opts.runs {
        for (i, (addr, protocol, target)) in addrs.iter().enumerate() {
            let mut plan = ctx.plan(*addr, templates.to_vec(), Mode::Open { rate });
            plan.protocol = *protocol;
            match target {
                Some(t) => {
                    let (report, used) = measured(t, plan).await?;
                    cpu[i].push((per_request_us(used.user, report.sent), per_request_us(used.kernel, report.sent)));
                    runs[i].push(report);
                }
                None => runs[i].push(gen::run(plan).await?),
            }
        }
    }
    let quantiles = |reports: &[Report]| -> [f64; 3] {
        [0.5, 0.99, 0.999].map(|q| median(reports.iter().map(|r| r.ms(q)).collect()))
    };
    let direct = baseline.map(|_| quantiles(&runs[0]));
    for ((name, reports), cpu) in names.iter().zip(&runs).zip(&cpu) {
        let [p50, p99, p999] = quantiles(reports);
        let cpu_us = (!cpu.is_empty()).then(|| {
            json!({
                "user": round2(median(cpu.iter().map(|c| c.0).collect())),
                "kernel": round2(median(cpu.iter().map(|c| c.1).collect())),
                "total": round2(median(cpu.iter().map(|c| c.0 + c.1).collect())),
            })
        });
        let added = |i: usize, v: f64| direct.filter(|_| *name != "direct to pod").map(|d| round2(v - d[i]));
        let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
        for r in reports {
            for (k, v) in &r.errors {
                *errors.entry(k.clone()).or_default() += v;
            }
        }
        rows.push(json!({
            "load": f, "rate": rate, "server": name, "runs": reports.len(),
            "result": {
                "sent": reports.iter().map(|r| r.sent).sum::<u64>(),
                "ok": reports.iter().map(|r| r.ok).sum::<u64>(),
                "errors": errors,
                "latency_ms": {
                    "p50": round2(p50), "p99": round2(p99), "p99_9": round2(p999),
                    "max": round2(reports.iter().map(|r| r.latency.max() as f64 / 1000.0).fold(0.0, f64::max)),
                },
                "p99_per_run": reports.iter().map(|r| round2(r.ms(0.99))).collect::<Vec<_>>(),
                // Where the p99 went (medians over the runs): waiting in the generator for a
                // free connection, and from sending to the answer.
                "p99_split_ms": {
                    "queued": round2(median(reports.iter().map(|r| gen::quantile_ms(&r.queued, 0.99)).collect())),
                    "service": round2(median(reports.iter().map(|r| gen::quantile_ms(&r.service, 0.99)).collect())),
                },
            },
            "added_ms": {"p50": added(0, p50), "p99": added(1, p99), "p99_9": added(2, p999)},
            "cpu_us": cpu_us,
        }));
    }
    Ok(rows)
}

/// The three scenarios that put edgegate beside nginx and HAProxy configured alike.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Peered {
    /// Plain HTTP/1.1 GETs proxied to the pod.
    Proxy,
    /// Answered from edgegate's cache; the peers answer the same body themselves.
    CacheHit,
    /// HTTP/2 over TLS from the client (64 streams on 4 connections), keep-alive HTTP/1.1
    /// to the pod; everyone terminates TLS with the same certificate.
    H2,
}

/// `proxy`, `cache-hit` and `h2`: CPU per request side by side, then latency at fractions
/// of the weakest server's capacity.
pub async fn peered(ctx: &Ctx, kind: Peered) -> anyhow::Result<Value> {
    let pods = ctx.pods(vec![Behaviour::default()]).await?;
    let pod = &pods[0];
    let route_cache = if kind == Peered::CacheHit { ", cache: {ttl: 1h}" } else { "" };
    let tls = if kind == Peered::H2 { Some(TlsFiles::self_signed()?) } else { None };
    let listener = match &tls {
        Some(t) => format!(
            "{PLAIN}, tls: {{certificates: [{{cert: \"{}\", key: \"{}\"}}]}}",
            t.cert.display(),
            t.key.display()
        ),
        None => PLAIN.to_owned(),
    };
    // A proxied request is audited, as in production (its record committed to SQLite by
    // the writer thread): nginx beside it writes no record.
    let audit = if kind == Peered::Proxy { AUDIT_YAML } else { "" };
    let yaml = |audit: &str| {
        base_yaml(
            &listener,
            audit,
            &group("permits", &[pod], ""),
            &format!(
                "  - {{name: permits, match: {{path_prefix: /api/}}, upstream: permits, public: true{route_cache}}}\n"
            ),
        )
    };
    let gw = ctx.gateway("peered", &yaml(audit))?;
    // `proxy`: the same gateway without the audit log as well, in the closed-loop table
    // only — what the log costs, beside the work nginx and HAProxy do not do at all.
    let unaudited = if kind == Peered::Proxy { Some(ctx.gateway("peered-unaudited", &yaml(""))?) } else { None };
    let role = if kind == Peered::CacheHit { PeerRole::Static } else { PeerRole::Proxy(pod.addr) };
    let nginx = Peer::nginx(role, tls.as_ref(), ctx.core())?;
    let haproxy = Peer::haproxy(role, tls.as_ref(), ctx.core())?;
    // `proxy`: nginx also doing the forwarding work edgegate does per request (the same
    // headers to the pod, a request id on the answer), in the closed-loop table only — the
    // yardstick above is nginx forwarding the request as sent, which is less work. Once with
    // nginx's own request ids and once with a fixed id: the same bytes, no id made.
    let forwarding = if kind == Peered::Proxy {
        vec![
            Peer::nginx_forwarding(pod.addr, ctx.core(), RequestIds::Made)?,
            Peer::nginx_forwarding(pod.addr, ctx.core(), RequestIds::Fixed)?,
        ]
    } else {
        Vec::new()
    };
    // nginx first: ratios are against it.
    let targets = [Target::Peer(&nginx), Target::Peer(&haproxy), Target::Gateway(&gw)];
    let mut cpu_targets = targets.to_vec();
    cpu_targets.extend(unaudited.as_ref().map(|g| Target::Variant(g, UNAUDITED)));
    cpu_targets.extend(forwarding.iter().map(Target::Peer));
    let templates = vec![Template::get("get", "/api/permits/status")];
    let protocol = if kind == Peered::H2 { Protocol::Http2Tls } else { Protocol::Http1 };
    let cpu = cpu_table(ctx, &cpu_targets, &templates, protocol).await?;
    // Stopped once measured: nothing of it shares the core during the latency runs. The
    // gateway without its log stays for the latency table: how much of the gateway's tail
    // is the log's (it idles while the others run, as the gateway does).
    drop(cpu_targets);
    drop(forwarding);
    // The weakest of the servers the latency table compares (the gateway without its audit
    // log is not among them).
    let capacity = cpu
        .iter()
        .filter(|r| targets.iter().any(|t| r["server"] == t.name()))
        .filter_map(|r| r["rps"].as_f64())
        .fold(f64::MAX, f64::min);
    let baseline = (kind != Peered::CacheHit).then_some(pod.addr);
    // `proxy`'s tail is a target: first the machine's own stalls, with every server and pod
    // started and idle, so that a run's tail can be read against what the cores themselves
    // lose (a host that deschedules a virtual CPU, a kernel thread taking a core).
    let machine_stalls = if kind == Peered::Proxy && ctx.opts.pin {
        let length = Duration::from_secs(4);
        tokio::task::spawn_blocking(move || crate::stalls::both(length, Duration::from_micros(crate::stalls::SLEEP_US)))
            .await??
    } else {
        Value::Null
    };
    let mut latency_targets = targets.to_vec();
    latency_targets.extend(unaudited.as_ref().map(|g| Target::Variant(g, UNAUDITED)));
    let latency = latency_table(ctx, &latency_targets, &templates, capacity, baseline, protocol).await?;
    drop(unaudited);
    let capacities: Vec<f64> = targets
        .iter()
        .map(|t| cpu.iter().find(|r| r["server"] == t.name()).and_then(|r| r["rps"].as_f64()).unwrap_or(0.0))
        .collect();
    let own = own_capacity_table(ctx, &targets, &templates, &capacities, baseline, protocol).await?;
    Ok(json!({
        "what": match kind {
            Peered::Proxy => "edgegate proxying GETs (routing, request ids, forwarding headers, metrics, one audit record per request committed to SQLite) beside nginx and HAProxy as keep-alive reverse proxies; also the same gateway without its audit log, and in the closed loop nginx adding the same forwarding headers and request id as edgegate (with its own request ids, and with a fixed one)",
            Peered::CacheHit => "edgegate answering from its cache beside nginx and HAProxy answering the same body themselves",
            Peered::H2 => "HTTP/2 over TLS 1.3 from the client (64 streams on 4 connections, ECDSA P-256 certificate), keep-alive HTTP/1.1 to the pod: edgegate beside nginx and HAProxy terminating TLS",
        },
        "cpu": cpu,
        "capacity_rps": capacity.round(),
        "latency": latency,
        "latency_own_capacity": own,
        "machine_stalls": machine_stalls,
    }))
}

/// The `proxy` table's row for the gateway measured without its audit log.
pub const UNAUDITED: &str = "edgegate, audit off";

/// The shipped policy allows citizens only while the audit log accepts records.
const ISSUER_YAML: &str = "policies: {dir: policy}\nidentity: {jwt: {issuer: \"https://id.example.gov.cn\", audience: zwfw, keys: jwks.json}}\naudit: {db: state/audit.db}\n";
/// The audit log (`synchronous: full`, the default) in the gateway's state directory, as
/// deployed: not in the config's directory, whose every write event the config watcher's
/// thread would read (and drop).
const AUDIT_YAML: &str = "audit: {db: state/audit.db}\n";

/// Writes the shipped policy and the issuer's JWKS beside the gateway config.
fn policy_files(dir: &std::path::Path, issuer: &edgegate_filters::testing::Issuer) -> anyhow::Result<()> {
    let policy = dir.join("policy");
    std::fs::create_dir_all(&policy)?;
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/policy/government.rego");
    std::fs::copy(shipped, policy.join("government.rego")).context("copying the shipped policy")?;
    std::fs::write(dir.join("jwks.json"), &issuer.jwks)?;
    Ok(())
}

/// For the `issuer` command: a test issuer's JWKS and the shipped policy written into `dir`
/// (`jwks.json`, `policy/`), and one citizen's ES256 token for them.
pub fn write_issuer(dir: &std::path::Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let issuer = issuer();
    policy_files(dir, issuer)?;
    // Valid for an hour: a callgrind run of a few thousand requests outlasts the default five minutes.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(issuer.token(jsonwebtoken::Algorithm::ES256, json!({"sub": "citizen-1", "exp": now + 3600})))
}

/// A token of [`write_issuer`]'s issuer for `citizen-N`, valid for an hour.
pub fn citizen_token(n: usize) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    Ok(issuer().token(jsonwebtoken::Algorithm::ES256, json!({"sub": format!("citizen-{n}"), "exp": now + 3600})))
}

fn bearer(t: Template, token: &str) -> anyhow::Result<Template> {
    t.header("authorization", &format!("Bearer {token}"))
}

fn citizens(issuer: &edgegate_filters::testing::Issuer, n: usize, path: &str) -> anyhow::Result<Vec<Template>> {
    (0..n)
        .map(|i| {
            let token = issuer.token(jsonwebtoken::Algorithm::ES256, json!({"sub": format!("citizen-{i}")}));
            bearer(Template::get("citizen", path), &token)
        })
        .collect()
}

/// A gateway whose routes may name the shipped policy: the issuer's keys, the policy and an
/// audit log beside its config; `listener` is [`BEHIND_TLS`] or a TLS listener of its own.
fn policy_gateway(ctx: &Ctx, listener: &str, pods: &[&Pod], routes: &str, extra: &str) -> anyhow::Result<Gateway> {
    let issuer_dir = Scratch::new("policy")?;
    let yaml = base_yaml(listener, &format!("{ISSUER_YAML}{extra}"), &group("svc", pods, ""), routes);
    policy_files(&issuer_dir.0, issuer())?;
    Gateway::start(&ctx.opts.gateway, issuer_dir, &yaml, ctx.core())
}

static ISSUER: std::sync::OnceLock<edgegate_filters::testing::Issuer> = std::sync::OnceLock::new();

fn issuer() -> &'static edgegate_filters::testing::Issuer {
    ISSUER.get_or_init(edgegate_filters::testing::Issuer::new)
}

/// `policy`: JWT verification + the shipped Rego policy's decision on every request (made
/// once per token, then remembered, as the gateway does for such a policy), beside the same
/// gateway proxying a public route, so the difference is what identity and policy cost;
/// and requests without a token on an `identity: optional` route, which the shipped policy
/// refuses (403: its decision remembered by each worker).
pub async fn policy(ctx: &Ctx) -> anyhow::Result<Value> {
    let pods = ctx.pods(vec![Behaviour::default()]).await?;
    let issuer = issuer();
    let routes = "  - {name: services, match: {path_prefix: /api/}, upstream: svc, policy: data.government.digital.allow}\n  - {name: open, match: {path_prefix: /open/}, upstream: svc, public: true}\n  - {name: catalogue, match: {path_prefix: /catalogue/}, upstream: svc, policy: data.government.digital.allow, identity: optional}\n";
    // The generator is one address: answered at over 100,000 a second (the refusals), its
    // connections, each closed after `keepalive_requests` (1,000), come back faster than one
    // client may open them (`new_connections_per_client`, 100 a second), and are refused.
    let one_client = "limits: {new_connections_per_client: {rate: 100000, burst: 100000}}\n";
    let gw = policy_gateway(ctx, BEHIND_TLS, &[&pods[0]], routes, one_client)?;
    // 200 citizens: tokens are verified once each, then remembered.
    let users = citizens(issuer, 200, "/api/permits/status")?;
    let public = [Target::Gateway(&gw)];
    let open = cpu_table(ctx, &public, &[Template::get("public", "/open/status")], Protocol::Http1).await?;
    let guarded = cpu_table(ctx, &public, &users, Protocol::Http1).await?;
    let no_token = [Template::get("no_token", "/catalogue/status").expect(403)];
    let optional = cpu_table(ctx, &public, &no_token, Protocol::Http1).await?;
    let capacity = guarded.first().and_then(|r| r["rps"].as_f64()).unwrap_or(1.0);
    let latency = latency_table(ctx, &public, &users, capacity, Some(pods[0].addr), Protocol::Http1).await?;
    let anonymous = vec![Template::get("anonymous", "/api/permits/status").expect(401)];
    let rate = ctx.opts.rate.min(500);
    let refused = gen::run(ctx.plan_for(gw.public, anonymous, Mode::Open { rate }, Duration::from_secs(1))).await?;
    Ok(json!({
        "what": "GET with a citizen's ES256 token (200 users), JWT verified and the shipped Rego policy deciding (each token's decision remembered after its first request, as the gateway does for a policy that decides alike on alike input), beside a public route on the same gateway; and GETs without a token on an identity: optional route, refused by the shipped policy (403)",
        "cpu_public": open,
        "cpu_policy": guarded,
        "cpu_anonymous": optional,
        "policy_cost_us": round2(guarded[0]["total_us"].as_f64().unwrap_or(0.0) - open[0]["total_us"].as_f64().unwrap_or(0.0)),
        "latency": latency,
        "anonymous_refused": refused.to_json(),
    }))
}

/// The routes of a day's traffic in miniature: a public catalogue answered from the cache,
/// and citizens' services behind a token and the shipped policy.
const DAY_ROUTES: &str = "  - {name: catalogue, match: {path_prefix: /catalogue/}, upstream: svc, public: true, cache: {ttl: 1h}}\n  - {name: services, match: {path_prefix: /api/}, upstream: svc, policy: data.government.digital.allow}\n";

/// The requests of that day, for [`DAY_ROUTES`]: 60 % cache hits, 20 % proxied GETs with a
/// citizen's token, 5 % admin tokens the policy denies, 5 % without a token, 10 % POSTed forms.
fn day_mix(issuer: &edgegate_filters::testing::Issuer) -> anyhow::Result<Vec<Template>> {
    let citizen = issuer.token(jsonwebtoken::Algorithm::ES256, json!({}));
    let admin = issuer.token(jsonwebtoken::Algorithm::ES256, json!({"sub": "admin-1", "role": "admin"}));
    let mut form = bearer(Template::get("form_post", "/api/forms/residence"), &citizen)?
        .header("content-type", "application/json")?
        .weight(10);
    form.method = http::Method::POST;
    form.body = bytes::Bytes::from_static(br#"{"form":"residence","district":"7","applicant":"citizen-42"}"#);
    let mut templates: Vec<Template> =
        (0..20).map(|i| Template::get("cache_hit", &format!("/catalogue/services/{i}")).weight(3)).collect();
    templates.push(bearer(Template::get("proxied", "/api/permits/status"), &citizen)?.weight(20));
    templates.push(bearer(Template::get("denied", "/api/permits/status"), &admin)?.expect(403).weight(5));
    templates.push(Template::get("no_token", "/api/permits/status").expect(401).weight(5));
    templates.push(form);
    Ok(templates)
}

/// `mixed`: a day's traffic in miniature — cache hits, misses to the pods, policy denials,
/// requests without a token, and POSTed forms — open loop at a fixed rate.
pub async fn mixed(ctx: &Ctx) -> anyhow::Result<Value> {
    let pods = ctx
        .pods(
            (0..3)
                .map(|_| Behaviour {
                    latency: Latency::LogNormal { median: Duration::from_millis(2), p99: Duration::from_millis(10) },
                    ..Behaviour::default()
                })
                .collect(),
        )
        .await?;
    let refs: Vec<&Pod> = pods.iter().collect();
    let gw = policy_gateway(ctx, BEHIND_TLS, &refs, DAY_ROUTES, "")?;
    let templates = day_mix(issuer())?;
    let target = Target::Gateway(&gw);
    // Fill the cache first so that the catalogue requests are hits.
    gen::run(ctx.plan_for(gw.public, templates.clone(), Mode::Open { rate: 200 }, Duration::from_millis(500))).await?;
    let (report, cpu) = measured(&target, ctx.plan(gw.public, templates, Mode::Open { rate: ctx.opts.rate })).await?;
    Ok(json!({
        "what": "60 % cache hits, 20 % proxied GETs with a citizen token, 5 % admin tokens denied by policy, 5 % without a token, 10 % POSTed forms; pods log-normal 2 ms median / 10 ms p99",
        "rate": ctx.opts.rate,
        "result": report.to_json(),
        "cpu_us_per_request": round2(per_request_us(cpu.user + cpu.kernel, report.sent)),
    }))
}

/// `slow-pod`: four pods, one 200 ms slower; `peak_ewma` against `round_robin` and the
/// all-healthy baseline, open loop; and `peak_ewma` under closed-loop saturation (16
/// connections sending back to back), where the fast pods' queues must not make the slow
/// one look competitive (target: ≤ 0.5 % of requests to it).
pub async fn slow_pod(ctx: &Ctx) -> anyhow::Result<Value> {
    let healthy = Latency::LogNormal { median: Duration::from_micros(500), p99: Duration::from_millis(2) };
    let slow = Latency::Uniform(Duration::from_millis(200), Duration::from_millis(210));
    let mut rows = Vec::new();
    let mut baseline = None;
    for (label, slowed, policy, closed) in [
        ("all healthy, peak_ewma", false, "peak_ewma", false),
        ("one pod +200 ms, peak_ewma", true, "peak_ewma", false),
        ("one pod +200 ms, round_robin", true, "round_robin", false),
        ("one pod +200 ms, peak_ewma, closed loop, 16 connections", true, "peak_ewma", true),
    ] {
        let pods = ctx
            .pods(
                (0..4)
                    .map(|i| Behaviour {
                        latency: if slowed && i == 3 { slow } else { healthy },
                        ..Behaviour::default()
                    })
                    .collect(),
            )
            .await?;
        let refs: Vec<&Pod> = pods.iter().collect();
        let yaml = base_yaml(
            PLAIN,
            "",
            &group("svc", &refs, &format!(", balancer: {{policy: {policy}}}")),
            "  - {name: r, upstream: svc, public: true}\n",
        );
        let gw = ctx.gateway("slow-pod", &yaml)?;
        let templates = vec![Template::get("get", "/api/slow-pod")];
        // Enough connections that the slow pod's share never runs the generator out of
        // them: what queues is then the gateway's choice, not the client pool.
        let plan = |duration| {
            if closed {
                let mut p = ctx.plan_for(gw.public, templates.clone(), Mode::Closed, duration);
                p.connections = 16;
                return p;
            }
            let mut p = ctx.plan_for(gw.public, templates.clone(), Mode::Open { rate: ctx.opts.rate }, duration);
            p.connections = p.connections.max((f64::from(ctx.opts.rate) * 0.25 * 0.21 * 2.0) as usize);
            p
        };
        // Warm-up: connections and a first latency estimate for every pod.
        gen::run(plan(Duration::from_secs(1))).await?;
        let before: Vec<u64> = pods.iter().map(Pod::requests).collect();
        let report = gen::run(plan(ctx.opts.duration)).await?;
        let during: Vec<u64> = pods.iter().zip(&before).map(|(p, b)| p.requests() - b).collect();
        let p99 = report.ms(0.99);
        let base = *baseline.get_or_insert(p99);
        rows.push(json!({
            "variant": label,
            "result": report.to_json(),
            "p99_vs_healthy": round2(p99 / base.max(1e-9)),
            // Four decimals: the closed-loop target is a share of 0.5 %.
            "share_to_slow_pod": slowed.then(|| (during[3] as f64 / during.iter().sum::<u64>().max(1) as f64 * 1e4).round() / 1e4),
            "requests_per_pod": during,
        }));
    }
    Ok(json!({
        "what": "four pods (log-normal 0.5 ms median / 2 ms p99), one answering 200-210 ms; open loop, and closed loop with 16 connections",
        "rate": ctx.opts.rate,
        "variants": rows,
    }))
}

/// `pod-failure`: one of four pods killed a third of the way into a run and brought back
/// at two thirds; retries and ejection should hide it from clients.
pub async fn pod_failure(ctx: &Ctx) -> anyhow::Result<Value> {
    let mut pods = ctx.pods((0..4).map(|_| Behaviour::default()).collect()).await?;
    let refs: Vec<&Pod> = pods.iter().collect();
    let options = ", health: {path: /healthz, interval: 250ms, timeout: 200ms, healthy_threshold: 1}, outlier: {consecutive_failures: 2, base_ejection_time: 500ms}";
    let yaml = base_yaml(PLAIN, "", &group("svc", &refs, options), "  - {name: r, upstream: svc, public: true}\n");
    let gw = ctx.gateway("pod-failure", &yaml)?;
    let templates = vec![Template::get("get", "/api/pod-failure")];
    let warm = Duration::from_millis(500);
    gen::run(ctx.plan_for(gw.public, templates.clone(), Mode::Open { rate: ctx.opts.rate }, warm)).await?;
    let third = ctx.opts.duration / 3;
    let plan = ctx.plan(gw.public, templates, Mode::Open { rate: ctx.opts.rate });
    let chaos = async {
        tokio::time::sleep(third).await;
        pods[0].stop();
        tokio::time::sleep(third).await;
        pods[0].start_again().await?;
        anyhow::Ok(pods[0].requests())
    };
    let (report, back_at) = tokio::join!(gen::run(plan), chaos);
    let (report, back_at) = (report?, back_at?);
    let served_after = pods[0].requests() - back_at;
    Ok(json!({
        "what": "four pods, one killed (listener and connections closed) at 1/3 of the run and restarted at 2/3; GETs retried on connect failures, active health checks every 250 ms",
        "rate": ctx.opts.rate,
        "result": report.to_json(),
        "restarted_pod_requests_after_restart": served_after,
    }))
}

/// `reload-storm`: the config rewritten and reloaded every 100 ms under load.
pub async fn reload_storm(ctx: &Ctx) -> anyhow::Result<Value> {
    let pods = ctx.pods(vec![Behaviour::default(), Behaviour::default()]).await?;
    let refs: Vec<&Pod> = pods.iter().collect();
    let upstreams = group("svc", &refs, "");
    let routes = |n: usize| {
        let mut r = String::from("  - {name: r, match: {path_prefix: /api/}, upstream: svc, public: true}\n");
        for i in 0..n {
            r.push_str(&format!(
                "  - {{name: extra-{i}, match: {{path_prefix: /extra/{i}/}}, upstream: svc, public: true}}\n"
            ));
        }
        r
    };
    let gw = ctx.gateway("reload-storm", &base_yaml(PLAIN, "", &upstreams, &routes(0)))?;
    let templates = vec![Template::get("get", "/api/reload-storm")];
    let quiet = gen::run(ctx.plan(gw.public, templates.clone(), Mode::Open { rate: ctx.opts.rate })).await?;
    let plan = ctx.plan(gw.public, templates, Mode::Open { rate: ctx.opts.rate });
    let admin = gw.admin;
    let config = gw.config.clone();
    let storm = async {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let deadline = tokio::time::Instant::now() + ctx.opts.duration;
        let (mut applied, mut failed) = (0u64, 0u64);
        let mut n = 0;
        while tokio::time::Instant::now() < deadline {
            n += 1;
            std::fs::write(&config, base_yaml(PLAIN, "", &upstreams, &routes(n % 50 + 1)))?;
            match client.post(format!("http://{admin}/-/reload")).send().await {
                Ok(r) if r.status().is_success() => applied += 1,
                _ => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok((applied, failed))
    };
    let (report, storm) = tokio::join!(gen::run(plan), storm);
    let (report, (applied, failed)) = (report?, storm?);
    Ok(json!({
        "what": "config rewritten (1-50 extra routes) and reloaded through the admin endpoint every 100 ms under open-loop load",
        "rate": ctx.opts.rate,
        "quiet": quiet.to_json(),
        "storm": report.to_json(),
        "reloads_applied": applied,
        "reloads_failed": failed,
        "p99_vs_quiet": round2(report.ms(0.99) / quiet.ms(0.99).max(1e-9)),
    }))
}

/// `redis-down`: two gateways (two nodes) share Redis as the cache's second level. Node A
/// fills it; the load goes to node B for keys B has never seen, so every request is an L1
/// miss that Redis answers — until redis-server is killed a tenth of the way into the
/// second phase, when B must fall through to the pods. The third phase runs after Redis is
/// back (empty, as after a crash without persistence).
pub async fn redis_down(ctx: &Ctx) -> anyhow::Result<Value> {
    let mut redis = Redis::start()?;
    let pods = ctx.pods(vec![Behaviour::default()]).await?;
    let extra = format!("cache: {{redis: {{url: \"{}\", timeout: 50ms}}}}\n", redis.url());
    let yaml = base_yaml(
        PLAIN,
        &extra,
        &group("svc", &[&pods[0]], ""),
        "  - {name: catalogue, match: {path_prefix: /catalogue/}, upstream: svc, public: true, cache: {ttl: 1h}}\n",
    );
    let node_a = Gateway::start(&ctx.opts.gateway, Scratch::new("redis-down-a")?, &yaml, None)?;
    let node_b = ctx.gateway("redis-down-b", &yaml)?;
    let per_phase = (ctx.opts.duration.as_secs_f64() * f64::from(ctx.opts.rate)).ceil() as usize;
    let keys = |phase: usize| -> Vec<Template> {
        (phase * per_phase..(phase + 1) * per_phase)
            .map(|i| Template::get("catalogue", &format!("/catalogue/item?id={i}")))
            .collect()
    };
    // Node A stores every key of the first two phases (L1 and Redis).
    let mut fill = ctx.plan_for(node_a.public, [keys(0), keys(1)].concat(), Mode::Closed, Duration::from_secs(60));
    fill.max_requests = 2 * per_phase as u64;
    let filled = gen::run(fill).await?;
    if filled.error_count() > 0 {
        bail!("filling the cache through node A failed: {:?}", filled.errors);
    }
    // Redis writes are in the background: give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = |admin: SocketAddr| async move {
        let text = reqwest::Client::builder()
            .no_proxy()
            .build()?
            .get(format!("http://{admin}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let sum = |name: &str| {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        anyhow::Ok((sum("edgegate_cache_l2_hits_total"), sum("edgegate_cache_l2_errors_total")))
    };
    let pod_before = pods[0].requests();
    let up = gen::run(ctx.plan(node_b.public, keys(0), Mode::Open { rate: ctx.opts.rate })).await?;
    let (hits_up, _) = metrics(node_b.admin).await?;
    let pod_up = pods[0].requests() - pod_before;
    let down_plan = ctx.plan(node_b.public, keys(1), Mode::Open { rate: ctx.opts.rate });
    let kill = async {
        tokio::time::sleep(ctx.opts.duration / 10).await;
        redis.kill();
    };
    let (down, ()) = tokio::join!(gen::run(down_plan), kill);
    let down = down?;
    let (hits_down, errors_down) = metrics(node_b.admin).await?;
    redis.start_again()?;
    let after = gen::run(ctx.plan(node_b.public, keys(2), Mode::Open { rate: ctx.opts.rate })).await?;
    let (hits_total, errors_total) = metrics(node_b.admin).await?;
    Ok(json!({
        "what": "two gateways share Redis as L2; node A fills it, load on node B asks for keys B has never seen (every request an L1 miss); redis-server killed 1/10 into the second phase, restarted (empty) for the third",
        "rate": ctx.opts.rate,
        "phases": [
            {"phase": "Redis up (L2 hits)", "result": up.to_json(), "l2_hits": hits_up, "pod_requests": pod_up},
            {"phase": "Redis killed", "result": down.to_json(), "l2_hits": hits_down - hits_up, "l2_errors": errors_down},
            {"phase": "Redis back, empty", "result": after.to_json(), "l2_hits": hits_total - hits_down, "l2_errors": errors_total - errors_down},
        ],
    }))
}

/// `startup`: exec → first proxied 200, and resident memory once idle — with the
/// environment this process has, and with a clean one (no `SSL_CERT_FILE`/`SSL_CERT_DIR`,
/// as in a Kubernetes pod), since the system CA roots' location changes start-up time.
pub async fn startup(ctx: &Ctx) -> anyhow::Result<Value> {
    let pods = ctx.pods(vec![Behaviour::default()]).await?;
    let times = if ctx.opts.smoke { 2 } else { 10 };
    let mut variants = Vec::new();
    for (label, unset) in [
        ("inherited environment", &[][..]),
        ("clean environment (no SSL_CERT_FILE / SSL_CERT_DIR)", &["SSL_CERT_FILE", "SSL_CERT_DIR"][..]),
    ] {
        let mut startup_ms = Vec::new();
        let mut rss = Vec::new();
        // Which binary served: the default build, or the build for this CPU's level it
        // handed over to (`edgegate-x86-64-v3` beside it, unless EDGEGATE_CPU_LEVEL_BUILD=off).
        let mut served_by = std::collections::BTreeSet::new();
        for _ in 0..times {
            let port = crate::procs::free_port()?;
            let yaml = base_yaml(
                &format!("address: \"127.0.0.1:{port}\""),
                "",
                &group("svc", &[&pods[0]], ""),
                "  - {name: r, upstream: svc, public: true}\n",
            );
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let dir = Scratch::new("startup")?;
            let started = std::time::Instant::now();
            let mut child = crate::procs::spawn_gateway_env(&ctx.opts.gateway, &dir, &yaml, ctx.core(), unset)?;
            // Polled from this thread with blocking sockets and `std::thread::sleep`:
            // tokio's timer rounds a 0.2 ms sleep up to its 1 ms tick, which added up to
            // a millisecond to every start. Nothing else runs on this thread meanwhile
            // (the pods have their own runtime).
            let elapsed = loop {
                if first_200(addr) {
                    break started.elapsed();
                }
                if started.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(dir.0.join("gateway.log")).unwrap_or_default();
                    bail!("no proxied 200 within 10 s:\n{log}");
                }
                std::thread::sleep(Duration::from_micros(200));
            };
            startup_ms.push(elapsed.as_secs_f64() * 1e3);
            if let Some(name) = std::fs::read_link(format!("/proc/{}/exe", child.id()))
                .ok()
                .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))
            {
                served_by.insert(name);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let resident = crate::cpu::rss_bytes(child.id());
            let _ = child.kill();
            let _ = child.wait();
            rss.push(resident? as f64 / (1024.0 * 1024.0));
        }
        variants.push(json!({
            "variant": label,
            "startup_ms": {"median": round2(median(startup_ms.clone())), "max": round2(startup_ms.iter().cloned().fold(0.0, f64::max))},
            "idle_rss_mib": {"median": round2(median(rss.clone())), "max": round2(rss.iter().cloned().fold(0.0, f64::max))},
            "served_by": served_by.into_iter().collect::<Vec<_>>().join(", "),
        }));
    }
    Ok(json!({
        "what": "exec of the gateway binary until the first proxied 200 (client polling every 0.2 ms), and RSS after 1 s idle",
        "starts": times,
        "variants": variants,
    }))
}

fn first_200(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /startup HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && &buf == b"HTTP/1.1 200"
}

/// Refused or canonicalised requests, as raw bytes: path traversal in its spellings,
/// smuggling and malformed heads. The gateway answers each before any pod sees it.
const HOSTILE: &[&[u8]] = &[
    b"GET /catalogue/../api/permits/status HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /catalogue/%2e%2e/api/permits/status HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /catalogue/..%2fapi/permits/status HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /catalogue//../api/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /catalogue\\..\\api\\x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"POST /api/forms HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /catalogue/services/1 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /catalogue/services/1 HTTP/1.1\r\nHost: localhost\r\nX-A: a\x01b\r\n\r\n",
    b"GET /catalogue/services/1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
];

/// Sends every [`HOSTILE`] request `rounds` times, each on its own connection, and counts
/// the answers' status codes; fails when one gets no status line at all.
fn send_hostile(addr: SocketAddr, rounds: usize) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    use std::io::{Read, Write};
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..rounds {
        for raw in HOSTILE {
            let mut s = std::net::TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(raw)?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head).with_context(|| format!("no answer to {:?}", String::from_utf8_lossy(raw)))?;
            let status = String::from_utf8_lossy(&head[9..12]).into_owned();
            *statuses.entry(status).or_insert(0) += 1;
        }
    }
    Ok(statuses)
}

/// `train`: the workload a profile-guided build of the gateway learns from
/// (`scripts/build-pgo.sh`): a day's traffic over HTTP/1.1 closed loop (cache hits, proxied
/// GETs and POSTs with citizens' tokens and the policy, denials, audited), public proxied
/// GETs, hostile requests, then the same day over HTTP/2 on a TLS listener. Each gateway is
/// stopped with SIGTERM so that it exits through its own exit path. Not a benchmark: nothing
/// is pinned and no result file is written; fails when a phase sees errors.
pub async fn train(ctx: &Ctx) -> anyhow::Result<Value> {
    let pods = ctx.pods(vec![Behaviour::default(), Behaviour::default()]).await?;
    let refs: Vec<&Pod> = pods.iter().collect();
    let routes =
        format!("{DAY_ROUTES}  - {{name: open, match: {{path_prefix: /open/}}, upstream: svc, public: true}}\n");
    let mut templates = day_mix(issuer())?;
    templates.push(Template::get("public", "/open/status").weight(20));
    let whole = ctx.opts.duration;
    let mut phases = serde_json::Map::new();
    let mut check = |name: &str, report: Report| -> anyhow::Result<()> {
        if report.sent == 0 || report.error_count() > report.sent / 100 {
            bail!("training phase {name}: {}", report.summary());
        }
        phases.insert(name.to_owned(), report.to_json());
        Ok(())
    };

    // The hostile requests come one connection each, hundreds a second from one address.
    let unbounded = "limits: {new_connections_per_client: {rate: 1000000000, burst: 1000000000}}\n";
    let gw = policy_gateway(ctx, BEHIND_TLS, &refs, &routes, unbounded)?;
    check("http1", gen::run(ctx.plan_for(gw.public, templates.clone(), Mode::Closed, whole * 2 / 3)).await?)?;
    let addr = gw.public;
    let hostile = tokio::task::spawn_blocking(move || send_hostile(addr, 100)).await??;
    gw.terminate()?;

    let tls = TlsFiles::self_signed()?;
    let listener = format!(
        "{PLAIN}, tls: {{certificates: [{{cert: \"{}\", key: \"{}\"}}]}}",
        tls.cert.display(),
        tls.key.display()
    );
    let gw = policy_gateway(ctx, &listener, &refs, &routes, "")?;
    let mut plan = ctx.plan_for(gw.public, templates, Mode::Closed, whole / 3);
    plan.protocol = Protocol::Http2Tls;
    check("h2", gen::run(plan).await?)?;
    gw.terminate()?;
    Ok(json!({"phases": phases, "hostile_statuses": hostile}))
}

pub async fn run(ctx: &Ctx, name: &str) -> anyhow::Result<Value> {
    let started = std::time::Instant::now();
    let mut doc = match name {
        "proxy" => peered(ctx, Peered::Proxy).await?,
        "cache-hit" => peered(ctx, Peered::CacheHit).await?,
        "h2" => peered(ctx, Peered::H2).await?,
        "policy" => policy(ctx).await?,
        "mixed" => mixed(ctx).await?,
        "slow-pod" => slow_pod(ctx).await?,
        "pod-failure" => pod_failure(ctx).await?,
        "reload-storm" => reload_storm(ctx).await?,
        "redis-down" => redis_down(ctx).await?,
        "startup" => startup(ctx).await?,
        other => bail!("unknown scenario {other:?}; one of {}", ALL.join(", ")),
    };
    doc["scenario"] = json!(name);
    doc["smoke"] = json!(ctx.opts.smoke);
    doc["pinned"] = json!(ctx.opts.pin);
    doc["duration_s"] = json!(ctx.opts.duration.as_secs_f64());
    doc["runs"] = json!(ctx.opts.runs);
    doc["wall_s"] = json!(round2(started.elapsed().as_secs_f64()));
    doc["env"] = crate::report::environment(&ctx.opts.gateway);
    Ok(doc)
}
