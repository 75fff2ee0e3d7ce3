//! Reading a process's CPU time, parent and memory from `/proc`.

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

/// USER_HZ ticks (as `/proc/*/stat` and `/proc/stat` count time) as a duration.
pub fn ticks(n: u64) -> Duration {
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

/// The machine's cores, counted from /proc/cpuinfo: this process may already be pinned to
/// one core, so its own view (`available_parallelism`) is not the machine's.
pub fn cores() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    Some(info.lines().filter(|l| l.starts_with("processor")).count())
}

/// The parent pid (field 4) from a `/proc/PID/stat` line.
pub fn parent_pid(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size from `/proc/PID/status` (`VmRSS`, in kB).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .context("no VmRSS line")?;
    Ok(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_parent_pid() {
        let line = "4242 (edge gate (1)) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 1 1";
        assert_eq!(parent_pid(line), Some(17));
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
