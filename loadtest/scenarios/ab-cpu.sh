#!/usr/bin/env bash
# CPU per request of two gateway builds, measured interleaved (A, B, B, A, A, B, …) so that a
# shared machine's drift in speed falls on both alike. Each build runs on core 0 with one
# worker thread in front of one nginx upstream on core 1; wrk (one thread, 16 keep-alive
# connections unless CONNS says otherwise, also on core 1) drives it for D seconds per round. CPU is the gateway's
# user + system time from /proc/PID/stat over the round, divided by the requests wrk
# completed. nginx itself proxying the same upstream is measured in the same rounds, as
# the yardstick.
#
# Run:   [CACHE=1] loadtest/scenarios/ab-cpu.sh BIN_A BIN_B [ROUNDS] [D]
#        CACHE=1 caches the route (every request after the first is a hit) and measures
#        nginx answering `return 200` itself instead of proxying.
#        ACCESS_LOG=1 turns the access log on (a JSON line per request to a file), and
#        nginx's too (its default: the combined format, a write per request).
#        AUDIT=1 turns each gateway's audit log on (a record per request, committed to
#        SQLite by the writer threads, whose CPU counts), as the `proxy` scenario runs it.
#        CONNS=N sets wrk's keep-alive connections (16 unless set; the `proxy` scenario's
#        closed loop keeps 64 busy).
#        POLICY=1 makes the route a citizen's, as `instructions.sh` does: every request
#        carries one ES256 bearer token, verified (once, then remembered) and the shipped
#        Rego policy evaluated, on a listener marked behind_tls, with the audit log on.
#        nginx is sent the same header.
# Needs: nginx, wrk (scripts/deps.sh --loadtest installs them).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
a=$1; b=$2; rounds=${3:-4}; dur=${4:-5}
up=$(free_port); start_upstream "$up" '{"service":"permits","status":"open"}' 1
route_cache=$(cached_route)
tick=$(getconf CLK_TCK)
auth=()
if [ "${POLICY:-0}" = 1 ]; then
  cargo build --release -q -p edgegate-loadtest --manifest-path "$root/Cargo.toml"
  auth=(-H "Authorization: Bearer $("$root/target/release/edgegate-loadtest" issuer "$work/issuer")")
fi

start_gateway() { # BIN NAME -> sets gw_port, gw_pid
  local gw admin; gw=$(free_port); admin=$(free_port)
  local audit=""
  # An empty log each time: the gateway verifies its whole log at start, in the background.
  rm -rf "$work/state-$2"
  # In the state directory, as deployed: not beside the config, whose directory is watched.
  [ "${AUDIT:-0}" = 1 ] && audit="audit: {db: $work/state-$2/audit.db}"
  [ "${POLICY:-0}" = 1 ] && audit="audit: {db: $work/state-$2/audit.db}
policies: {dir: $work/issuer/policy}
identity: {jwt: {issuer: \"https://id.example.gov.cn\", audience: zwfw, keys: $work/issuer/jwks.json}}"
  write_gateway_config "$gw" "$admin" "$up" "$route_cache" "$audit"
  cp "$work/gw.yaml" "$work/$2.yaml"
  if [ "${POLICY:-0}" = 1 ]; then
    sed -i -e 's|address: "127.0.0.1:'"$gw"'"}|address: "127.0.0.1:'"$gw"'", behind_tls: true}|' \
      -e 's|public: true|policy: data.government.digital.allow|' "$work/$2.yaml"
  fi
  EDGEGATE_LOG=$(gateway_log_level) taskset -c 0 "$1" run --config "$work/$2.yaml" --state-dir "$work/state-$2" >"$work/$2.log" 2>&1 &
  pids+=($!); gw_pid=$!; gw_port=$gw
  wait_ready "$admin"
}
# Both builds are started afresh for every round, the one measured first also started
# first: with one binary in both places, the process started second in a round cost ~1 %
# more per cache hit in 6 of 8 rounds, and two long-running processes drifted apart by up
# to 0.6-1.2 µs in either direction from round to round.
start_both() { # FIRST (a or b)
  if [ "$1" = a ]; then
    start_gateway "$a" A; a_port=$gw_port; a_pid=$gw_pid
    start_gateway "$b" B; b_port=$gw_port; b_pid=$gw_pid
  else
    start_gateway "$b" B; b_port=$gw_port; b_pid=$gw_pid
    start_gateway "$a" A; a_port=$gw_port; a_pid=$gw_pid
  fi
}
stop_both() {
  kill "$a_pid" "$b_pid"; wait "$a_pid" "$b_pid" 2>/dev/null || true
  local keep=() p
  for p in "${pids[@]}"; do [ "$p" = "$a_pid" ] || [ "$p" = "$b_pid" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}

# nginx as the yardstick: proxying to the same upstream (or answering itself, CACHE=1).
ng=$(free_port)
start_nginx_peer "$ng" "$up" 0
sleep 0.5

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Children of nginx's master (the worker) hold the CPU time.
ng_worker=$(pgrep -P "$ng_pid" | head -1)

round() { # PID PORT -> prints µs per request
  local before after n
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" "http://127.0.0.1:$2/api/x")
  [ "$code" = 200 ] || echo "ab-cpu: 127.0.0.1:$2 answered $code, not 200" >&2
  before=$(cpu_ticks "$1")
  n=$(taskset -c 1 wrk -t1 -c"${CONNS:-16}" -d"${dur}s" "${auth[@]}" "http://127.0.0.1:$2/api/x" | awk '/requests in/ {print $1}')
  after=$(cpu_ticks "$1")
  python3 -c "print(round(($after - $before) / $tick * 1e6 / $n, 2))"
}
echo "round A_us B_us nginx_us"
all=()
for r in $(seq "$rounds"); do
  # The order alternates: whichever build is measured first in a round was measurably
  # cheaper (by 0.3-0.5 µs per cache hit with the same two builds swapped), so each goes
  # first in half the rounds.
  if [ $((r % 2)) = 1 ]; then
    start_both a
    a_us=$(round "$a_pid" "$a_port"); b_us=$(round "$b_pid" "$b_port")
  else
    start_both b
    b_us=$(round "$b_pid" "$b_port"); a_us=$(round "$a_pid" "$a_port")
  fi
  stop_both
  ng_us=$(round "$ng_worker" "$ng")
  echo "$r $a_us $b_us $ng_us"
  all+=("$a_us $b_us $ng_us")
done
printf '%s\n' "${all[@]}" | python3 -c '
import statistics, sys
cols = list(zip(*(map(float, l.split()) for l in sys.stdin)))
print("median " + " ".join(str(round(statistics.median(c), 2)) for c in cols))'
