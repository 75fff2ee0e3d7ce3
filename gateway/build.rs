//! Link-time settings for the `edgegate` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // The binary's ~66,000 pointer relocations packed as RELR (glibc ≥ 2.36, GNU ld
        // ≥ 2.38; an older ld ignores the option with a warning): the dynamic loader reads
        // 25 KB of them instead of 1.6 MB of RELA entries at every start
        // (docs/benchmarks.md, "start-up").
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
