#!/usr/bin/env bash
# Do other clients' token checks hold up a citizen's proxied request? One gateway worker
# (core 1) serves an open-loop stream of keep-alive requests on a public route while
# requests with tokens that never verify (an ES256 token with one signature character
# changed: each is checked anew, ~100 µs of the worker's CPU) arrive on a citizens' route at
# FLOOD_RATE a second, FLOOD_CONNECTIONS (default 256) of them in flight at once. The
# budget of checks per client address (`identity.jwt.new_tokens_per_client`) is raised out of
# the way: it stands for a flood from many addresses, each within its budget. The public
# requests' latency percentiles with the flood and without, and the flood's own.
# A forged token that failed its check is remembered and refused again without one (a
# replay); VARY=1 sends a different forged token each time (six signature characters from
# the request's number), each checked. WORKERS=2 runs the shipped DaemonSet's runtime instead (two workers, each with its own connections; WORK_STEALING=1: with work stealing) on
# both cores, the generators and the upstream unpinned beside them.
# CITIZENS=R also sends citizens' first requests at R a second beside the flood, each with
# a valid token never sent before (each checked once), from another client address than the
# flood's (both named by X-Forwarded-For from a trusted proxy), and prints their latency:
# how long a new login waits behind the flood. The flood's address sends one forgery first,
# so that it has been seen forging (its checks then go last for a minute); with
# FORGERS=many each forgery comes from an address of its own instead (10.0.0.0/8, one
# forgery each: none is ever seen forging before it sends, the case putting forgers last
# does not help).
#
# Run:   [FLOOD_RATE=20000] [FLOOD_CONNECTIONS=256] [VARY=1] [WORKERS=2 [WORK_STEALING=1]] [CITIZENS=200 [FORGERS=many]] loadtest/scenarios/token-tail.sh [BIN] [RATE] [SECONDS]
#        (defaults: target/release/edgegate, 5000 requests a second, 8 s)
# Needs: nginx, python3.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
rate=${2:-5000}
secs=${3:-8}
flood_rate=${FLOOD_RATE:-20000}
ensure_binary "$bin"
cargo build --release -q -p edgegate-loadtest --manifest-path "$root/Cargo.toml"
citizens=${CITIZENS:-0}
"$gen_bin" issuer "$work/issuer" --tokens $((citizens * (secs + 1) + 1)) > "$work/tokens"
token=$(head -1 "$work/tokens")
tail -n +2 "$work/tokens" > "$work/citizens"
# Change one character in the middle of the signature: the token still parses and names
# its key, so only the signature check refuses it.
sig=${token##*.}
i=$((${#sig} / 2))
c=${sig:$i:1}
[ "$c" = A ] && n=B || n=A
forged="${token%.*}.${sig:0:$i}$n${sig:$((i + 1))}"
flood_token=$forged
[ "${VARY:-0}" = 1 ] && flood_token="${token%.*}.${sig:0:$i}{n}${sig:$((i + 6))}"
up=$(free_port); gw=$(free_port); admin=$(free_port)
write_gateway_config "$gw" "$admin" "$up" "" "audit: {db: $work/state/audit.db}
policies: {dir: $work/issuer/policy}
identity: {jwt: {issuer: \"https://id.example.gov.cn\", audience: zwfw, keys: $work/issuer/jwks.json,
  new_tokens_per_client: {rate: 1000000000, burst: 1000000000}}}
limits: {$UNBOUNDED_NEW_CONNECTIONS}
trusted_proxies: [127.0.0.1/32]"
sed -i -e 's|address: "127.0.0.1:'"$gw"'"}|address: "127.0.0.1:'"$gw"'", behind_tls: true}|' \
  -e 's|public: true}]$|public: true}, {name: services, match: {path_prefix: /services/}, upstream: permits, policy: data.government.digital.allow}]|' \
  "$work/gw.yaml"
worker_cores
if [ "${WORKERS:-1}" -gt 1 ]; then
  stealing=false
  [ "${WORK_STEALING:-0}" = 1 ] && stealing=true
  sed -i "s|^runtime: {threads: 1, work_stealing: false}|runtime: {threads: $WORKERS, work_stealing: $stealing}|" "$work/gw.yaml"
fi
start_upstream "$up" '{"service":"permits","status":"open"}' "$gen_cores"
EDGEGATE_LOG=warn taskset -c "$gw_cores" "$bin" run --config "$work/gw.yaml" --state-dir "$work/state" >"$scratch/gw.log" 2>&1 & pids+=($!)
wait_ready "$admin" || { cat "$work/gw.yaml" "$scratch/gw.log"; exit 1; }
FORGER=203.0.113.66
code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $forged" -H "x-forwarded-for: $FORGER" "http://127.0.0.1:$gw/services/x")
[ "$code" = 401 ] || { echo "the forged token got $code, not 401" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" "http://127.0.0.1:$gw/services/x")
[ "$code" = 200 ] || { echo "the citizen's token got $code, not 200" >&2; exit 1; }
checks() { curl -s "http://127.0.0.1:$admin/metrics" | awk '/^edgegate_jwt_signature_checks_total/ {print $2}'; }
load() { taskset -c "$gen_cores" "$gen_bin" load --url "http://127.0.0.1:$gw/api/x" --rate "$rate" --duration "$secs" --connections 16 --json "$1" >/dev/null; }
echo "requests at $rate/s for $secs s on $([ "${WORKERS:-1}" -gt 1 ] && echo "$WORKERS workers (work stealing: ${stealing:-false}), all unpinned" || echo "core 1's one worker"); $([ "${VARY:-0}" = 1 ] && echo "a different forged ES256 token each time" || echo "one forged ES256 token, replayed,") at $flood_rate/s, ${FLOOD_CONNECTIONS:-256} at once"
load "$scratch/quiet.json"
echo "without the flood: $(latency_summary "$scratch/quiet.json")"
before=$(checks)
began=$(date +%s.%N)
taskset -c "$gen_cores" "$gen_bin" load --url "http://127.0.0.1:$gw/services/x" --rate "$flood_rate" --duration $((secs + 2)) \
  --connections "${FLOOD_CONNECTIONS:-256}" --header "authorization: Bearer $flood_token" \
  --header "x-forwarded-for: $([ "${FORGERS:-one}" = many ] && echo '{ip}' || echo "$FORGER")" \
  --expect 401 --json "$scratch/flood.json" >/dev/null & flood=$!
sleep 1
if [ "$citizens" -gt 0 ]; then
  taskset -c "$gen_cores" "$gen_bin" load --url "http://127.0.0.1:$gw/services/x" --rate "$citizens" --duration "$secs" \
    --connections 64 --header "authorization: Bearer {line}" --lines "$work/citizens" --header "x-forwarded-for: 198.51.100.40" \
    --json "$scratch/citizens.json" >/dev/null & citizen_load=$!
fi
load "$scratch/busy.json"
[ "$citizens" -gt 0 ] && wait "$citizen_load"
wait "$flood"
ended=$(date +%s.%N)
after=$(checks)
echo "with the flood:    $(latency_summary "$scratch/busy.json")"
[ "$citizens" -gt 0 ] && echo "new citizens:      $(latency_summary "$scratch/citizens.json")"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); l=d["latency_ms"]; print("flood: %d refused 401 (all answered after %.1f s), errors %s; p50 %.2f  p99 %.2f  p99.9 %.2f ms; %.0f signature checks a second" % (d["ok"], float(sys.argv[4]), d["errors"], l["p50"], l["p99"], l["p99_9"], (float(sys.argv[3]) - float(sys.argv[2])) / float(sys.argv[4])))' "$scratch/flood.json" "$before" "$after" "$(python3 -c "print($ended - $began)")"
