#!/usr/bin/env bash
# Random-key churn on a cached route: does the cache budget bound the gateway's memory?
# Sends GETs for random paths (every one a new cache entry) for DURATION seconds and reports
# the gateway's RSS before and after beside the cache's own accounting.
#
# Run:   loadtest/scenarios/cache-churn.sh [path/to/edgegate] [DURATION] [BUDGET]
#        defaults: target/release/edgegate, 30 s, 64MiB. Target: RSS ≤ budget + 40 MiB.
# Needs: wrk, nginx, python3 (apt-get install -y wrk nginx-light python3).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/release/edgegate}
duration=${2:-30}
budget=${3:-64MiB}
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
  server { listen 127.0.0.1:$up; location / { default_type application/json; return 200 '{"service":"permits","status":"open","office":"north","hours":"09:00-17:00"}'; } } }
CONF
cat > "$work/gw.yaml" <<YAML
listeners: [{name: public, address: "127.0.0.1:$gw"}]
admin: {address: "127.0.0.1:$admin"}
runtime: {threads: 1, work_stealing: false}
logging: {access_log: false}
cache: {memory: $budget}
upstreams: {permits: {endpoints: [{address: "127.0.0.1:$up"}]}}
routes: [{name: permits, match: {path_prefix: /api/}, upstream: permits, public: true, cache: {ttl: 60s}}]
YAML
cat > "$work/random.lua" <<'LUA'
math.randomseed(os.time())
request = function() return wrk.format("GET", "/api/permits/" .. math.random(1, 2000000000) .. "?lang=zh") end
LUA
taskset -c 0 nginx -p "$work" -c "$work/up.conf" & pids+=($!)
EDGEGATE_LOG=warn taskset -c 1 "$bin" run --config "$work/gw.yaml" --state-dir "$work/state" >"$work/gw.log" 2>&1 & gwpid=$!; pids+=($gwpid)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
rss() { awk '/^VmRSS/ {print int($2/1024)}' "/proc/$gwpid/status"; }
before=$(rss)
taskset -c 0 wrk -t1 -c32 -d"${duration}s" -s "$work/random.lua" "http://127.0.0.1:$gw" > "$work/wrk.txt"
after=$(rss)
metric() { curl -s "http://127.0.0.1:$admin/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
echo "{\"budget\":\"$budget\",\"duration_s\":$duration,\"requests\":$requests,\"rss_before_mib\":$before,\"rss_after_mib\":$after,\"cache_entries\":$(metric edgegate_cache_entries),\"cache_bytes\":$(metric edgegate_cache_bytes),\"evictions\":$(metric edgegate_cache_evictions_total)}"
