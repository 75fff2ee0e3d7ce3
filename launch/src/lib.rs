//! Which build of the gateway runs on this CPU. The default build runs on any x86-64 CPU; a
//! build for a newer CPU level (`-C target-cpu=x86-64-v3`) lets the compiler use AVX2, BMI2
//! and FMA anywhere and would stop with `SIGILL` on a CPU without them. An image can carry
//! both, the level's as `edgegate-<level>` beside `edgegate`. The one to run is chosen here:
//! by the launcher (`edgegate-launch`, a small static binary, the image's entrypoint then),
//! and by the default build itself when it is run directly. Std only, no dependencies: the
//! launcher must start in a fraction of a millisecond.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// A CPU feature, and how to ask this CPU for it.
pub type Feature = (&'static str, fn() -> bool);

/// Calls `$m!` with the `x86-64-v3` level's features (rustc's list for `-C
/// target-cpu=x86-64-v3`: the -v2 level's and AVX, AVX2, BMI, FMA, …), then the others given.
#[macro_export]
macro_rules! with_x86_64_v3 {
    ($m:ident $(, $more:tt)*) => {
        $m! {
            "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cmpxchg16b", "avx", "avx2", "bmi1", "bmi2", "fma",
            "f16c", "lzcnt", "movbe", "xsave" $(, $more)*
        }
    };
}

/// `(name, check)` for each feature named: a [`Feature`] list.
#[cfg(target_arch = "x86_64")]
macro_rules! features {
    ($($name:tt),* $(,)?) => {
        &[$(($name, (|| std::arch::is_x86_feature_detected!($name)) as fn() -> bool)),*]
    };
}

/// The CPU levels there may be a build for, newest first: each with the features a `-C
/// target-cpu` build for it uses, every one checked on this CPU before a build for it is run.
#[cfg(target_arch = "x86_64")]
pub const LEVELS: &[(&str, &[Feature])] = &[("x86-64-v3", with_x86_64_v3!(features))];
#[cfg(not(target_arch = "x86_64"))]
pub const LEVELS: &[(&str, &[Feature])] = &[];

/// The environment variable that turns the choice off (`off`: the default build runs). It is
/// set for the build chosen, so that a wrong file where a level's build should be cannot
/// choose again.
pub const HAND_OVER_VAR: &str = "EDGEGATE_CPU_LEVEL_BUILD";

/// The gateway's default build's file name, which the launcher runs when no level's build
/// is for this CPU.
pub const DEFAULT_BUILD: &str = "edgegate";

/// The build for a newer CPU level to run instead of `default` (the default build's path):
/// none when the choice is turned off (`setting`, the value of [`HAND_OVER_VAR`], is `off`);
/// otherwise a file named `<default>-<level>` beside it, for the newest of `levels` whose
/// every feature this CPU has.
pub fn level_build(
    default: &Path,
    setting: Option<&OsStr>,
    levels: &[(&str, &[Feature])],
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if setting.is_some_and(|s| s == "off") {
        return None;
    }
    let name = default.file_name()?.to_str()?;
    levels.iter().find_map(|(level, features)| {
        let candidate = default.with_file_name(format!("{name}-{level}"));
        (cpu_has(features) && exists(&candidate)).then_some(candidate)
    })
}

/// Whether this CPU has every one of `features`.
fn cpu_has(features: &[Feature]) -> bool {
    features.iter().all(|(_, present)| present())
}

/// The CPU levels whose every feature this CPU has.
pub fn levels_this_cpu_has() -> Vec<&'static str> {
    LEVELS.iter().filter(|(_, features)| cpu_has(features)).map(|(l, _)| *l).collect()
}

/// Runs `build` in this process's place (`execve`): this process's arguments (its name
/// too) and environment, with the choice turned off. Returns only on failure.
pub fn exec(build: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt as _;
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(build);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    command.args(args).env(HAND_OVER_VAR, "off").exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_level_this_cpu_can_run_and_that_is_there_is_chosen() {
        let default = Path::new("/usr/local/bin/edgegate");
        let v3 = PathBuf::from("/usr/local/bin/edgegate-x86-64-v3");
        let v4 = PathBuf::from("/usr/local/bin/edgegate-x86-64-v4");
        let has: &[Feature] = &[("avx2", || true), ("bmi2", || true)];
        let lacks: &[Feature] = &[("avx2", || true), ("avx512f", || false)];
        let both: &[(&str, &[Feature])] = &[("x86-64-v4", lacks), ("x86-64-v3", has)];
        let there = |p: &Path| p == v3 || p == v4;
        assert_eq!(level_build(default, None, both, there), Some(v3.clone()));
        assert_eq!(level_build(default, Some(OsStr::new("on")), both, there), Some(v3.clone()));
        // Not there: none.
        assert_eq!(level_build(default, None, both, |p| p == v4), None);
        // Only `off` turns it off (as the chosen build's environment has it).
        assert_eq!(level_build(default, Some(OsStr::new("")), both, there), Some(v3.clone()));
        assert_eq!(level_build(default, Some(OsStr::new("off")), both, there), None);
        // A CPU that has no level's every feature: none.
        assert_eq!(level_build(default, None, &[("x86-64-v4", lacks)], there), None);
    }

    #[test]
    fn the_x86_64_v3_level_is_rustcs_list() {
        let names: Vec<&str> = LEVELS.iter().flat_map(|(_, f)| f.iter().map(|(n, _)| *n)).collect();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(names.len(), 15);
            assert!(names.contains(&"avx2") && names.contains(&"fma") && names.contains(&"movbe"));
        }
    }
}
