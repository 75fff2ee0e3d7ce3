#!/usr/bin/env bash
# What a citizen over a route's rate limit costs the node, per request: one keep-alive
# client with a valid token sends N requests with an ~12 KiB query of 2,500 distinct names
# to a route whose policy reads the request (so its input would carry every name) and whose
# limit is 1 a second, burst 3. Prints the statuses and the gateway's CPU time per request
# after the burst (utime+stime over N; clock ticks, so a few µs of resolution at N=3000).
# Before the limit was checked ahead of the policy, each of those 429s paid for the input
# and the evaluation.
#
# Run:   [CALLGRIND=1] loadtest/scenarios/limited-cost.sh [path/to/edgegate] [N]
#        CALLGRIND=1 counts instructions instead (valgrind's callgrind, user space, all
#        threads): the gateway runs twice, for N/10 and N/5 requests after the burst, and the
#        difference of the totals over the difference of the counts is printed — start-up and
#        shutdown cancel out, and the figure does not move with the machine's noise.
# Needs: python3 (and valgrind for CALLGRIND=1); builds edgegate-loadtest for its `issuer`
#        and `pod` commands.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=$(realpath "${1:-$root/target/release/edgegate}")
n=${2:-3000}
ensure_binary "$bin"
cargo build --release -q -p edgegate-loadtest --manifest-path "$root/Cargo.toml"
token=$("$gen_bin" issuer "$work/issuer")
cat > "$work/issuer/policy/reads_query.rego" <<'EOF'
package government.reads
import rego.v1
default allow := false
allow if { input.request.query.form == "permit"; data.government.digital.allow }
EOF
"$gen_bin" pod --seconds 600 > "$scratch/pod.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do grep -q "listening" "$scratch/pod.log" 2>/dev/null && break; sleep 0.1; done
pod=$(grep -oE "127.0.0.1:[0-9]+" "$scratch/pod.log")
gw=$(free_port); admin=$(free_port)
cat > "$work/gw.yaml" <<EOF
listeners: [{name: public, address: "127.0.0.1:$gw", behind_tls: true}]
admin: {address: "127.0.0.1:$admin"}
runtime: {threads: 1}
audit: {db: $work/state/audit.db}
policies: {dir: $work/issuer/policy}
identity: {jwt: {issuer: "https://id.example.gov.cn", audience: zwfw, keys: $work/issuer/jwks.json}}
upstreams:
  a: {endpoints: [{address: "$pod"}]}
routes: [{name: forms, upstream: a, policy: data.government.reads.allow, rate_limit: {rate: 1, burst: 3, key: user}}]
EOF
drive() {
python3 - "$gw" "$1" "$2" "$token" <<'PY'
import http.client, os, sys
port, pid, n, token = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
hostile = "".join(f"{chr(97 + i % 26)}{i // 26}=&" for i in range(2500))
path = f"/apply?form=permit&{hostile}"
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
c = http.client.HTTPConnection("127.0.0.1", port)
seen, c0 = {}, 0.0
for i in range(n + 3):
    if i == 3:
        c0 = cpu()
    c.request("GET", path, headers={"Authorization": f"Bearer {token}", "Host": "zwfw.gov.test"})
    r = c.getresponse(); r.read()
    seen[r.status] = seen.get(r.status, 0) + 1
print(f"statuses {seen}; gateway CPU {1e6 * (cpu() - c0) / n:.1f} us per request after the burst "
      f"({len(path)}-byte target)")
PY
}
if [ "${CALLGRIND:-0}" = 1 ]; then
  total() {
    rm -rf "$work/state"
    taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$scratch/cg.out" "$bin" run --config "$work/gw.yaml" \
      --state-dir "$work/state" > "$scratch/gw.log" 2>&1 & local vg=$!
    for _ in $(seq 300); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
    # The statuses go to stderr: under valgrind the run is slower, so the limit's refill (1 a
    # second) lets a few more through, each a whole request; they are shown to be weighed.
    drive "$vg" "$1" | sed 's/; gateway CPU.*//' >&2
    kill -INT "$vg"; wait "$vg" 2>/dev/null || true
    awk '/^totals:/ {print $2}' "$scratch/cg.out"
  }
  n1=$((n / 10)); n2=$((n / 5))
  a=$(total "$n1"); b=$(total "$n2")
  echo "instructions per request over the limit: $(( (b - a) / (n2 - n1) )) (callgrind, $n1 and $n2 requests after the burst)"
else
  taskset -c 1 "$bin" run --config "$work/gw.yaml" --state-dir "$work/state" > "$scratch/gw.log" 2>&1 & gwpid=$!; pids+=($gwpid)
  wait_ready "$admin"
  drive "$gwpid" "$n"
fi
