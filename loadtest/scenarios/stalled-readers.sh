#!/usr/bin/env bash
# Memory held for clients that stop reading: N clients (4 KiB receive buffers) each ask for
# a SIZE MiB answer and read none of it; after they have all stalled, the gateway's RSS and
# its stalled-response gauges, with `limits.max_stalled_responses` at LIMIT.
#
# Run:   loadtest/scenarios/stalled-readers.sh [path/to/edgegate] [N] [LIMIT] [SIZE]
#        defaults: target/release/edgegate, 500, 1000 (the default limit), 4; LIMIT "-" leaves
#        the field out (builds before it existed). RAMP=S spreads the clients' arrivals over S
#        seconds (default 0: all at once). Prints RSS and its peak: freed memory the allocator
#        keeps shows in RSS until it is purged.
# Needs: nginx, python3 (apt-get install -y nginx-light python3).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
n=${2:-500}
limit=${3:-1000}
size=${4:-4}
ulimit -n $((n + 1024))
ensure_binary "$bin"
up=$(free_port); gw=$(free_port); admin=$(free_port)
mkdir -p "$work/www/api"
head -c "$((size << 20))" /dev/zero > "$work/www/api/big"
chmod a+rX "$work" "$work/www" "$work/www/api" "$work/www/api/big"  # nginx's workers may run as another user
cat > "$work/up.conf" <<CONF
worker_processes 1; daemon off; error_log $work/up.err warn; pid $work/up.pid;
events { worker_connections $((n + 100)); }
http { access_log off; client_body_temp_path $work/b; proxy_temp_path $work/p; fastcgi_temp_path $work/f; uwsgi_temp_path $work/u; scgi_temp_path $work/s;
  server { listen 127.0.0.1:$up; root $work/www; } }
CONF
nginx -p "$work" -c "$work/up.conf" & pids+=($!)
# LIMIT "-": the field left out, for builds that predate it.
stalled_limit=""; [ "$limit" = - ] || stalled_limit="max_stalled_responses: $limit, max_connections_per_client: $((n + 100)), $UNBOUNDED_NEW_CONNECTIONS, "
write_gateway_config "$gw" "$admin" "$up" "" "limits: {${stalled_limit}max_connections: $((n + 100))}"
run_gateway warn
[ "$(curl -sS -o /dev/null -w "%{http_code}" "http://127.0.0.1:$gw/api/big")" = 200 ] || { echo "the answer is not served" >&2; cat "$scratch/gw.log" "$work/up.err" >&2; exit 1; }
python3 - "$gw" "$n" "$gwpid" "$admin" "$limit" "$size" <<'PY'
import json, socket, sys, time, urllib.request
port, n, pid, admin, size = (int(a) for a in sys.argv[1:5] + sys.argv[6:7])
limit = sys.argv[5]
ramp = float(__import__("os").environ.get("RAMP", "0"))
def rss():
    with open(f"/proc/{pid}/status") as f:
        return int([l for l in f if l.startswith("VmRSS")][0].split()[1])
def peak():
    with open(f"/proc/{pid}/status") as f:
        return int([l for l in f if l.startswith("VmHWM")][0].split()[1])
def metric(name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
    return next((float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + " ")), -1.0)
before = rss()
held = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /api/big HTTP/1.1\r\nHost: h.test\r\n\r\n")
    held.append(s)  # never read
    time.sleep(ramp / n)
for i in range(int(__import__("os").environ.get("WATCH", "0"))):
    time.sleep(1); print(i + 1, "s:", metric("edgegate_stalled_responses"), metric("edgegate_inflight_requests"), rss(), file=sys.stderr)
time.sleep(6)  # every write has waited past the second that makes it stalled (the first writes fill the kernel buffers: ~3 s here)
after = rss()
print(json.dumps({"clients": n, "limit": limit, "answer_mib": size, "ramp_s": ramp, "peak_rss_kib": peak(),
                  "rss_before_kib": before, "rss_after_kib": after,
                  "held_kib_per_client": round((after - before) / n, 1),
                  "stalled": metric("edgegate_stalled_responses"),
                  "cut": metric("edgegate_stalled_responses_cut_total"),
                  "inflight": metric("edgegate_inflight_requests")}))
PY
