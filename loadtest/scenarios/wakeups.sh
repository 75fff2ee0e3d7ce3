#!/usr/bin/env bash
# How often a proxy's sends wake a sleeping peer on the other core, and how long it takes
# to turn a read into a send: edgegate and nginx side by side at the same open-loop rate,
# the proxy on core 1, the generator and the pod on core 0 (the harness's layout).
#
# Each wake-up of a task on the other core that has to interrupt it is an inter-processor
# interrupt, charged to the sender as kernel time. On bare metal one costs about a
# microsecond; in a virtual machine it is a hypervisor exit, and on some (nested) guests
# it costs ten. Whether a send needs one depends on timing: a peer that has just written
# is still awake for a microsecond or two, so a proxy that answers within that window
# rarely interrupts it, and one that takes longer finds it asleep.
#
# Prints, per server: IPIs sent and tasks woken per request, and the time from a read's
# return to the next send (per kind of read: the client's request, the pod's response).
#
# Run:   [CACHE=1] loadtest/scenarios/wakeups.sh [path/to/edgegate] [RATE] [SECONDS]
#        CACHE=1 caches edgegate's route (every request after the first is a hit, one send)
#        and has nginx answer `return 200` itself.
# Needs: root (perf's tracepoints), perf, nginx, python3, the release edgegate-loadtest.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
rate=${2:-25000}
secs=${3:-3}
ensure_binary "$bin"
ensure_generator
command -v perf >/dev/null || { echo "wakeups.sh: needs perf" >&2; exit 1; }

up=$(free_port); gw=$(free_port); admin=$(free_port); ng=$(free_port)
start_upstream "$up" '{"service":"permits","status":"open"}' 0
write_gateway_config "$gw" "$admin" "$up" "$(cached_route)"
EDGEGATE_LOG=warn taskset -c 1 "$bin" run --config "$work/gw.yaml" --state-dir "$work/state" >"$work/gw.log" 2>&1 &
pids+=($!)
start_nginx_peer "$ng" "$up" 1
wait_ready "$admin"

events=syscalls:sys_exit_recvfrom,syscalls:sys_exit_read,syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_write,ipi:ipi_send_cpu,sched:sched_waking
for who in nginx edgegate; do
  port=$ng; [ "$who" = edgegate ] && port=$gw
  taskset -c 0 "$gen_bin" load --url "http://127.0.0.1:$port/api/x" --rate "$rate" --duration 2 >/dev/null
  taskset -c 0 "$gen_bin" load --url "http://127.0.0.1:$port/api/x" --rate "$rate" --duration $((secs + 2)) >/dev/null &
  load=$!
  sleep 1
  perf record -q -e "$events" -C 1 -o "$work/$who.data" -- sleep "$secs" 2>/dev/null
  wait "$load"
  perf script -i "$work/$who.data" -F comm,time,event,trace 2>/dev/null > "$work/$who.txt"
done

python3 - "$work" "$rate" "$secs" <<'PY'
import json, re, sys, collections
work, rate, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
servers = {"nginx": ("nginx",), "edgegate": ("proxy",)}
line = re.compile(r'\s*(\S+)\s+([\d.]+):\s+(\S+):\s*(.*)')
for who, comms in servers.items():
    ev = []
    for l in open(f"{work}/{who}.txt"):
        m = line.match(l)
        if m and m.group(1).startswith(comms):
            ev.append((float(m.group(2)), m.group(3).split(":")[-1], m.group(4).strip()))
    requests = rate * secs
    ipis = sum(1 for e in ev if e[1] == "ipi_send_cpu")
    woken = sum(1 for e in ev if e[1] == "sched_waking")
    # Read → next send, keyed by the read's size (the client's request and the pod's
    # response differ); only reads followed by a send before any other read.
    gaps = collections.defaultdict(list)
    for i, (t, e, a) in enumerate(ev):
        if e in ("sys_exit_recvfrom", "sys_exit_read") and not a.startswith("0xfffff") and a != "0x0":
            for t2, e2, _ in ev[i + 1:i + 8]:
                if e2 in ("sys_enter_sendto", "sys_enter_writev", "sys_enter_write"):
                    gaps[a].append((t2 - t) * 1e6)
                    break
                if e2 in ("sys_exit_recvfrom", "sys_exit_read"):
                    break
    out = {"server": who, "rate": rate, "ipis_per_request": round(ipis / requests, 3),
           "wakeups_per_request": round(woken / requests, 3), "read_to_send_us": {}}
    for size, g in sorted(gaps.items(), key=lambda kv: -len(kv[1]))[:2]:
        g.sort()
        q = lambda p: round(g[int(p * (len(g) - 1))], 1)
        out["read_to_send_us"][f"read of {int(size, 16)} bytes"] = {"n": len(g), "p50": q(.5), "p90": q(.9), "mean": round(sum(g) / len(g), 2)}
    print(json.dumps(out))
PY
