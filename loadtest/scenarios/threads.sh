#!/usr/bin/env bash
# CPU per request by thread: which of the gateway's threads (the request thread, the audit
# writers, the health checker, …) spends what. The gateway runs on core 0 with one worker in
# front of one nginx upstream on core 1; wrk (one thread, 16 keep-alive connections, core 1)
# drives it for D seconds; each thread's user and system time from /proc/PID/task/TID/stat
# over the run is divided by the requests wrk completed. Also prints the bytes the process
# wrote per request (`wchar` in /proc/PID/io) and, with the audit on, the commits.
#
# Run:   [AUDIT=0] loadtest/scenarios/threads.sh [path/to/edgegate] [D]
#        ACCESS_LOG=1 turns the access log on (a JSON line per request to a file).
#        The audit log is on by default (a record per request, as the `proxy` scenario runs
#        it); AUDIT=0 turns it off.
# Needs: nginx, wrk (scripts/deps.sh --loadtest installs them).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}; dur=${2:-5}
ensure_binary "$bin"
up=$(free_port); start_upstream "$up" '{"service":"permits","status":"open"}' 1
gw=$(free_port); admin=$(free_port)
audit=""
[ "${AUDIT:-1}" = 1 ] && audit="audit: {db: $work/state/audit.db}"
write_gateway_config "$gw" "$admin" "$up" "" "$audit"
EDGEGATE_LOG=$(gateway_log_level) taskset -c 0 "$bin" run --config "$work/gw.yaml" --state-dir "$work/state" >"$scratch/gw.log" 2>&1 &
pid=$!; pids+=($pid)
wait_ready "$admin"
curl -s -o /dev/null "http://127.0.0.1:$gw/api/x"
snap() { # FILE: one line per thread: tid name utime stime; then the process's wchar
  for t in /proc/$pid/task/*; do
    echo "$(basename "$t") $(tr ' ' _ < "$t/comm") $(awk '{print $14, $15}' "$t/stat")"
  done > "$1"
  awk '/^wchar/ {print "wchar", $2}' "/proc/$pid/io" >> "$1"
}
snap "$work/before"
n=$(taskset -c 1 wrk -t1 -c"${CONNS:-16}" -d"${dur}s" "http://127.0.0.1:$gw/api/x" | awk '/requests in/ {print $1}')
snap "$work/after"
metrics=$(curl -s "http://127.0.0.1:$admin/metrics")
python3 - "$work/before" "$work/after" "$n" "$(getconf CLK_TCK)" "$metrics" <<'PY'
import sys
def load(path):
    rows = [l.split() for l in open(path)]
    return {r[0]: r for r in rows if r[0] != "wchar"}, next(int(r[1]) for r in rows if r[0] == "wchar")
(before, w0), (after, w1) = load(sys.argv[1]), load(sys.argv[2])
n, tick = int(sys.argv[3]), int(sys.argv[4])
per = lambda ticks: ticks / tick * 1e6 / n
print(f"requests {n}")
total = [0.0, 0.0]
for tid, (_, name, u, s) in sorted(after.items(), key=lambda kv: kv[1][1]):
    _, _, u0, s0 = before.get(tid, (tid, name, "0", "0"))
    du, ds = per(int(u) - int(u0)), per(int(s) - int(s0))
    total[0] += du; total[1] += ds
    if du + ds >= 0.01:
        print(f"{name:16s} user {du:6.2f} µs  system {ds:6.2f} µs  per request")
print(f"{'process':16s} user {total[0]:6.2f} µs  system {total[1]:6.2f} µs  per request")
print(f"written {(w1 - w0) / n:.0f} bytes per request")
for line in sys.argv[5].splitlines():
    if line.startswith(("edgegate_audit_records_written_total ", "edgegate_audit_commit_seconds_count ")):
        print(line)
PY
