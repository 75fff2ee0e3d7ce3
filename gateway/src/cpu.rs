//! The CPU a build was made for. The default build runs on any x86-64 CPU. A build for a
//! newer CPU level (`EDGEGATE_TARGET_CPU=x86-64-v3 scripts/build-pgo.sh`, or `RUSTFLAGS="-C
//! target-cpu=…"`; docs/deploy.md, "Building for a CPU level") lets the compiler use AVX2,
//! BMI2 and the like anywhere in the gateway's code, and on a CPU without them it would
//! stop at the first such instruction with `SIGILL`, at a point nobody can predict. The
//! gateway checks first thing in `main`, before any of its own work (what runs before
//! `main`, the standard library's start-up and the allocator's, is not built with those
//! flags), and refuses to start with a message that names what is missing.
//!
//! An image can carry both: the default build, and beside it a build for a level named
//! `edgegate-<level>` (`edgegate-x86-64-v3`). The image's entrypoint is then the launcher
//! (`edgegate-launch`, the `launch` crate), which runs the one that fits the CPU. The default
//! build run directly does the same, first thing: it runs the level's build in its place
//! (`execve`, the same arguments) when this CPU has every feature of the level.
//! `EDGEGATE_CPU_LEVEL_BUILD=off` keeps the default build; a file there that cannot be run
//! is warned about, and the default build serves.

/// A feature the binary was compiled to use, and how to ask this CPU for it.
pub use edgegate_launch::Feature;

macro_rules! compiled_features {
    ($($name:tt),* $(,)?) => {
        /// The features beyond the x86-64 baseline this binary was compiled to use
        /// (none in the default build), each with its check on the running CPU.
        pub fn compiled_features() -> &'static [Feature] {
            #[cfg(target_arch = "x86_64")]
            const COMPILED: &[Feature] = &[
                $(
                    #[cfg(target_feature = $name)]
                    ($name, (|| std::arch::is_x86_feature_detected!($name)) as fn() -> bool),
                )*
            ];
            #[cfg(not(target_arch = "x86_64"))]
            const COMPILED: &[Feature] = &[];
            COMPILED
        }
    };
}

// The x86-64-v2, -v3 and -v4 levels' features, and others `-C target-cpu=native` may add.
edgegate_launch::with_x86_64_v3!(
    compiled_features,
    "avx512f",
    "avx512bw",
    "avx512cd",
    "avx512dq",
    "avx512vl",
    "aes",
    "pclmulqdq",
    "sha",
    "adx",
    "rdrand",
    "rdseed"
);

use edgegate_launch::{level_build, LEVELS};
pub use edgegate_launch::{levels_this_cpu_has, HAND_OVER_VAR};

/// Runs the build for this CPU's level in this process's place (`execve`, the same
/// arguments) when this is the default build and [`level_build`] finds one beside it;
/// returns only when there is none (Ok) or it could not be run (Err, the message to warn
/// with: this binary then serves).
pub fn hand_over() -> Result<(), String> {
    if !compiled_features().is_empty() {
        return Ok(());
    }
    let Ok(exe) = std::env::current_exe() else {
        return Ok(());
    };
    let setting = std::env::var_os(HAND_OVER_VAR);
    let Some(build) = level_build(&exe, setting.as_deref(), LEVELS, |p| p.is_file()) else {
        return Ok(());
    };
    let error = edgegate_launch::exec(&build);
    Err(format!(
        "edgegate: warning: {} is there for this CPU's level and could not be run ({error}); \
         the default build serves",
        build.display()
    ))
}

/// The CPU level this binary was built for: `x86-64` for the default build, a level's name
/// when it was compiled with every feature of it (the newest such), `custom` for other
/// feature sets (`-C target-cpu=native`).
pub fn level() -> &'static str {
    level_of(compiled_features(), LEVELS)
}

fn level_of(compiled: &[Feature], levels: &[(&'static str, &[Feature])]) -> &'static str {
    if compiled.is_empty() {
        return "x86-64";
    }
    let has = |name: &str| compiled.iter().any(|(c, _)| *c == name);
    levels.iter().find(|(_, features)| features.iter().all(|(f, _)| has(f))).map_or("custom", |(level, _)| level)
}

/// Whether this CPU has every feature the binary was compiled to use; if not, the
/// message to stop with.
pub fn check() -> Result<(), String> {
    check_features(compiled_features())
}

fn check_features(features: &[Feature]) -> Result<(), String> {
    let missing: Vec<&str> = features.iter().filter(|(_, present)| !present()).map(|(name, _)| *name).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let built_for: Vec<&str> = features.iter().map(|(name, _)| *name).collect();
    Err(format!(
        "edgegate: this binary was built for CPUs with {} (a `-C target-cpu` build), and this CPU \
         lacks {}: it would stop on an illegal instruction. Run the default build (any x86-64 CPU) \
         on this node, or a build for this CPU's level.",
        built_for.join(", "),
        missing.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_lacking_a_compiled_feature_is_refused_by_name() {
        let features: [Feature; 3] = [("avx2", || false), ("bmi2", || true), ("fma", || false)];
        let message = check_features(&features).expect_err("a CPU without avx2 and fma");
        assert!(message.contains("built for CPUs with avx2, bmi2, fma"), "{message}");
        assert!(message.contains("this CPU lacks avx2, fma:"), "{message}");
    }

    #[test]
    fn a_cpu_with_every_compiled_feature_starts() {
        let features: [Feature; 2] = [("avx2", || true), ("bmi2", || true)];
        assert_eq!(check_features(&features), Ok(()));
        assert_eq!(check_features(&[]), Ok(()));
    }

    #[test]
    fn a_binary_names_the_level_it_was_built_for() {
        let v3: &[Feature] = &[("avx2", || true), ("fma", || true)];
        let levels: &[(&str, &[Feature])] = &[("x86-64-v3", v3)];
        assert_eq!(level_of(&[], levels), "x86-64");
        assert_eq!(level_of(&[("avx2", || true), ("fma", || true), ("avx512f", || true)], levels), "x86-64-v3");
        assert_eq!(level_of(&[("avx2", || true)], levels), "custom");
        // This test binary, when built as the default build is, says so.
        if compiled_features().is_empty() {
            assert_eq!(level(), "x86-64");
        }
    }

    /// The list is the build's: its names are the compiler's feature names, each once, and
    /// this test binary, built with the same flags, runs on a CPU that has them.
    #[test]
    fn the_compiled_list_is_checked_on_this_cpu() {
        let features = compiled_features();
        let mut names: Vec<&str> = features.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), features.len());
        assert_eq!(check(), Ok(()));
    }
}
