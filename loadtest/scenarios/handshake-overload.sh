#!/usr/bin/env bash
# More new HTTPS connections than one gateway worker can sign: CLIENTS clients (each
# waiting for its connection before the next, paced to RATE full handshakes a second in
# all) against one worker on core 1, with `limits.head_timeout` at HEAD_TIMEOUT (default
# 1s, so that a few seconds show what the default 10 s would over longer ones). Reports how
# many were served and how fast, how many failed (cut at head_timeout, or by the kernel),
# the handshake times of those served, the gateway's CPU per connection served, and its RSS
# before and at its highest (sampled every 0.2 s): connections waiting in its line are
# held in its memory, where the kernel's accept queue held them before they were accepted.
#
# Run:   [KEY=ec] [HEAD_TIMEOUT=1s] loadtest/scenarios/handshake-overload.sh [BIN] [RATE] [CLIENTS] [CONNECTIONS]
#        (defaults: target/release/edgegate, 3000 a second, 2000 clients, 20000 connections;
#        RSA 2048 unless KEY=ec)
# Needs: nginx, openssl, python3.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
rate=${2:-3000}
clients=${3:-2000}
connections=${4:-20000}
ensure_binary "$bin"
cargo build --release -q -p edgegate-loadtest --manifest-path "$root/Cargo.toml"
up=$(free_port); gw=$(free_port); admin=$(free_port)
tls_certificate "${KEY:-rsa}"
start_upstream "$up" ok 0
write_tls_gateway_config "$gw" "$admin" "$up"
sed -i "s|^limits: {|limits: {head_timeout: ${HEAD_TIMEOUT:-1s}, max_connections_per_client: 100000, |" "$work/gw.yaml"
EDGEGATE_LOG=error taskset -c 1 "$bin" run --config "$work/gw.yaml" --state-dir "$work/state" >"$scratch/gw.log" 2>&1 & pids+=($!)
gw_pid=$!
wait_ready "$admin"
echo "$clients clients offering $rate full $([ "${KEY:-rsa}" = rsa ] && echo "RSA 2048" || echo "ECDSA P-256") handshakes a second, head_timeout ${HEAD_TIMEOUT:-1s}, one worker"
rss() { awk '/^VmRSS/ {print $2}' "/proc/$gw_pid/status"; }
echo "gateway RSS before: $(rss) KiB"
( peak=0; while kill -0 "$gw_pid" 2>/dev/null; do r=$(rss); [ "${r:-0}" -gt "$peak" ] && peak=$r && echo "$peak" > "$scratch/peak"; sleep 0.2; done ) & pids+=($!)
taskset -c 0 "$gen_bin" handshakes --addr "127.0.0.1:$gw" --sni bench.gov.test --no-resume --clients 50 \
  --connections "$connections" --concurrency "$clients" --rate "$rate" --server-pid "$gw_pid" \
  | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); h=d.get("handshake_ms",{}); print("served %d, failed %d, in %.1f s: %.0f served a second; handshake p50 %.0f  p99 %.0f ms; gateway CPU per connection served %.0f µs" % (d["full"], d["failed"], d["seconds"], d["connections_per_second"], h.get("p50",0), h.get("p99",0), d["server_cpu_us_per_connection"]))'
echo "gateway RSS at its highest during the run: $(cat "$scratch/peak") KiB"
