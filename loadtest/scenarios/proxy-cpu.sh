#!/usr/bin/env bash
# CPU microseconds per request: edgegate beside nginx, same load, measured in one run as
# BENCH.md describes (server on core 1, wrk and the upstream pod on core 0, keep-alive on
# both sides, one worker each, release build). Two scenarios (SCENARIO=…):
#   proxy      edgegate proxying to the pod beside nginx as a keep-alive reverse proxy
#   cache-hit  edgegate answering from its response cache beside nginx `return 200` — the
#              least any server can spend on a request (cache-hit-cpu.sh sets this)
#
# Run:   [SCENARIO=proxy|cache-hit] loadtest/scenarios/proxy-cpu.sh [seconds-per-run] [runs]
# Needs: nginx, wrk (apt-get install nginx-light wrk), python3; loopback only.
# Output: one JSON line per measurement in loadtest/results/proxy-cpu-<utc-date>.jsonl,
#         then a median table.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
scenario=${SCENARIO:-proxy}
case "$scenario" in proxy|cache-hit) ;; *) echo "SCENARIO must be proxy or cache-hit" >&2; exit 2 ;; esac
dur=${1:-8}
runs=${2:-3}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

for tool in nginx wrk taskset python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y nginx-light wrk util-linux python3" >&2; exit 1; }
done
cargo build --release -q -p edgegate -p edgegate-loadtest --manifest-path "$root/Cargo.toml"
gw_bin="$root/target/release/edgegate"
lt_bin="$root/target/release/edgegate-loadtest"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port=$(free_port); ngx_port=$(free_port); gw_port=$(free_port); gw_admin=$(free_port)

common="worker_processes 1; daemon off; error_log $work/%s.err warn; pid $work/%s.pid;
events { worker_connections 4096; }"
temp="client_body_temp_path $work/body; proxy_temp_path $work/proxy; fastcgi_temp_path $work/fcgi; uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;"

# The upstream "pod": nginx answering a small JSON body itself, on core 0.
printf "$common\nhttp { access_log off; $temp server { listen 127.0.0.1:$up_port; location / { default_type application/json; return 200 '{\"service\":\"permits\",\"status\":\"open\"}'; } } }\n" up up > "$work/up.conf"
# The peer on core 1: nginx as a keep-alive reverse proxy, or answering the pod's body itself.
if [ "$scenario" = proxy ]; then
  printf "$common\nhttp { access_log off; $temp upstream pods { server 127.0.0.1:$up_port; keepalive 128; } server { listen 127.0.0.1:$ngx_port; location / { proxy_pass http://pods; proxy_http_version 1.1; proxy_set_header Connection \"\"; } } }\n" ngx ngx > "$work/ngx.conf"
  route_cache=""
else
  printf "$common\nhttp { access_log off; $temp server { listen 127.0.0.1:$ngx_port; location / { default_type application/json; return 200 '{\"service\":\"permits\",\"status\":\"open\"}'; } } }\n" ngx ngx > "$work/ngx.conf"
  route_cache=", cache: {ttl: 1h}"
fi
cat > "$work/edgegate.yaml" <<YAML
listeners: [{name: public, address: "127.0.0.1:$gw_port"}]
admin: {address: "127.0.0.1:$gw_admin"}
runtime: {threads: 1, work_stealing: false}
logging: {access_log: false}
upstreams:
  permits: {endpoints: [{address: "127.0.0.1:$up_port"}]}
routes:
  - {name: permits, match: {path_prefix: /api/}, upstream: permits, public: true$route_cache}
YAML

taskset -c 0 nginx -p "$work" -c "$work/up.conf" & pids+=($!)
taskset -c 1 nginx -p "$work" -c "$work/ngx.conf" & pids+=($!)
EDGEGATE_LOG=warn taskset -c 1 "$gw_bin" run --config "$work/edgegate.yaml" > "$work/gw.log" 2>&1 & gw_pid=$!; pids+=($gw_pid)
sleep 1
ngx_worker=$(pgrep -P "$(cat "$work/ngx.pid")" | head -1)
[ -n "$ngx_worker" ] || { echo "nginx worker not found" >&2; exit 1; }
curl -sf "http://127.0.0.1:$gw_port/api/x" >/dev/null || { echo "edgegate not answering"; cat "$work/gw.log"; exit 1; }
curl -sf "http://127.0.0.1:$ngx_port/api/x" >/dev/null || { echo "nginx not answering"; exit 1; }

mkdir -p "$root/loadtest/results"
out="$root/loadtest/results/$scenario-cpu-$(date -u +%Y%m%d).jsonl"
: > "$out"
# Warm both up once, then alternate so drift in machine load hits both alike.
"$lt_bin" cpu-per-request --pid "$ngx_worker" --url "http://127.0.0.1:$ngx_port/api/x" --duration 2 --wrk-cpu 0 >/dev/null
"$lt_bin" cpu-per-request --pid "$gw_pid" --url "http://127.0.0.1:$gw_port/api/x" --duration 2 --wrk-cpu 0 >/dev/null
for i in $(seq "$runs"); do
  "$lt_bin" cpu-per-request --label nginx --pid "$ngx_worker" --url "http://127.0.0.1:$ngx_port/api/x" --duration "$dur" --wrk-cpu 0 | tee -a "$out"
  "$lt_bin" cpu-per-request --label edgegate --pid "$gw_pid" --url "http://127.0.0.1:$gw_port/api/x" --duration "$dur" --wrk-cpu 0 | tee -a "$out"
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for label in ("nginx", "edgegate"):
    rs = [r for r in rows if r["label"] == label]
    med[label] = {k: statistics.median(r[k] for r in rs) for k in ("rps", "user_us_per_req", "kernel_us_per_req", "total_us_per_req")}
    med[label]["errors"] = sum(r["socket_errors"] + r["non_2xx"] for r in rs)
print("\n| server (core 1, 1 worker) | req/s | user µs/req | kernel µs/req | total µs/req | vs nginx | errors |")
print("|---|---|---|---|---|---|---|")
for label, m in med.items():
    ratio = m["total_us_per_req"] / med["nginx"]["total_us_per_req"]
    print(f"| {label} | {m['rps']:.0f} | {m['user_us_per_req']:.2f} | {m['kernel_us_per_req']:.2f} | {m['total_us_per_req']:.2f} | {ratio:.2f}x | {m['errors']} |")
PY
