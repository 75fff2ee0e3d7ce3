#!/usr/bin/env bash
# System calls per proxied request: the gateway under `strace -c -f` while one keep-alive
# client sends N requests through it to a local nginx upstream; the counts divided by N.
# Like the instruction count, a figure that does not move with machine noise.
#
# Run:   [CACHE=1] loadtest/scenarios/syscalls.sh [path/to/edgegate] [N]
# Needs: strace, nginx, python3 (apt-get install -y strace nginx-light python3).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
n=${2:-2000}
ensure_binary "$bin"
setup_gateway_and_pod
run_gateway warn
keepalive_client 200   # warm: the upstream connection pooled, a cached route filled
strace -c -f -p "$gwpid" -o "$work/strace.txt" 2>/dev/null &
st=$!
sleep 0.5
keepalive_client "$n"
sleep 0.2
kill -INT "$st"; wait "$st" 2>/dev/null || true
python3 - "$work/strace.txt" "$n" "$bin" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] not in ("total",):
        calls = int(parts[3]); name = parts[-1]
        rows[name] = calls
n = int(sys.argv[2])
per = {k: round(v / n, 2) for k, v in sorted(rows.items(), key=lambda kv: -kv[1]) if v / n >= 0.01}
print(json.dumps({"binary": sys.argv[3], "requests": n, "syscalls_per_request": round(sum(rows.values()) / n, 2), "by_call": per}))
PY
