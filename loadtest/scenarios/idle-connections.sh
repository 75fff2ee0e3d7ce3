#!/usr/bin/env bash
# Memory per idle keep-alive client connection: opens N connections to the gateway, sends
# one request on each and keeps them all open and idle, then reads the gateway's RSS.
#
# Run:   loadtest/scenarios/idle-connections.sh [path/to/edgegate] [N]
#        defaults: target/release/edgegate, 10000. Target: ≤ 8 KiB per idle connection.
# Needs: nginx, python3 (apt-get install -y nginx-light python3).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/release/edgegate}
n=${2:-10000}
ulimit -n $((n + 1024))  # each process holds one end of every connection
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
[ -x "$bin" ] || cargo build --release -q -p edgegate --manifest-path "$root/Cargo.toml"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port); gw=$(free_port); admin=$(free_port)
cat > "$work/up.conf" <<CONF
worker_processes 1; daemon off; error_log $work/up.err warn; pid $work/up.pid;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $work/b; proxy_temp_path $work/p; fastcgi_temp_path $work/f; uwsgi_temp_path $work/u; scgi_temp_path $work/s;
  server { listen 127.0.0.1:$up; location / { default_type application/json; return 200 '{"status":"open"}'; } } }
CONF
cat > "$work/gw.yaml" <<YAML
listeners: [{name: public, address: "127.0.0.1:$gw"}]
admin: {address: "127.0.0.1:$admin"}
runtime: {threads: 1, work_stealing: false}
logging: {access_log: false}
upstreams: {permits: {endpoints: [{address: "127.0.0.1:$up"}]}}
routes: [{name: permits, match: {path_prefix: /api/}, upstream: permits, public: true}]
YAML
nginx -p "$work" -c "$work/up.conf" & pids+=($!)
EDGEGATE_LOG=warn "$bin" run --config "$work/gw.yaml" --state-dir "$work/state" >"$work/gw.log" 2>&1 & gwpid=$!; pids+=($gwpid)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$gw/api/warm" >/dev/null
rss() { awk '/^VmRSS/ {print $2}' "/proc/$gwpid/status"; }
before=$(rss)
python3 - "$gw" "$n" "$gwpid" "$before" <<'PY'
import asyncio, sys, json
port, n, pid, before = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
async def one(conns):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /api/x HTTP/1.1\r\nHost: h.test\r\n\r\n")
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    await r.readexactly(length)
    conns.append((r, w))
async def main():
    conns = []
    for i in range(0, n, 200):
        await asyncio.gather(*(one(conns) for _ in range(min(200, n - i))))
    await asyncio.sleep(2)
    with open(f"/proc/{pid}/status") as f:
        after = int([l for l in f if l.startswith("VmRSS")][0].split()[1])
    print(json.dumps({"connections": len(conns), "rss_before_kib": before, "rss_after_kib": after,
                      "kib_per_connection": round((after - before) / len(conns), 2)}))
    for _, w in conns:
        w.close()
asyncio.run(main())
PY
