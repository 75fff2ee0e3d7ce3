//! The machine's own stalls: how often, and for how long, a thread that wants its core does
//! not get it, with nothing of edgegate's running.
//!
//! A latency target of a millisecond at the 99th percentile can only be judged on a machine
//! whose cores do not themselves stop for milliseconds: a virtual CPU the host deschedules,
//! a kernel thread (memory reclaim, page reporting) that takes a core for a few milliseconds,
//! an agent at a higher priority. Each of these holds up every request that arrives meanwhile,
//! whichever server answers them. One probe thread per core measures it two ways:
//!
//! - `Spin`: the thread reads the monotonic clock in a loop, and a gap between two reads is
//!   time the thread did not run. With every core busy this is what the host takes (a
//!   hypervisor deschedules a busy virtual CPU; the kernel's `steal` counter says how much
//!   of that it was told about).
//! - `Sleep`: the thread sleeps for a short interval again and again, as a server between
//!   requests does, and the overshoot past the interval is how late it woke: another task on
//!   the core, a kernel thread, or a virtual CPU slow to come back from halt.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

/// How a probe thread waits between its clock reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Spin,
    Sleep(Duration),
}

impl Mode {
    fn label(self) -> String {
        match self {
            Mode::Spin => "spin".to_owned(),
            Mode::Sleep(d) => format!("sleep {} µs", d.as_micros()),
        }
    }
}

/// The sleeping probe's interval, in microseconds, unless told otherwise: short enough that
/// a server between requests sleeps about as long.
pub const SLEEP_US: u64 = 200;

/// The stall lengths counted, in microseconds: each stall counts under every bound it passes.
pub const BOUNDS_US: [u64; 4] = [500, 1_000, 2_000, 5_000];

/// One core's stalls over a probe.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    /// Stalls longer than each of [`BOUNDS_US`].
    pub over: [u64; BOUNDS_US.len()],
    /// The time lost in stalls longer than the first bound.
    pub lost: Duration,
    pub longest: Duration,
}

impl Tally {
    /// One gap: a spinning thread's time between two clock reads, or a sleeping one's
    /// overshoot past its interval.
    pub fn add(&mut self, gap: Duration) {
        let us = gap.as_micros();
        for (count, bound) in self.over.iter_mut().zip(BOUNDS_US) {
            if us > u128::from(bound) {
                *count += 1;
            }
        }
        if us > u128::from(BOUNDS_US[0]) {
            self.lost += gap;
        }
        self.longest = self.longest.max(gap);
    }
}

/// Runs one probe thread per core in `cores`, all at once, for `length`, and returns each
/// core's tally beside the steal the kernel counted for that core meanwhile.
pub fn measure(cores: &[usize], mode: Mode, length: Duration) -> anyhow::Result<Value> {
    let steal_before = steal_per_core()?;
    let threads: Vec<_> = cores.iter().map(|&core| std::thread::spawn(move || probe(core, mode, length))).collect();
    let mut tallies = Vec::new();
    for t in threads {
        tallies.push(t.join().map_err(|_| anyhow::anyhow!("a probe thread panicked"))??);
    }
    let steal_after = steal_per_core()?;
    let rows: Vec<Value> = cores
        .iter()
        .zip(tallies)
        .map(|(&core, t)| {
            let steal = steal_after.get(core).zip(steal_before.get(core)).map(|(a, b)| a.saturating_sub(*b));
            json!({
                "core": core,
                "mode": mode.label(),
                "seconds": length.as_secs_f64(),
                "over_ms": BOUNDS_US.iter().zip(t.over).map(|(&b, n)| (bound_ms(b), json!(n))).collect::<serde_json::Map<_, _>>(),
                "lost_ms": ms(t.lost),
                "longest_ms": ms(t.longest),
                "steal_ms": steal.map(ms),
            })
        })
        .collect();
    Ok(Value::Array(rows))
}

/// Every core of the machine probed spinning, then sleeping for `interval` between reads:
/// `{"spin": [...], "sleep": [...]}`, one row per core.
pub fn both(length: Duration, interval: Duration) -> anyhow::Result<Value> {
    let cores: Vec<usize> = (0..crate::cpu::cores().context("reading /proc/cpuinfo")?.max(1)).collect();
    Ok(json!({
        "spin": measure(&cores, Mode::Spin, length)?,
        "sleep": measure(&cores, Mode::Sleep(interval), length)?,
    }))
}

fn ms(d: Duration) -> f64 {
    crate::scenarios::round2(d.as_secs_f64() * 1e3)
}

/// A bound of [`BOUNDS_US`] in milliseconds, as the results name it: "0.5", "1", …
fn bound_ms(us: u64) -> String {
    format!("{}", us as f64 / 1000.0)
}

fn probe(core: usize, mode: Mode, length: Duration) -> anyhow::Result<Tally> {
    // Each probe thread pins itself.
    crate::pin_to(core).with_context(|| format!("pinning a probe to core {core}"))?;
    let mut tally = Tally::default();
    let start = Instant::now();
    let mut last = start;
    loop {
        let now = match mode {
            Mode::Spin => {
                let now = Instant::now();
                tally.add(now - last);
                now
            }
            Mode::Sleep(interval) => {
                std::thread::sleep(interval);
                let now = Instant::now();
                tally.add((now - last).saturating_sub(interval));
                now
            }
        };
        last = now;
        if now - start >= length {
            return Ok(tally);
        }
    }
}

/// Each core's `steal` from `/proc/stat`, indexed by core.
fn steal_per_core() -> anyhow::Result<Vec<Duration>> {
    parse_steal(&std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?)
}

/// The eighth time after a `cpuN` line's name is steal, in USER_HZ ticks.
fn parse_steal(stat: &str) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::new();
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next() else { continue };
        let Some(core) = name.strip_prefix("cpu").and_then(|n| n.parse::<usize>().ok()) else { continue };
        let ticks: u64 = fields.nth(7).with_context(|| format!("no steal field in {line:?}"))?.parse()?;
        if out.len() <= core {
            out.resize(core + 1, Duration::ZERO);
        }
        out[core] = crate::cpu::ticks(ticks);
    }
    Ok(out)
}

/// One line per core, for a person reading the output.
pub fn summary(rows: &Value) -> String {
    let mut out = String::new();
    for r in rows.as_array().into_iter().flatten() {
        let bounds: Vec<String> = BOUNDS_US.iter().map(|&b| bound_ms(b)).collect();
        let counts: Vec<String> = bounds.iter().map(|b| r["over_ms"][b.as_str()].to_string()).collect();
        out.push_str(&format!(
            "core {} ({}, {} s): stalls over {} ms: {}; longest {} ms; {} ms lost in those over {} ms; steal {} ms\n",
            r["core"],
            r["mode"].as_str().unwrap_or(""),
            r["seconds"],
            bounds.join(" / "),
            counts.join(" / "),
            r["longest_ms"],
            r["lost_ms"],
            bounds[0],
            r["steal_ms"],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_counts_under_every_bound_it_passes_and_only_long_ones_count_as_lost() {
        let mut t = Tally::default();
        for us in [20, 499, 501, 1_000, 1_001, 2_500, 7_000] {
            t.add(Duration::from_micros(us));
        }
        assert_eq!(t.over, [5, 3, 2, 1], "over 0.5, 1, 2 and 5 ms");
        assert_eq!(t.lost, Duration::from_micros(501 + 1_000 + 1_001 + 2_500 + 7_000));
        assert_eq!(t.longest, Duration::from_millis(7));
    }

    #[test]
    fn steal_is_read_per_core_from_proc_stat() {
        let stat = "cpu  10 0 5 100 0 0 1 9 0 0\n\
                    cpu0 5 0 2 50 0 0 1 4 0 0\n\
                    cpu1 5 0 3 50 0 0 0 5 0 0\n\
                    intr 12345\nctxt 99\n";
        let steal = parse_steal(stat).expect("parses");
        assert_eq!(steal, vec![Duration::from_millis(40), Duration::from_millis(50)]);
        assert!(parse_steal("cpu0 1 2 3\n").is_err(), "a line without the steal field is an error");
    }

    #[test]
    fn a_spinning_probe_counts_the_time_a_busy_thread_on_its_core_takes() {
        // A second thread spins on the probe's core for the whole probe: the scheduler hands
        // the core back and forth in slices of a millisecond or more, and each slice the
        // busy thread gets is a stall the probe must see. The core: the first this test may
        // run on.
        let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("affinity");
        let core = (0..nix::sched::CpuSet::count()).find(|&c| allowed.is_set(c).unwrap_or(false)).expect("a core");
        let hog = std::thread::spawn(move || {
            crate::pin_to(core).expect("pin the busy thread");
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(400) {
                std::hint::spin_loop();
            }
        });
        let rows = measure(&[core], Mode::Spin, Duration::from_millis(300)).expect("probe");
        hog.join().expect("busy thread");
        let row = &rows[0];
        assert_eq!((row["core"].as_u64(), row["mode"].as_str()), (Some(core as u64), Some("spin")));
        let over = row["over_ms"]["0.5"].as_u64().expect("count");
        assert!(over >= 1, "no stall seen while sharing the core: {row}");
        assert!(row["lost_ms"].as_f64().expect("lost") > 0.5, "{row}");
        assert!(row["steal_ms"].as_f64().is_some(), "{row}");
        assert!(
            summary(&rows).starts_with(&format!("core {core} (spin, 0.3 s): stalls over 0.5 / 1 / 2 / 5 ms: ")),
            "{}",
            summary(&rows)
        );
    }
}
