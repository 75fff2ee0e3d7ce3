#!/usr/bin/env bash
# Installs what edgegate needs beyond the Rust toolchain, if missing (Debian/Ubuntu,
# apt-get; sudo when not root; safe to run repeatedly):
#
#   scripts/deps.sh             building and running: a C toolchain, cmake and pkg-config
#                               (Pingora builds zlib-ng with them)
#   scripts/deps.sh --test      + what the test suite uses: redis-server (the cache tests
#                               start their own on a free port), the sqlite3 client and
#                               prlimit (audit tests), promtool (metrics and rule checks;
#                               from Debian's prometheus package, whose server is not
#                               started), Python's venv (scripts/validate-deploy.sh), and
#                               nginx and HAProxy (the load-test smoke test runs the peers)
#   scripts/deps.sh --loadtest  + the load-test peers only (nginx, HAProxy, redis-server), wrk, valgrind, bpftrace
#   scripts/deps.sh --pgo       + Debian's LLVM of the compiler's own version, for its
#                               llvm-profdata (scripts/build-pgo.sh, when rustup cannot add it)
#   scripts/deps.sh --bolt      + BOLT's llvm-bolt (Debian's bolt-19) unless one is installed
#                               (scripts/build-pgo.sh)
set -euo pipefail
mode=${1:-}
need=()
command -v cc >/dev/null || need+=(build-essential)
command -v cmake >/dev/null || need+=(cmake)
command -v pkg-config >/dev/null || need+=(pkg-config)
if [ "$mode" = --test ] || [ "$mode" = --loadtest ]; then
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
fi
if [ "$mode" = --loadtest ]; then
  command -v wrk >/dev/null || need+=(wrk)                     # loadtest/scenarios/ab-cpu.sh
  command -v valgrind >/dev/null || need+=(valgrind)           # loadtest/scenarios/instructions.sh, segments.sh
  command -v bpftrace >/dev/null || need+=(bpftrace)           # loadtest/scenarios/tail-trace.sh
fi
if [ "$mode" = --test ]; then
  command -v sqlite3 >/dev/null || need+=(sqlite3)             # the audit tests edit a log with it
  command -v prlimit >/dev/null || need+=(util-linux)          # the audit tests fill the "disk" with it
  command -v promtool >/dev/null || need+=(prometheus)         # promtool: metrics and rule checks
  python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)  # scripts/validate-deploy.sh's tools
fi
if [ "$mode" = --pgo ]; then
  major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
  [ -x "/usr/lib/llvm-$major/bin/llvm-profdata" ] || need+=("llvm-$major")
fi
if [ "$mode" = --bolt ]; then
  command -v llvm-bolt >/dev/null || ls /usr/lib/llvm-*/bin/llvm-bolt >/dev/null 2>&1 || need+=(bolt-19)
fi
case "$mode" in ""|--test|--loadtest|--pgo|--bolt) ;; *) echo "usage: scripts/deps.sh [--test|--loadtest|--pgo|--bolt]" >&2; exit 2 ;; esac
[ ${#need[@]} -eq 0 ] && exit 0
echo "edgegate: installing ${need[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "edgegate: need ${need[*]} but am not root and have no sudo" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# Only promtool is wanted from the prometheus package: keep its server (and any other
# service a package brings) from being started, unless the machine already has a policy.
guard=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  guard=/usr/sbin/policy-rc.d
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$guard" >/dev/null
  $sudo chmod 755 "$guard"
  trap '$sudo rm -f "$guard"' EXIT
fi
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
