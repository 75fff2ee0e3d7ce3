#!/usr/bin/env bash
# TLS on one core, edgegate beside nginx with the same ECDSA P-256 certificate:
# full handshakes/s and resumed handshakes/s (openssl s_time), and HTTP/2 requests/s
# through the proxy to a local upstream (h2load). Proxy on core 1, clients and
# upstream on core 0, one worker each, release build; loopback only, bounded in time.
#
# Run:   loadtest/scenarios/tls.sh [seconds]
# Needs: nginx, openssl, h2load, python3 (apt-get install -y nginx-light openssl nghttp2-client python3).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
secs=${1:-5}
for tool in nginx openssl h2load taskset python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
cargo build --release -q -p edgegate --manifest-path "$root/Cargo.toml"
up=$(free_port); gw=$(free_port); admin=$(free_port); ngx=$(free_port)
tls_certificate
start_upstream "$up" ok 0
start_nginx_tls "$ngx" "$up" 1 http2
write_tls_gateway_config "$gw" "$admin" "$up"
EDGEGATE_LOG=warn taskset -c 1 "$root/target/release/edgegate" run --config "$work/gw.yaml" --state-dir "$work/state" >"$scratch/gw.log" 2>&1 & pids+=($!)
gw_pid=$!
wait_ready "$admin"

# utime+stime (clock ticks) of every thread of a process.
ticks() { cat /proc/"$1"/task/*/stat | sed 's/.*) //' | awk '{t += $12 + $13} END {print t}'; }

# Handshakes/s as the client saw them, and server CPU µs per handshake. A single
# sequential s_time client is mostly measuring itself on these machines; the server's
# CPU per handshake is the figure to compare.
handshakes() { # port pid -new|-reuse
  local before after out n secs_real
  before=$(ticks "$2")
  out=$(taskset -c 0 openssl s_time -connect "127.0.0.1:$1" $3 -time "$secs" 2>/dev/null | grep 'connections in .* real seconds')
  after=$(ticks "$2")
  n=$(echo "$out" | awk '{print $1}'); secs_real=$(echo "$out" | awk '{print $4}')
  awk -v n="$n" -v s="$secs_real" -v d=$((after - before)) 'BEGIN {printf "%.0f/s, %.0f µs CPU", n/s, d*10000/n}'
}
h2() {
  taskset -c 0 h2load -n 20000 -c 16 -m 10 "https://127.0.0.1:$1/" 2>/dev/null \
    | awk '/^finished in/ {gsub(",",""); print $4; exit}'
}
echo "| server (core 1, 1 worker) | full handshakes (client-seen rate, server CPU each) | resumed handshakes (TLS 1.2 session id) | HTTP/2 req/s (h2load -c16 -m10) |"
echo "|---|---|---|---|"
echo "| nginx | $(handshakes "$ngx" "$ngx_worker" -new) | $(handshakes "$ngx" "$ngx_worker" "-reuse -tls1_2") | $(h2 "$ngx") |"
echo "| edgegate | $(handshakes "$gw" "$gw_pid" -new) | $(handshakes "$gw" "$gw_pid" "-reuse -tls1_2") | $(h2 "$gw") |"
