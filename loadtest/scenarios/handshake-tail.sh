#!/usr/bin/env bash
# Do other citizens' TLS handshakes hold up a citizen's proxied request? One gateway worker
# (core 1) serves an open-loop stream of keep-alive requests on a plain listener while full
# TLS handshakes (RSA 2048 unless KEY=ec: the dearest kind) arrive on its HTTPS listener at
# HS_RATE a second; the requests' latency percentiles with the handshakes and without.
# With HANDSHAKE_THREADS=N the gateway does its handshakes on N threads of their own
# (runtime.tls_handshake_threads) instead of on the worker. HS_CONCURRENCY (default 4) is
# how many handshakes the clients keep in flight at once: a flood from many addresses keeps
# hundreds (raise HS_RATE beyond what the core can sign too). WORK_STEALING=1 runs the
# worker on tokio's work-stealing runtime (`runtime.work_stealing: true`) instead.
# WORKERS=2 runs two workers (the shipped DaemonSet's runtime; with WORK_STEALING=1, as it
# was until 2026-12-07) on both cores, the generator and the upstream unpinned beside them.
#
# Run:   [KEY=ec] [HS_RATE=300] [HANDSHAKE_THREADS=1] loadtest/scenarios/handshake-tail.sh [BIN] [RATE] [SECONDS]
#        (defaults: target/release/edgegate, 5000 requests a second, 8 s)
# Needs: nginx, openssl, python3.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
rate=${2:-5000}
secs=${3:-8}
hs_rate=${HS_RATE:-300}
ensure_binary "$bin"
cargo build --release -q -p edgegate-loadtest --manifest-path "$root/Cargo.toml"
up=$(free_port); plain=$(free_port); gw=$(free_port); admin=$(free_port)
tls_certificate "${KEY:-rsa}"
worker_cores
start_upstream "$up" ok "$gen_cores"
threads=""
[ -n "${HANDSHAKE_THREADS:-}" ] && threads=", tls_handshake_threads: $HANDSHAKE_THREADS"
stealing=false
[ "${WORK_STEALING:-0}" = 1 ] && stealing=true
write_tls_gateway_config "$gw" "$admin" "$up"
sed -i -e "s|^listeners: \[|listeners: [{name: plain, address: \"127.0.0.1:$plain\"}, |" \
  -e "s|^runtime: {threads: 1, work_stealing: false}|runtime: {threads: ${WORKERS:-1}, work_stealing: ${stealing}$threads}|" "$work/gw.yaml"
EDGEGATE_LOG=warn taskset -c "$gw_cores" "$bin" run --config "$work/gw.yaml" --state-dir "$work/state" >"$scratch/gw.log" 2>&1 & pids+=($!)
gw_pid=$!
wait_ready "$admin"
load() { taskset -c "$gen_cores" "$gen_bin" load --url "http://127.0.0.1:$plain/x" --rate "$rate" --duration "$secs" --connections 16 --json "$1" >/dev/null; }
echo "requests at $rate/s for $secs s on $([ "${WORKERS:-1}" -gt 1 ] && echo "${WORKERS} workers (work stealing: $stealing), all unpinned" || echo "core 1's one worker"); handshakes $([ "${KEY:-rsa}" = rsa ] && echo "RSA 2048" || echo "ECDSA P-256") at $hs_rate/s, ${HS_CONCURRENCY:-4} at once$([ -n "${HANDSHAKE_THREADS:-}" ] && echo ", on $HANDSHAKE_THREADS thread(s) of their own")"
load "$scratch/quiet.json"
echo "without handshakes: $(latency_summary "$scratch/quiet.json")"
taskset -c "$gen_cores" "$gen_bin" handshakes --addr "127.0.0.1:$gw" --sni bench.gov.test --no-resume --clients 50 \
  --connections $((hs_rate * (secs + 2))) --concurrency "${HS_CONCURRENCY:-4}" --rate "$hs_rate" >"$scratch/hs.json" & hs=$!
sleep 1
for t in /proc/"$gw_pid"/task/*; do
  case "$(cat "$t/comm")" in "downstream TLS"*) echo "handshake thread ${t##*/}: nice $(sed "s/.*) //" "$t/stat" | cut -d" " -f17)" ;; esac
done
load "$scratch/busy.json"
wait "$hs"
echo "with handshakes:    $(latency_summary "$scratch/busy.json")"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); h=d.get("handshake_ms",{}); print("handshakes: %d of %d served, %.0f a second; handshake p50 %.2f  p99 %.2f  p99.9 %.2f  max %.2f ms; failed %d" % (d["full"]+d["resumed"], d["connections"], d["connections_per_second"], h.get("p50",0), h.get("p99",0), h.get("p99_9",0), h.get("max",0), d["failed"]))' "$scratch/hs.json"
