#!/usr/bin/env bash
# Where a proxied request's latency goes, at one open-loop rate: the client's view (the same
# rate sent straight to the pod first, then through edgegate) beside the gateway's own view
# of every request, from its access log — `duration_us` (request head read → response
# written), `upstream_us` (first pick of an endpoint → the response head that was forwarded)
# and their difference, the gateway's own steps (routing, filters, policy, forwarding, the
# response body's transfer). Also each gateway thread's CPU time and its time runnable but
# not running (preempted by a thread of its own or another process on its core), from
# /proc/PID/task/TID/schedstat.
#
# What it tells: if the own-steps tail is tens of microseconds while the client's p99 is
# milliseconds, the added tail is queueing — the request waiting for the busy worker to
# read it, or the pod's answer waiting for it (counted in `upstream_us`) — or the machine,
# not work the gateway does per request.
#
# Whether that queueing is spread out or comes in bursts: the slow requests (the gateway's
# own `duration_us` over 0.5 ms) counted per 10 ms window of the access log's timestamps,
# and the share of them in the busiest 5 % of windows — near 1 when the core stalls now and
# then for milliseconds and every request that arrives meanwhile waits, near 0.05 when
# they are spread evenly. Beside it, the kernel's own housekeeping threads that can take a
# core for milliseconds (DAMON's `kdamond`, `kswapd`, `ksoftirqd`), sampled every 5 ms from
# core 1: each run of more than 0.5 ms within one sample, and how many episodes (busy
# windows, 20 or more slow requests each, in a row) begin from 10 ms before to 20 ms after
# one such run.
#
# The gateway on core 0 with one worker, audit on (as the `proxy` scenario), the access log to
# a file; the pod (one nginx worker) and the generator (64 connections) on core 1.
#
# Run:   loadtest/scenarios/latency-split.sh [path/to/edgegate] [RATE] [SECONDS]
#        defaults: target/release/edgegate, 5000, 8. AUDIT=0 runs without the audit log.
# Needs: nginx, python3, the release edgegate-loadtest.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
rate=${2:-5000}
secs=${3:-8}
ensure_binary "$bin"
ensure_generator

up=$(free_port); gw=$(free_port); admin=$(free_port)
start_upstream "$up" '{"service":"permits","status":"open"}' 1
audit=""
[ "${AUDIT:-1}" = 1 ] && audit="audit: {db: $work/state/audit.db}"
ACCESS_LOG=1 write_gateway_config "$gw" "$admin" "$up" "" "$audit"
# The log goes to $scratch (lib.sh): written beside the config, every line would wake the
# config watcher's thread (the directory is watched) on the gateway's core.
EDGEGATE_LOG=$(ACCESS_LOG=1 gateway_log_level) taskset -c 0 "$bin" run --config "$work/gw.yaml" \
  --state-dir "$work/state" >"$scratch/gw.log" 2>&1 &
gw_pid=$!; pids+=($gw_pid)
wait_ready "$admin"
curl -s -o /dev/null "http://127.0.0.1:$gw/api/x"

load() { # load URL OUT: the open loop at $rate for $secs from core 1
  taskset -c 1 "$gen_bin" load --url "$1" --rate "$rate" --duration "$secs" --connections 64 --json "$2" >/dev/null
}
threads() { for t in /proc/$gw_pid/task/*; do echo "$(basename "$t") $(tr ' ' _ < "$t/comm") $(cat "$t/schedstat")"; done; }

load "http://127.0.0.1:$up/api/x" "$scratch/direct.json"
sleep 1
skip=$(wc -l < "$scratch/gw.log")
threads > "$scratch/t0"
# The kernel threads that may stall a core, by pid (none on most machines but ksoftirqd).
kthreads=$(ps -eo pid=,comm= | awk '$2 ~ /^(kdamond|kswapd|ksoftirqd)/ {print $1}' | tr '\n' ' ')
taskset -c 1 python3 - "$scratch/kthreads" "$((secs + 2))" $kthreads <<'PY' &
import sys, time
out, secs, pids = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
names = {p: open(f"/proc/{p}/comm").read().strip() for p in pids}
def runtimes():
    return [int(open(f"/proc/{p}/schedstat").read().split()[0]) for p in pids]
end, last = time.time() + secs, runtimes()
with open(out, "w") as f:
    while time.time() < end:
        time.sleep(0.005)
        now, t = runtimes(), time.time()
        for p, a, b in zip(pids, last, now):
            if b - a > 500_000:  # ran more than 0.5 ms within the sample
                f.write(f"{t} {names[p]} {(b - a) / 1e6:.2f}\n")
        last = now
PY
sampler=$!
sleep 1 # the sampler's start-up off the generator's core time
load "http://127.0.0.1:$gw/api/x" "$scratch/gateway.json"
wait "$sampler" || true
threads > "$scratch/t1"
sleep 1 # the access log's writer drains its queue
tail -n +"$((skip + 1))" "$scratch/gw.log" > "$scratch/access.log"

echo "open loop at $rate req/s for $secs s, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
python3 - "$scratch/direct.json" "$scratch/gateway.json" "$scratch/access.log" "$scratch/t0" "$scratch/t1" "$secs" "$scratch/kthreads" <<'PY'
import json, sys
from collections import Counter
from datetime import datetime
direct, gateway = (json.load(open(p)) for p in sys.argv[1:3])
for name, r in (("straight to the pod", direct), ("through edgegate", gateway)):
    l = r["latency_ms"]
    print(f"  client, {name:20s} {r['ok']:7d} ok   p50 {l['p50']:7.2f}  p99 {l['p99']:7.2f}  p99.9 {l['p99_9']:7.2f}  max {l['max']:7.2f} ms")
dur, ups, own, stamps = [], [], [], []
for line in open(sys.argv[3]):
    if '"edgegate::access"' not in line:
        continue
    j = json.loads(line)
    if "upstream_us" in j:
        dur.append(j["duration_us"]); ups.append(j["upstream_us"]); own.append(j["duration_us"] - j["upstream_us"])
        stamps.append((datetime.fromisoformat(j["timestamp"].replace("Z", "+00:00")).timestamp(), j["duration_us"]))
def q(a, f):
    return a[min(len(a) - 1, int(f * len(a)))] / 1e3
print(f"  gateway's own view of {len(dur)} proxied requests (access log):")
for name, a in (("duration_us", dur), ("upstream_us", ups), ("own steps (difference)", own)):
    a.sort()
    print(f"    {name:24s}   p50 {q(a, .5):7.3f}  p99 {q(a, .99):7.3f}  p99.9 {q(a, .999):7.3f}  max {a[-1] / 1e3:7.3f} ms")
# Slow requests per 10 ms window (by when each was logged, at its end).
windows, slow = Counter(int(t * 100) for t, _ in stamps), Counter(int(t * 100) for t, d in stamps if d > 500)
busiest = sorted(slow.values(), reverse=True)[: max(1, len(windows) // 20)]
if slow:
    busy = sorted(w for w, n in slow.items() if n >= 20)
    # Episodes: busy windows in a row, each named by its first.
    episodes = [w for i, w in enumerate(busy) if i == 0 or w - busy[i - 1] > 1]
    print(f"  slow requests (own view over 0.5 ms): {sum(slow.values())}, {sum(busiest) / sum(slow.values()):.0%} of them in the busiest 5 % of 10 ms windows;"
          f" {len(busy)} windows with 20 or more, in {len(episodes)} episodes")
    runs = [(float(t), name, float(ms)) for t, name, ms in (l.split() for l in open(sys.argv[7]))]
    for name in sorted({n for _, n, _ in runs}):
        mine = [ms for _, n, ms in runs if n == name]
        print(f"    {name:16s} ran over 0.5 ms within 5 ms {len(mine)} times, longest {max(mine):.2f} ms")
    near = sum(any(-0.01 <= w / 100 - t + 0.005 <= 0.02 for t, _, _ in runs) for w in episodes)
    print(f"    episodes beginning within 20 ms after such a run began: {near} of {len(episodes)}")
def load(p): return {r[0]: r for r in (l.split() for l in open(p))}
before, after, secs = load(sys.argv[4]), load(sys.argv[5]), float(sys.argv[6])
print("  gateway threads (CPU ms, runnable-but-waiting ms, times scheduled):")
for tid, (_, name, run, wait, n) in after.items():
    _, _, run0, wait0, n0 = before.get(tid, (tid, name, "0", "0", "0"))
    ran, waited = (int(run) - int(run0)) / 1e6, (int(wait) - int(wait0)) / 1e6
    if ran >= 1:
        print(f"    {name:16s} ran {ran:8.1f} ms ({ran / secs / 10:4.1f} % of the core)  waited {waited:7.1f} ms  scheduled {int(n) - int(n0)}")
PY
