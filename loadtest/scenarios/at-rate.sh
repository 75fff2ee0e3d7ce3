#!/usr/bin/env bash
# CPU per request at the rates an edge node actually sees — tens to thousands of requests a
# second, not the closed-loop saturation the `proxy` table measures — edgegate (with its
# audit record, as the `proxy` scenario runs it) beside nginx proxying to the same pod.
#
# At such rates nearly every request is its own wake-up, and costs that saturation spreads
# over hundreds of requests fall on a few: a commit of the audit log, a timer tick, a
# background thread's poll. So each thread's on-CPU time is read from
# /proc/PID/task/TID/schedstat (nanoseconds, exact), not from the tick-sampled user and
# system times, which at a few thousand requests a second give a thread 0 or 50 µs per
# request by chance. Each run also prints the open loop's latency (p50, p99; the p99 also
# split into the wait for a free connection — all 64 held by earlier requests, which a stall
# of ~2.5 ms anywhere on the path causes — and the time from sending to the answer) and how
# much of the server's core the hypervisor took meanwhile (steal). Also prints the idle
# cost: each server's CPU and wake-ups per second with no requests at all.
#
# The server under test on core 0, the pod and the open-loop generator (edgegate-loadtest,
# 64 connections) on core 1; each rate is run against nginx and edgegate in turn.
#
# Run:   loadtest/scenarios/at-rate.sh [path/to/edgegate] ["RATE ..."] [SECONDS]
#        defaults: target/release/edgegate, "100 1000 5000", 8
#        AUDIT=0 runs edgegate without the audit log; GATEWAY_AUDIT='…' adds YAML inside the
#        gateway's `audit:` map (e.g. 'synchronous: normal'). CACHE=1 caches edgegate's route
#        (every request after the first a hit) and has nginx answer `return 200` itself;
#        ACCESS_LOG=1 turns both servers' access logs on (to files).
# Needs: nginx, python3, the release edgegate-loadtest.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
rates=${2:-100 1000 5000}
secs=${3:-8}
ensure_binary "$bin"
ensure_generator

start_gateway_beside_nginx 1 "$(cached_route)"
wait_ready "$admin"
curl -s -o /dev/null "http://127.0.0.1:$gw/api/x"
curl -s -o /dev/null "http://127.0.0.1:$ng/api/x"

# snap FILE PID...: one line per thread of those processes: name, on-CPU ns, times scheduled.
snap() {
  local f=$1; shift
  for p in "$@"; do
    for t in /proc/$p/task/*; do
      echo "$(basename "$t") $(tr ' ' _ < "$t/comm") $(awk '{print $1, $3}' "$t/schedstat")"
    done
  done > "$f"
}
# per_thread BEFORE AFTER DIVISOR UNIT: each thread's CPU (and times scheduled) over the
# interval divided by DIVISOR, the process's total first.
per_thread() {
  python3 - "$1" "$2" "$3" "$4" <<'PY'
import sys
def load(p): return {r[0]: r for r in (l.split() for l in open(p))}
b, a, div, unit = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rows, total, runs = [], 0.0, 0.0
for tid, (_, name, ns, n) in a.items():
    _, _, ns0, n0 = b.get(tid, (tid, name, "0", "0"))
    cpu, woke = (int(ns) - int(ns0)) / 1e3 / div, (int(n) - int(n0)) / div
    total += cpu; runs += woke
    if cpu >= 0.01: rows.append((name, cpu, woke))
print(f"    all threads     {total:8.2f} µs CPU {unit}  {runs:8.2f} times scheduled {unit}")
for name, cpu, woke in sorted(rows, key=lambda r: -r[1]):
    print(f"      {name:15s} {cpu:8.2f} µs       {woke:8.2f}")
PY
}
# Time the hypervisor ran something else on core 0 (the server's core) while this guest
# wanted it, in ms: /proc/stat's steal column, in clock ticks. Shown beside each run's
# latency, since on a virtual machine a stolen millisecond lands in the tail.
steal_ms() { awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu0" {printf "%d", $9 * 1000 / hz}' /proc/stat; }
total_us() { awk '{s += $3} END {printf "%.0f", s / 1e3}' "$1"; }

ng_worker=$(pgrep -P "$ng_pid" | head -1)
echo "idle, 10 s, no connections:"
for who in nginx edgegate; do
  pidset="$ng_pid $ng_worker"; [ "$who" = edgegate ] && pidset=$gw_pid
  # shellcheck disable=SC2086
  snap "$scratch/i0" $pidset; sleep 10
  # shellcheck disable=SC2086
  snap "$scratch/i1" $pidset
  echo "  $who"; per_thread "$scratch/i0" "$scratch/i1" 10 "per second"
done

for rate in $rates; do
  echo "open loop at $rate req/s for $secs s:"
  declare -A cpu=()
  for who in nginx edgegate; do
    port=$ng; pidset="$ng_pid $ng_worker"
    [ "$who" = edgegate ] && { port=$gw; pidset=$gw_pid; }
    # shellcheck disable=SC2086
    snap "$scratch/r0" $pidset
    steal0=$(steal_ms)
    taskset -c 1 "$gen_bin" load --url "http://127.0.0.1:$port/api/x" --rate "$rate" --duration "$secs" \
      --connections 64 --json "$scratch/load.json" >/dev/null
    # shellcheck disable=SC2086
    snap "$scratch/r1" $pidset
    steal=$(( $(steal_ms) - steal0 ))
    read -r n p50 p99 q99 s99 < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); l=r["latency_ms"]; print(r["ok"], l["p50"], l["p99"], r["queued_ms"]["p99"], r["service_ms"]["p99"])' "$scratch/load.json")
    cpu[$who]=$(( $(total_us "$scratch/r1") - $(total_us "$scratch/r0") ))
    cpu[$who]=$(python3 -c "print(f'{${cpu[$who]} / $n:.2f}')")
    echo "  $who: $n requests, latency p50 $p50 ms, p99 $p99 ms (p99 waiting for one of the 64 connections $q99 ms, once sent $s99 ms); the host took $steal ms of core 0 (steal)"
    per_thread "$scratch/r0" "$scratch/r1" "$n" "per request"
  done
  python3 -c "print(f'  edgegate / nginx: {${cpu[edgegate]} / ${cpu[nginx]}:.2f}×')"
done
