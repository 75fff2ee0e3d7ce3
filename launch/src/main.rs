//! `edgegate-launch`: runs the gateway build beside it that fits this CPU — `edgegate-<level>`
//! for the newest level whose every feature the CPU has, else `edgegate` — in its place
//! (`execve`, the same arguments). An image's entrypoint when it carries a level's build: a
//! small static binary starts in a fraction of a millisecond, where the default build handing
//! over itself first pays its own start (a few milliseconds). Built against musl for the image
//! (`--target x86_64-unknown-linux-musl`): a static glibc's start-up measures the caches with
//! `CPUID` after `CPUID`, each a trap on a virtual machine (~0.6 ms a start on a KVM guest).
//! `EDGEGATE_CPU_LEVEL_BUILD=off` runs the default build.

use std::process::ExitCode;

use edgegate_launch::{exec, level_build, DEFAULT_BUILD, HAND_OVER_VAR, LEVELS};

/// Set for what the launcher runs: a launcher that finds it was started by a launcher (a
/// launcher where a gateway build should be) stops instead of running itself forever.
const LAUNCHED_VAR: &str = "EDGEGATE_LAUNCHED";

fn main() -> ExitCode {
    if std::env::var_os(LAUNCHED_VAR).is_some() {
        eprintln!("edgegate-launch: started by edgegate-launch: the file it ran is a launcher, not a gateway build");
        return ExitCode::from(1);
    }
    // Inherited by what it runs next (`exec` keeps the environment).
    std::env::set_var(LAUNCHED_VAR, "1");
    let default = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name(DEFAULT_BUILD),
        Err(e) => {
            eprintln!("edgegate-launch: where this binary is cannot be read ({e})");
            return ExitCode::from(1);
        }
    };
    let setting = std::env::var_os(HAND_OVER_VAR);
    if let Some(build) = level_build(&default, setting.as_deref(), LEVELS, |p| p.is_file()) {
        let error = exec(&build);
        eprintln!("edgegate-launch: warning: {} could not be run ({error}); the default build serves", build.display());
    }
    let error = exec(&default);
    eprintln!("edgegate-launch: {} could not be run: {error}", default.display());
    ExitCode::from(1)
}
