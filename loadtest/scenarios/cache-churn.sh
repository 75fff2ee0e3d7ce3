#!/usr/bin/env bash
# Random-key churn on a cached route: does the cache budget bound the gateway's memory?
# Sends GETs for random paths (every one a new cache entry) for DURATION seconds and reports
# the gateway's RSS before and after beside the cache's own accounting.
#
# Run:   loadtest/scenarios/cache-churn.sh [path/to/edgegate] [DURATION] [BUDGET]
#        defaults: target/release/edgegate, 30 s, 64MiB. Target: RSS ≤ budget + 40 MiB.
# Needs: wrk, nginx, python3 (apt-get install -y wrk nginx-light python3).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
duration=${2:-30}
budget=${3:-64MiB}
ensure_binary "$bin"
up=$(free_port); gw=$(free_port); admin=$(free_port)
write_gateway_config "$gw" "$admin" "$up" ", cache: {ttl: 60s}" "cache: {memory: $budget}"
cat > "$work/random.lua" <<'LUA'
math.randomseed(os.time())
request = function() return wrk.format("GET", "/api/permits/" .. math.random(1, 2000000000) .. "?lang=zh") end
LUA
start_upstream "$up" '{"service":"permits","status":"open","office":"north","hours":"09:00-17:00"}' 0
EDGEGATE_LOG=warn taskset -c 1 "$bin" run --config "$work/gw.yaml" --state-dir "$work/state" >"$work/gw.log" 2>&1 & gwpid=$!; pids+=($gwpid)
wait_ready "$admin"
rss() { awk '/^VmRSS/ {print int($2/1024)}' "/proc/$gwpid/status"; }
before=$(rss)
taskset -c 0 wrk -t1 -c32 -d"${duration}s" -s "$work/random.lua" "http://127.0.0.1:$gw" > "$work/wrk.txt"
after=$(rss)
metric() { curl -s "http://127.0.0.1:$admin/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
echo "{\"budget\":\"$budget\",\"duration_s\":$duration,\"requests\":$requests,\"rss_before_mib\":$before,\"rss_after_mib\":$after,\"cache_entries\":$(metric edgegate_cache_entries),\"cache_bytes\":$(metric edgegate_cache_bytes),\"evictions\":$(metric edgegate_cache_evictions_total)}"
