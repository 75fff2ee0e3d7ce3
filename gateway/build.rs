//! Link-time settings for the `edgegate` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=EDGEGATE_LINK_RELA");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    // EDGEGATE_LINK_RELA=1 keeps the plain RELA form: a post-link optimiser (BOLT, in
    // scripts/build-pgo.sh) rewrites the binary and does not carry RELR relocations over.
    let rela = std::env::var_os("EDGEGATE_LINK_RELA").is_some_and(|v| v == "1");
    if os == "linux" && env == "gnu" && !rela {
        // The binary's ~66,000 pointer relocations packed as RELR (glibc ≥ 2.36, GNU ld
        // ≥ 2.38; an older ld ignores the option with a warning): the dynamic loader reads
        // 25 KB of them instead of 1.6 MB of RELA entries at every start
        // (docs/benchmarks.md, "start-up").
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
