#!/usr/bin/env bash
# edgegate's release binary built with profile-guided optimisation (PGO): the gateway is
# built once instrumented, runs the training workload (`edgegate-loadtest train`: a day's
# traffic over HTTP/1.1 and HTTP/2 over TLS, cache hits, citizens' tokens and the policy,
# audited, refusals of hostile requests), and is built again with the profile it wrote, so
# that the compiler lays out and inlines the request path by how it really runs.
# docs/benchmarks.md ("Issue 17: the profile-guided build") has what it saves; the image build
# (deploy/Containerfile) uses it.
#
# Run:   scripts/build-pgo.sh [SECONDS]      training load in seconds (default 30)
# Out:   target/pgo/edgegate, and the merged profile target/pgo/edgegate.profdata
# Needs: what scripts/deps.sh installs, and llvm-profdata of the compiler's own LLVM
#        version: rustup's llvm-tools component, or Debian's llvm-N (scripts/deps.sh --pgo).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${1:-30}
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

# --target: RUSTFLAGS then reach the gateway's crates only, not build scripts or proc macros.
gen="$root/target/pgo-gen"; out="$root/target/pgo"; raw="$gen/profraw"
rm -rf "$raw"; mkdir -p "$raw" "$out"
echo "edgegate: instrumented build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$raw" \
  cargo build --release --locked -p edgegate --target "$host" --target-dir "$gen"
cargo build --release --locked -p edgegate-loadtest
echo "edgegate: training (${seconds} s)" >&2
LLVM_PROFILE_FILE="$raw/edgegate-%p-%m.profraw" \
  "$root/target/release/edgegate-loadtest" train --gateway "$gen/$host/release/edgegate" --seconds "$seconds"
"$profdata" merge -o "$out/edgegate.profdata" "$raw"
echo "edgegate: optimised build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$out/edgegate.profdata" \
  cargo build --release --locked -p edgegate --target "$host" --target-dir "$out"
cp "$out/$host/release/edgegate" "$out/edgegate"
echo "edgegate: $out/edgegate" >&2
