//! The CPU a build was made for. The default build runs on any x86-64 CPU. A build for a
//! newer CPU level (`EDGEGATE_TARGET_CPU=x86-64-v3 scripts/build-pgo.sh`, or `RUSTFLAGS="-C
//! target-cpu=…"`; docs/deploy.md, "Building for a CPU level") lets the compiler use AVX2,
//! BMI2 and the like anywhere in the gateway's code, and on a CPU without them it would
//! stop at the first such instruction with `SIGILL`, at a point nobody can predict. The
//! gateway checks first thing in `main`, before any of its own work (what runs before
//! `main`, the standard library's start-up and the allocator's, is not built with those
//! flags), and refuses to start with a message that names what is missing.

/// A feature the binary was compiled to use, and how to ask this CPU for it.
pub type Feature = (&'static str, fn() -> bool);

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
compiled_features!(
    "sse3",
    "ssse3",
    "sse4.1",
    "sse4.2",
    "popcnt",
    "cmpxchg16b",
    "avx",
    "avx2",
    "bmi1",
    "bmi2",
    "fma",
    "f16c",
    "lzcnt",
    "movbe",
    "xsave",
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
    "rdseed",
);

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
