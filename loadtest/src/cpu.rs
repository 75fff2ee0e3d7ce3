//! Reading a process's CPU time from `/proc` and the figures out of `wrk`'s report.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

/// Linux reports `/proc/*/stat` times in USER_HZ ticks, which is 100 on every
/// architecture edgegate runs on.
const TICKS_PER_SECOND: u64 = 100;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub kernel: Duration,
}

/// Sum of utime and stime over every thread of the process.
pub fn process_cpu(proc_dir: &Path) -> anyhow::Result<CpuTime> {
    let mut total = CpuTime::default();
    let tasks = proc_dir.join("task");
    for entry in std::fs::read_dir(&tasks).with_context(|| format!("reading {}", tasks.display()))? {
        let stat = entry?.path().join("stat");
        // A thread may exit between listing and reading; it no longer counts.
        let Ok(text) = std::fs::read_to_string(&stat) else { continue };
        let (user, kernel) = parse_stat(&text).with_context(|| format!("parsing {}", stat.display()))?;
        total.user += ticks(user);
        total.kernel += ticks(kernel);
    }
    Ok(total)
}

fn ticks(n: u64) -> Duration {
    Duration::from_micros(n * 1_000_000 / TICKS_PER_SECOND)
}

/// utime and stime: fields 14 and 15, counted after the `(comm)` field, which may
/// itself contain spaces and parentheses.
fn parse_stat(text: &str) -> Option<(u64, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After comm: state is field 3, so utime (14) is the 12th from here.
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// "123456 requests in 8.00s, ..."
pub fn wrk_requests(report: &str) -> Option<u64> {
    report.lines().find(|l| l.contains(" requests in "))?.split_whitespace().next()?.parse().ok()
}

pub fn wrk_field(report: &str, label: &str) -> Option<u64> {
    report.lines().find_map(|l| l.trim().strip_prefix(label)).and_then(|v| v.trim().parse().ok())
}

/// Sum of connect/read/write/timeout socket errors, 0 when wrk reported none.
pub fn wrk_socket_errors(report: &str) -> u64 {
    let Some(line) = report.lines().find_map(|l| l.trim().strip_prefix("Socket errors:")) else { return 0 };
    line.split(',').filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok()).sum()
}

/// A latency percentile from `--latency` output, as wrk printed it ("1.23ms").
pub fn wrk_percentile(report: &str, pct: &str) -> Option<String> {
    report.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == pct).then(|| it.next().map(str::to_owned))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 8s test @ http://127.0.0.1:8080/\n  1 threads and 64 connections\n  Latency Distribution\n     50%  610.00us\n     99%    1.52ms\n  812345 requests in 8.00s, 120.00MB read\n  Socket errors: connect 0, read 3, write 0, timeout 2\n  Non-2xx or 3xx responses: 7\nRequests/sec: 101543.12\n";

    #[test]
    fn parses_wrk_report() {
        assert_eq!(wrk_requests(WRK), Some(812_345));
        assert_eq!(wrk_socket_errors(WRK), 5);
        assert_eq!(wrk_field(WRK, "Non-2xx or 3xx responses:"), Some(7));
        assert_eq!(wrk_percentile(WRK, "99%").as_deref(), Some("1.52ms"));
    }

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4242 (edge gate (1)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 1 1";
        assert_eq!(parse_stat(line), Some((250, 75)));
    }

    #[test]
    fn sums_every_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (tid, user, kernel) in [(1, 250, 75), (2, 50, 25)] {
            let task = dir.path().join("task").join(tid.to_string());
            std::fs::create_dir_all(&task).expect("mkdir");
            let stat = format!("{tid} (edgegate) S 1 1 1 0 -1 0 0 0 0 0 {user} {kernel} 0 0 20 0 2 0");
            std::fs::write(task.join("stat"), stat).expect("write");
        }
        let cpu = process_cpu(dir.path()).expect("reads");
        assert_eq!(cpu, CpuTime { user: Duration::from_secs(3), kernel: Duration::from_secs(1) });
    }
}
