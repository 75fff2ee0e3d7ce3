#!/usr/bin/env bash
# What a node's citizens cost it when they come back on new HTTPS connections: many
# clients, each with a session store of its own, taking turns, each connection a TLS
# handshake and one proxied request (`Connection: close`). edgegate beside nginx with the
# same ECDSA P-256 certificate and the same upstream (nginx `return 200`), each on core 1
# with one worker; the clients (`edgegate-loadtest handshakes`) and the upstream on core 0.
# For TLS 1.3 and 1.2: every handshake full (clients never offer a session), then clients
# offering the session they got on their previous connection. Reports how many resumed and
# the server's CPU per connection (every thread's utime+stime from /proc).
#
# Run:   loadtest/scenarios/resumption.sh [path/to/edgegate] [CLIENTS] [CONNECTIONS]
#        (defaults: target/release/edgegate, 2000 clients, 20000 connections per row)
#        KEY=rsa uses an RSA 2048 certificate instead (the signature of a full handshake
#        costs far more than with ECDSA P-256).
#        FLEET=1 gives edgegate the fleet's ticket secrets (tls.session_ticket_keys) in
#        place of the keys of its own process.
#        HANDSHAKE_THREADS=N does edgegate's handshakes on N threads of their own
#        (runtime.tls_handshake_threads), on the same core.
#        nginx: ssl_session_cache shared:tls:10m and its default session tickets on.
# Needs: nginx, openssl, python3 (apt-get install -y nginx-light openssl python3).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
clients=${2:-2000}
connections=${3:-20000}
for tool in nginx openssl taskset python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
ensure_binary "$bin"
cargo build --release -q -p edgegate-loadtest --manifest-path "$root/Cargo.toml"
up=$(free_port); gw=$(free_port); admin=$(free_port); ngx=$(free_port)
tls_certificate "${KEY:-ec}"
start_upstream "$up" ok 0
start_nginx_tls "$ngx" "$up" 1
fleet=""
if [ "${FLEET:-0}" = 1 ]; then
  openssl rand -base64 32 > "$work/tickets.keys"
  fleet=", session_ticket_keys: tickets.keys"
fi
write_tls_gateway_config "$gw" "$admin" "$up" "$fleet"
if [ -n "${HANDSHAKE_THREADS:-}" ]; then
  sed -i "s|^runtime: {threads: 1, work_stealing: false}|runtime: {threads: 1, work_stealing: false, tls_handshake_threads: $HANDSHAKE_THREADS}|" "$work/gw.yaml"
fi
EDGEGATE_LOG=warn taskset -c 1 "$bin" run --config "$work/gw.yaml" --state-dir "$work/state" >"$scratch/gw.log" 2>&1 & pids+=($!)
gw_pid=$!
wait_ready "$admin"

row() { # name port pid flags...
  local name=$1 port=$2 pid=$3; shift 3
  taskset -c 0 "$gen_bin" handshakes --addr "127.0.0.1:$port" --sni bench.gov.test \
    --clients "$clients" --connections "$connections" --server-pid "$pid" "$@" \
    | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("| %s | %s | %s | %d of %d | %d | %.1f | %.1f | %.1f |" % (sys.argv[1], d["tls"], "yes" if d["offered_resumption"] else "no", d["resumed"], d["resumed"]+d["full"], d["failed"]+d["not_200"], d["server_user_us_per_connection"], d["server_kernel_us_per_connection"], d["server_cpu_us_per_connection"]))' "$name"
}
echo "$clients clients taking turns, $connections connections per row, $([ "${KEY:-ec}" = rsa ] && echo "RSA 2048" || echo "ECDSA P-256") certificate ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo
echo "| server | TLS | clients offer their session | resumed | failed or not 200 | user µs / conn | kernel µs / conn | CPU µs / conn |"
echo "|---|---|---|---|---|---|---|---|"
for v in "" --tls12; do
  for r in --no-resume ""; do
    # shellcheck disable=SC2086
    row nginx "$ngx" "$ngx_worker" $v $r
    # shellcheck disable=SC2086
    row edgegate "$gw" "$gw_pid" $v $r
  done
done
