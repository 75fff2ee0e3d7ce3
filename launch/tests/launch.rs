//! The launcher runs the gateway build beside it that fits the CPU, with its arguments and
//! environment. Real processes: the launcher (hard-linked into a directory of the test's, so
//! that it finds the stand-ins there under their own names) and two stand-ins for the builds,
//! `/usr/bin/printenv` as the default build (prints the variables it is asked for) and
//! `/bin/echo` as the level's (prints its arguments).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgegate_launch::{levels_this_cpu_has, HAND_OVER_VAR};

const LAUNCHER: &str = env!("CARGO_BIN_EXE_edgegate-launch");

struct Dir {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Dir {
    fn new() -> Dir {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let path = dir.path().to_path_buf();
        if std::fs::hard_link(LAUNCHER, path.join("edgegate-launch")).is_err() {
            std::fs::copy(LAUNCHER, path.join("edgegate-launch")).expect("copy the launcher");
        }
        Dir { _dir: dir, path }
    }

    fn link(&self, name: &str, to: &str) {
        std::os::unix::fs::symlink(to, self.path.join(name)).expect("symlink");
    }

    /// The launcher with the arguments `MARKER EDGEGATE_CPU_LEVEL_BUILD`, a clean environment
    /// but `MARKER`, and `setting` for the choice.
    fn run(&self, setting: Option<&str>) -> (Option<i32>, String, String) {
        let mut command = Command::new(self.path.join("edgegate-launch"));
        command.args(["MARKER", HAND_OVER_VAR]).env_clear().env("MARKER", "from-the-test");
        if let Some(s) = setting {
            command.env(HAND_OVER_VAR, s);
        }
        let Output { status, stdout, stderr } = command.output().expect("run the launcher");
        (status.code(), String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned())
    }
}

fn path(dir: &Dir, name: &str) -> PathBuf {
    Path::new(&dir.path).join(name)
}

/// What the default build's stand-in prints: the test's variable, and the choice turned off.
const DEFAULT_RAN: &str = "from-the-test\noff\n";
/// What the level's stand-in prints: the arguments.
const LEVEL_RAN: &str = "MARKER EDGEGATE_CPU_LEVEL_BUILD\n";

#[test]
fn the_build_for_this_cpus_level_runs_when_it_is_there_and_the_default_build_otherwise() {
    let dir = Dir::new();
    dir.link("edgegate", "/usr/bin/printenv");
    dir.link("edgegate-x86-64-v3", "/bin/echo");
    let this_cpu_has_it = levels_this_cpu_has().contains(&"x86-64-v3");
    let ran = dir.run(None);
    assert_eq!(ran.0, Some(0), "{ran:?}");
    assert_eq!(ran.1, if this_cpu_has_it { LEVEL_RAN } else { DEFAULT_RAN }, "{ran:?}");
    // Turned off: the default build, on any CPU.
    let off = dir.run(Some("off"));
    assert_eq!((off.0, off.1.as_str()), (Some(0), DEFAULT_RAN), "{off:?}");
}

#[test]
fn without_a_level_build_the_default_build_runs() {
    let dir = Dir::new();
    dir.link("edgegate", "/usr/bin/printenv");
    let ran = dir.run(None);
    assert_eq!((ran.0, ran.1.as_str()), (Some(0), DEFAULT_RAN), "{ran:?}");
}

#[test]
fn a_level_build_that_cannot_be_run_is_named_and_the_default_build_runs() {
    let dir = Dir::new();
    dir.link("edgegate", "/usr/bin/printenv");
    std::fs::write(path(&dir, "edgegate-x86-64-v3"), "not a program").expect("write");
    let ran = dir.run(None);
    assert_eq!((ran.0, ran.1.as_str()), (Some(0), DEFAULT_RAN), "{ran:?}");
    // Tried, and said so, only where the CPU has the level.
    assert_eq!(
        ran.2.contains("edgegate-x86-64-v3 could not be run"),
        levels_this_cpu_has().contains(&"x86-64-v3"),
        "{ran:?}"
    );
}

#[test]
fn without_the_default_build_the_launcher_fails_by_name() {
    let dir = Dir::new();
    let ran = dir.run(Some("off"));
    assert_eq!(ran.0, Some(1), "{ran:?}");
    assert!(ran.2.contains("/edgegate could not be run"), "{ran:?}");
}

#[test]
fn a_launcher_where_the_gateway_should_be_stops_instead_of_running_itself_forever() {
    let dir = Dir::new();
    if std::fs::hard_link(LAUNCHER, path(&dir, "edgegate")).is_err() {
        std::fs::copy(LAUNCHER, path(&dir, "edgegate")).expect("copy the launcher");
    }
    let mut child = Command::new(path(&dir, "edgegate-launch"))
        .env(HAND_OVER_VAR, "off")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the launcher");
    // Bounded: a launcher that ran itself forever would never exit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the launcher kept running itself");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let stderr = std::io::read_to_string(child.stderr.take().expect("stderr")).expect("read stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("started by edgegate-launch"), "{stderr}");
}
