#!/usr/bin/env bash
# CPU per request with one worker and with two — the shipped DaemonSet's
# `runtime: {threads: 2}` — with and without work stealing, beside nginx with one and two
# worker processes, everything on both cores as on a node: no server, pod or generator
# pinned. The other scenarios measure one worker on a core of its own; this one shows what a
# second worker costs each request (the state the workers share: caches, counters, the audit
# queue, the upstream pool) and whether tokio's work stealing pays for itself here.
#
# Five servers in front of one pod (nginx, one worker): edgegate with one worker, with two
# and work stealing, with two and none (`work_stealing: false`), each with its own audit log
# (AUDIT=0: none); nginx with one worker and with two. Each round drives each server in turn
# at RATE requests a second, open loop, 64 connections (edgegate-loadtest), and reads every
# thread's on-CPU time from /proc/PID/task/TID/schedstat (nanoseconds, exact) before and
# after; a server's figure is its CPU over the requests served, with the open loop's p50 and
# p99. Medians over the rounds at the end, and each edgegate's ratio to nginx with as many
# workers.
#
# Run:   [AUDIT=0] [H2=1] loadtest/scenarios/workers.sh [path/to/edgegate] [RATE] [SECONDS] [ROUNDS]
#        defaults: target/release/edgegate, 15000, 6, 3
#        The image ships the profile-guided build: pass target/pgo/edgegate (scripts/build-pgo.sh)
#        for the shipped figures; the first line out names the build measured.
#        H2=1: every server terminates TLS (TLS 1.3, an ECDSA P-256 certificate) and the
#        generator speaks HTTP/2 (64 streams), as browsers do to a citizen-facing listener.
# Needs: nginx, openssl, python3, the release edgegate-loadtest.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
rate=${2:-15000}
secs=${3:-6}
rounds=${4:-3}
ensure_binary "$bin"
ensure_generator

up=$(free_port)
start_upstream "$up" '{"service":"permits","status":"open"}'
scheme=http; h2=()
if [ "${H2:-0}" = 1 ]; then tls_certificate ec; scheme=https; h2=(--http2); fi

# edgegate_with NAME THREADS STEALING: a gateway of its own (config, state, audit log) in
# $work/NAME; its pid in pid[NAME] and its port in port[NAME].
declare -A pid=() port=()
edgegate_with() {
  local dir=$work/$1 gw admin audit=""
  mkdir -p "$dir"
  gw=$(free_port); admin=$(free_port)
  [ "${AUDIT:-1}" = 1 ] && audit="audit: {db: $dir/state/audit.db}"
  write_gateway_config "$gw" "$admin" "$up" "" "$audit"
  sed -e "s|runtime: {threads: 1, work_stealing: false}|runtime: {threads: $2, work_stealing: $3}|" "$work/gw.yaml" > "$dir/gw.yaml"
  if [ "$scheme" = https ]; then
    sed -i "s|address: \"127.0.0.1:$gw\"}|address: \"127.0.0.1:$gw\", tls: {certificates: [{cert: $work/cert.crt, key: $work/cert.key}]}}|" "$dir/gw.yaml"
  fi
  rm "$work/gw.yaml"
  EDGEGATE_LOG=warn "$bin" run --config "$dir/gw.yaml" --state-dir "$dir/state" >"$scratch/$1.log" 2>&1 &
  pid[$1]=$!; pids+=("${pid[$1]}"); port[$1]=$gw
  wait_ready "$admin"
}
# nginx_with NAME WORKERS: nginx proxying to the pod with keep-alive (the yardstick of the
# other scenarios) with that many worker processes.
nginx_with() {
  local ng
  ng=$(free_port)
  write_nginx_peer_config "$ng" "$up"
  mkdir -p "$work/$1"
  sed -e "s|worker_processes 1;|worker_processes $2;|" -e "s|pid $work/ng/pid;|pid $work/$1/pid;|" \
    "$work/ng/ng.conf" > "$work/$1/ng.conf"
  if [ "$scheme" = https ]; then
    sed -i "s|listen 127.0.0.1:$ng;|listen 127.0.0.1:$ng ssl http2; ssl_certificate $work/cert.crt; ssl_certificate_key $work/cert.key;|" "$work/$1/ng.conf"
  fi
  nginx -p "$work/ng" -c "$work/$1/ng.conf" & pids+=($!)
  for _ in $(seq 50); do [ -s "$work/$1/pid" ] && break; sleep 0.1; done
  pid[$1]=$(cat "$work/$1/pid"); port[$1]=$ng
}

edgegate_with edgegate-1 1 false
edgegate_with edgegate-2-stealing 2 true
edgegate_with edgegate-2 2 false
nginx_with nginx-1 1
nginx_with nginx-2 2
servers=(nginx-1 edgegate-1 nginx-2 edgegate-2-stealing edgegate-2)
for s in "${servers[@]}"; do
  curl -sfk -o /dev/null "$scheme://127.0.0.1:${port[$s]}/api/x" || { echo "$s does not answer" >&2; exit 1; }
done

# cpu_ns NAME: the on-CPU nanoseconds of every thread of the server's processes so far (an
# nginx master's workers included), the times those threads were scheduled, and the
# processes' user and system time in clock ticks (/proc/PID/stat, for the split).
cpu_ns() {
  local p=${pid[$1]} ps
  ps="$p $(pgrep -P "$p" | tr '\n' ' ' || true)"
  # shellcheck disable=SC2086
  { for q in $ps; do cat /proc/$q/task/*/schedstat 2>/dev/null; done | awk '{s += $1; n += $3} END {printf "%.0f %.0f ", s, n}'
    for q in $ps; do sed 's/.*) //' /proc/$q/stat 2>/dev/null; done | awk '{u += $12; k += $13} END {printf "%d %d\n", u, k}'; }
}
tick_us=$((1000000 / $(getconf CLK_TCK)))
# Which build is measured: the image ships the profile-guided one (scripts/build-pgo.sh, which
# notes its commit beside it), ~22 % cheaper a request than a plain release build.
if [ -f "$(dirname "$bin")/edgegate.commit" ]; then build="profile-guided build of $(cat "$(dirname "$bin")/edgegate.commit")"
else build="$bin (not the profile-guided build the image ships: scripts/build-pgo.sh, then target/pgo/edgegate)"; fi
echo "edgegate: $build"

echo "open loop at $rate req/s for $secs s, $rounds rounds, $([ "$scheme" = https ] && echo "HTTP/2 over TLS" || echo "HTTP/1.1"); every process on both cores (audit log ${AUDIT:-1})"
: > "$scratch/rows"
for r in $(seq "$rounds"); do
  for s in "${servers[@]}"; do
    read -r before runs0 user0 sys0 < <(cpu_ns "$s")
    "$gen_bin" load --url "$scheme://127.0.0.1:${port[$s]}/api/x" "${h2[@]}" --rate "$rate" --duration "$secs" \
      --connections 64 --json "$scratch/load.json" >/dev/null
    read -r after runs1 user1 sys1 < <(cpu_ns "$s")
    python3 - "$s" "$r" "$before" "$after" "$((runs1 - runs0))" "$scratch/load.json" \
      "$(((user1 - user0) * tick_us))" "$(((sys1 - sys0) * tick_us))" >> "$scratch/rows" <<'PY'
import json, sys
name, rnd, before, after, runs, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
user, system = int(sys.argv[7]), int(sys.argv[8])
d = json.load(open(path))
l, ok = d["latency_ms"], max(d["ok"], 1)
print(name, rnd, (after - before) / 1e3 / ok, l["p50"], l["p99"], d["ok"], sum(d["errors"].values()), runs / ok, user / ok, system / ok)
PY
    tail -n 1 "$scratch/rows" | awk '{printf "  round %s %-20s %6.2f µs CPU a request (user %.2f, system %.2f), %.2f times scheduled, p50 %.2f ms, p99 %.2f ms, %d served, %d errors\n", $2, $1, $3, $9, $10, $8, $4, $5, $6, $7}'
  done
done
python3 - "$scratch/rows" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rnd, cpu, p50, p99, ok, err, runs, user, system = line.split()
    rows.setdefault(name, []).append((int(rnd), float(cpu), float(p99)))
med = {n: statistics.median(c for _, c, _ in v) for n, v in rows.items()}
print("medians over the rounds (µs CPU a request; p99 ms):")
for n, v in rows.items():
    print(f"  {n:20s} {med[n]:6.2f}   p99 {statistics.median(p for _, _, p in v):6.2f}")
for n, yard in (("edgegate-1", "nginx-1"), ("edgegate-2-stealing", "nginx-2"), ("edgegate-2", "nginx-2")):
    by_round = [c / dict((r, y) for r, y, _ in rows[yard])[r] for r, c, _ in rows[n]]
    print(f"  {n} / {yard}: {med[n] / med[yard]:.2f}x (run by run: {' / '.join(f'{x:.2f}' for x in by_round)})")
print(f"  a second worker costs edgegate {med['edgegate-2-stealing'] / med['edgegate-1']:.2f}x (stealing), "
      f"{med['edgegate-2'] / med['edgegate-1']:.2f}x (none); nginx {med['nginx-2'] / med['nginx-1']:.2f}x")
PY
