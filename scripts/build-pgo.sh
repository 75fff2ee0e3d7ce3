#!/usr/bin/env bash
# edgegate's release binary built with profile-guided optimisation (PGO): the gateway is
# built once instrumented, runs the training workload (`edgegate-loadtest train`: a day's
# traffic over HTTP/1.1 and HTTP/2 over TLS, cache hits, citizens' tokens and the policy,
# audited, refusals of hostile requests), and is built again with the profile it wrote, so
# that the compiler lays out and inlines the request path by how it really runs.
# docs/benchmarks.md ("Issue 17: the profile-guided build") has what it saves; the image build
# (deploy/Containerfile) uses it.
#
# With BOLT=1, BOLT, a post-link optimiser, then rewrites that binary by a second profile of the same
# training (taken by BOLT's own instrumentation): it lays out the code that runs together
# next to each other — hot blocks falling through, functions ordered by who calls whom, cold
# parts split away — which the compiler's per-function layout cannot do across the whole
# binary. The binary is linked for it with GNU ld, keeping its relocations
# (`--emit-relocs`) and the plain RELA form (BOLT does not carry packed RELR ones over).
# The result is checked by a short run of the same training, which fails on errors. Off by
# default: on the AMD EPYC and Intel Xeon machines measured it took 9.5 % of the simulated
# instruction-cache misses and 44 % of the taken branches away but no CPU time measurably
# (docs/benchmarks.md, "BOLT on the profile-guided build" and "the same code on an Intel Xeon").
#
# Run:   scripts/build-pgo.sh [SECONDS]      training load in seconds (default 30)
#        BOLT=1 adds the BOLT pass (llvm-bolt installed if missing: scripts/deps.sh --bolt).
#        EDGEGATE_TARGET_CPU=LEVEL builds the gateway for that CPU level (`-C target-cpu`,
#        e.g. x86-64-v3: AVX2, BMI2, FMA); the default runs on any x86-64 CPU. Such a binary
#        refuses to start on a CPU without those features (gateway/src/cpu.rs);
#        docs/deploy.md, "Building for a CPU level", has what it saves and how to deploy it.
#        EDGEGATE_LEVELS="x86-64-v3" also builds a binary for each level named, trained on
#        an instrumented build of its own, beside the default one:
#        target/pgo/edgegate-x86-64-v3. The default build runs it in its place on a CPU that
#        has the level's features (gateway/src/cpu.rs), so an image with both serves every
#        node with the fastest build it can run; so does target/pgo/edgegate-launch, the
#        small static launcher built beside them (the image's entrypoint). The training runs
#        the level's build, so the build machine must have those features. Not with BOLT=1
#        or EDGEGATE_TARGET_CPU.
# Out:   target/pgo/edgegate, the commit it was built from (target/pgo/edgegate.commit, which
#        the benchmark reports show), and the merged profiles target/pgo/edgegate.profdata and
#        (BOLT=1) target/pgo/edgegate.fdata
# Needs: what scripts/deps.sh installs, llvm-profdata of the compiler's own LLVM version
#        (rustup's llvm-tools component, or Debian's llvm-N: scripts/deps.sh --pgo), and for
#        BOLT=1 llvm-bolt (Debian's bolt-N, 19 or newer: scripts/deps.sh --bolt).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${1:-30}
# The commit built, noted beside the binary (edgegate.commit) for the benchmark reports: the
# binary is often measured from a tree that has moved on since. "+changes" when the tree's
# code differs from it (results and generated tables, which the scenarios write, aside).
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain --untracked-files=no -- . ':!loadtest/results' ':!docs/benchmarks.md' 2>/dev/null)" ] &&
  commit="$commit+changes"
host=$(rustc -vV | sed -n 's/^host: //p')
major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')

# llvm-profdata reads only profiles of its own LLVM version or older: the compiler's first.
find_profdata() {
  local own
  own="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
  if [ -x "$own" ]; then echo "$own"; return; fi
  for p in "/usr/lib/llvm-$major/bin/llvm-profdata" "$(command -v "llvm-profdata-$major" || true)"; do
    if [ -n "$p" ] && [ -x "$p" ]; then echo "$p"; return; fi
  done
}
# llvm-bolt: on the PATH, or the newest of Debian's bolt-N packages.
find_bolt() {
  if command -v llvm-bolt >/dev/null; then command -v llvm-bolt; return; fi
  ls -d /usr/lib/llvm-*/bin/llvm-bolt 2>/dev/null | sort -V | tail -1
}
"$root/scripts/deps.sh"
profdata=$(find_profdata)
if [ -z "$profdata" ] && command -v rustup >/dev/null; then
  rustup component add llvm-tools >/dev/null 2>&1 || true
  profdata=$(find_profdata)
fi
if [ -z "$profdata" ]; then
  "$root/scripts/deps.sh" --pgo
  profdata=$(find_profdata)
fi
[ -n "$profdata" ] || { echo "edgegate: no llvm-profdata for LLVM $major" >&2; exit 1; }

bolt=""
if [ "${BOLT:-0}" = 1 ]; then
  [ -z "${EDGEGATE_LEVELS:-}" ] || { echo "edgegate: EDGEGATE_LEVELS with BOLT=1" >&2; exit 1; }
  bolt=$(find_bolt)
  if [ -z "$bolt" ]; then "$root/scripts/deps.sh" --bolt; bolt=$(find_bolt); fi
  [ -n "$bolt" ] || { echo "edgegate: no llvm-bolt" >&2; exit 1; }
fi
out="$root/target/pgo"
cpu=""
if [ -n "${EDGEGATE_TARGET_CPU:-}" ]; then
  [ -z "${EDGEGATE_LEVELS:-}" ] || { echo "edgegate: EDGEGATE_LEVELS with EDGEGATE_TARGET_CPU" >&2; exit 1; }
  cpu="-Ctarget-cpu=$EDGEGATE_TARGET_CPU"
  commit="$commit ($EDGEGATE_TARGET_CPU)"
fi
mkdir -p "$out"
# Level builds of an earlier run go: the default build would hand over to a stale one.
rm -f "$out"/edgegate-*
cargo build --release --locked -p edgegate-loadtest

# One profile-guided build: instrumented (in GEN), trained, its profile merged (to PROFILE)
# and built again with it (in DIR), with the CPU flags CPU and the extra flags EXTRA.
# --target: RUSTFLAGS then reach the gateway's crates only, not build scripts or proc macros.
pgo_build() { # CPU GEN PROFILE DIR EXTRA
  local cpu=$1 gen=$2 profile=$3 dir=$4 extra=$5 raw="$2/profraw"
  rm -rf "$raw"; mkdir -p "$raw"
  echo "edgegate: instrumented build${cpu:+ ($cpu)}" >&2
  RUSTFLAGS="${RUSTFLAGS:-} $cpu -Cprofile-generate=$raw" \
    cargo build --release --locked -p edgegate --target "$host" --target-dir "$gen"
  echo "edgegate: training (${seconds} s)" >&2
  LLVM_PROFILE_FILE="$raw/edgegate-%p-%m.profraw" \
    "$root/target/release/edgegate-loadtest" train --gateway "$gen/$host/release/edgegate" --seconds "$seconds"
  "$profdata" merge -o "$profile" "$raw"
  echo "edgegate: optimised build${cpu:+ ($cpu)}" >&2
  EDGEGATE_LINK_RELA=$([ -n "$bolt" ] && echo 1 || echo 0) \
  RUSTFLAGS="${RUSTFLAGS:-} $cpu -Cprofile-use=$profile $extra" \
    cargo build --release --locked -p edgegate --target "$host" --target-dir "$dir"
}

link=""
[ -n "$bolt" ] && link="-Clinker-features=-lld -Clink-arg=-Wl,--emit-relocs"
pgo_build "$cpu" "$root/target/pgo-gen" "$out/edgegate.profdata" "$out" "$link"
if [ -z "$bolt" ]; then
  cp "$out/$host/release/edgegate" "$out/edgegate"
  echo "$commit" >"$out/edgegate.commit"
  echo "edgegate: $out/edgegate ($commit)" >&2
  # The builds for CPU levels, each trained on its own instrumented build: the code the
  # compiler takes for a level (a crate's AVX2 path chosen at compile time) is not the
  # default build's, and a profile of one does not fit the other there (httparse's header
  # scan, memchr). Each in target directories of its own, so the default build's stay.
  for level in ${EDGEGATE_LEVELS:-}; do
    pgo_build "-Ctarget-cpu=$level" "$root/target/pgo-gen-$level" "$out/edgegate-$level.profdata" "$out-$level" ""
    cp "$out-$level/$host/release/edgegate" "$out/edgegate-$level"
    echo "edgegate: $out/edgegate-$level ($commit, $level)" >&2
  done
  # With level builds, the launcher beside them (the image's entrypoint): static, so that it
  # starts without the loader, and against musl, whose start-up asks the CPU nothing; a
  # static glibc measures the caches with CPUID after CPUID before main (~0.6 ms of a
  # start on a KVM guest, where each traps: docs/benchmarks.md, "the launcher against
  # musl"). Against a static glibc where rustup cannot add the musl target.
  if [ -n "${EDGEGATE_LEVELS:-}" ]; then
    musl=${host%-gnu}-musl
    if rustup target list --installed 2>/dev/null | grep -qx "$musl" || rustup target add "$musl" >/dev/null 2>&1; then
      cargo build --release --locked -p edgegate-launch --target "$musl" --target-dir "$root/target/launch"
      cp "$root/target/launch/$musl/release/edgegate-launch" "$out/edgegate-launch"
    else
      echo "edgegate: warning: no $musl target (rustup target add $musl): the launcher is built against a static glibc" >&2
      RUSTFLAGS="-Ctarget-feature=+crt-static -Crelocation-model=static" \
        cargo build --release --locked -p edgegate-launch --target "$host" --target-dir "$root/target/launch"
      cp "$root/target/launch/$host/release/edgegate-launch" "$out/edgegate-launch"
    fi
    # The launcher hands over: it runs this CPU's build (or the default one) with --version.
    "$out/edgegate-launch" --version >/dev/null
    echo "edgegate: $out/edgegate-launch" >&2
  fi
  exit 0
fi

# BOLT: instrument, train again, merge the per-process profiles (lines of "branch from, to,
# mispredictions, count": counts of the same branch add up), rewrite.
fdata="$out/fdata"; rm -rf "$fdata"; mkdir -p "$fdata"
echo "edgegate: BOLT instrumentation ($bolt)" >&2
"$bolt" "$out/$host/release/edgegate" -o "$out/edgegate.instrumented" -instrument \
  --instrumentation-file="$fdata/edgegate" --instrumentation-file-append-pid >"$out/bolt-instrument.log" 2>&1
echo "edgegate: training for BOLT (${seconds} s)" >&2
"$root/target/release/edgegate-loadtest" train --gateway "$out/edgegate.instrumented" --seconds "$seconds" >/dev/null
awk '{ key = $1; for (i = 2; i < NF; i++) key = key " " $i; count[key] += $NF }
  END { for (k in count) print k, count[k] }' "$fdata"/*.fdata | LC_ALL=C sort >"$out/edgegate.fdata"
"$bolt" "$out/$host/release/edgegate" -o "$out/edgegate.bolt" -data="$out/edgegate.fdata" \
  -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold -split-eh \
  -icf=1 -use-gnu-stack -dyno-stats >"$out/bolt.log" 2>&1 ||
  { tail -20 "$out/bolt.log" >&2; exit 1; }
grep -E "have non-empty execution profile|taken branches \(" "$out/bolt.log" | sed 's/^/  /' >&2 || true
echo "edgegate: checking the rewritten binary (training, 5 s)" >&2
"$root/target/release/edgegate-loadtest" train --gateway "$out/edgegate.bolt" --seconds 5 >/dev/null
mv "$out/edgegate.bolt" "$out/edgegate"
echo "$commit" >"$out/edgegate.commit"
rm -f "$out/edgegate.instrumented"
echo "edgegate: $out/edgegate ($commit)" >&2
