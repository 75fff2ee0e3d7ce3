//! Process-wide settings made first thing in `main`, before any thread starts.

/// Debian's CA bundle: the same certificates as `/etc/ssl/certs/*.0`, in one file.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// - Transparent huge pages off for this process. The allocator asks for them on its
///   arenas; each first touch of a 2 MiB page then costs a 2 MiB zeroing, which made up
///   most of start-up CPU and ~10 MiB of idle RSS for a gateway whose working set is small.
/// - The system CA roots (for upstream TLS without its own `ca`) read from the one bundle
///   file instead of the bundle *and* every hashed file in `/etc/ssl/certs` (the same
///   certificates twice): several ms on the first TLS connection to such an upstream (the
///   vendored pingora-core reads them then, once per process). Left alone when
///   `SSL_CERT_FILE` or `SSL_CERT_DIR` is set.
/// - Library errors without backtraces (`RUST_LIB_BACKTRACE=0`, unless it is set). With
///   `RUST_BACKTRACE` set, every `anyhow` error captured one, and the policy parser makes
///   an error at each backtrack: refusing a policy of 31 nested brackets took 8.3 s instead
///   of 0.14 s. Panics still print theirs (they read `RUST_BACKTRACE` alone).
pub fn setup() {
    let _ = nix::sys::prctl::set_thp_disable(true);
    if std::env::var_os("SSL_CERT_FILE").is_none()
        && std::env::var_os("SSL_CERT_DIR").is_none()
        && std::path::Path::new(SYSTEM_CA_BUNDLE).is_file()
    {
        // Sound: no other thread exists yet to read the environment concurrently.
        std::env::set_var("SSL_CERT_FILE", SYSTEM_CA_BUNDLE);
    }
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // Sound as above.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

/// Lowers the calling thread to the lowest nice value (19) of the normal policy: beside a
/// busy worker on the same core it gets ~1.5 % of the core, and every idle moment. False
/// where refused.
pub fn lowest_nice() -> bool {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy, ThreadPriority,
        ThreadSchedulePolicy,
    };
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
    )
    .is_ok()
}
