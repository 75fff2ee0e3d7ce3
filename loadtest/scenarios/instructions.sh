#!/usr/bin/env bash
# User-space instructions per proxied request of edgegate, counted by callgrind: a figure
# that does not move with machine noise, for comparing two builds of the hot path.
# Runs the gateway under valgrind twice (N1 and N2 keep-alive requests to a local nginx
# upstream) and divides the difference in total instructions by N2-N1, so start-up and
# shutdown cancel out.
#
# Run:   [CACHE=1] [AUDIT=1] loadtest/scenarios/instructions.sh [path/to/edgegate] [N1] [N2]
#        CACHE=1 caches the route (ttl 1h), so every request after the first is a cache hit.
#        AUDIT=1 turns the audit log on (the writer thread's SQLite work is counted too).
#        POLICY=1 makes the route a citizen's: a bearer token (ES256) verified and the shipped
#        Rego policy evaluated per request, on a listener marked behind_tls, with the audit
#        log on (the policy allows only while it accepts records).
#        ANONYMOUS=1 (with POLICY=1): the route's identity optional and no token sent: the
#        shipped policy evaluated for an anonymous request, which it denies (403 expected).
#        ACCESS_LOG=1 turns the access log on (a JSON line per request, written by the log
#        writer thread to a file); with YARDSTICK=1, nginx's (combined format, to a file).
#        CACHE_SIM=1 also simulates the caches (callgrind --cache-sim, with a fixed geometry
#        so that the figure is the same on any machine: 32 KiB 8-way L1i, 48 KiB 12-way L1d,
#        1 MiB 16-way last level) and adds instruction-cache misses per request (`i1_misses`)
#        data-cache misses (`d1_misses`, reads and writes) and last-level misses
#        (`ll_misses`, instructions and data): what code layout
#        changes (a profile-guided or post-link-optimised build) and an instruction count
#        does not show.
#        Also prints the clock reads per request (`clock_reads_per_request`: calls to
#        clock_gettime and gettimeofday), which the instruction count undervalues on a
#        virtual machine (see clock_reads below).
#        CG_OUT=FILE keeps the callgrind profile of the N2 run (for callgrind_annotate).
#        CONNS=N sends the requests from N keep-alive connections at once (a thread each;
#        1 unless set): a request then finds its connection's state, and the pod
#        connections the others hold, gone cold in the caches, as under the `proxy`
#        scenario's 64 connections. With CACHE_SIM=1 its misses say what that costs.
#        NEW_CONNECTION=1 sends each request on a connection of its own (`Connection: close`):
#        the accept, the per-client accounting and the close are counted with the request.
#        YARDSTICK=1 counts nginx instead, as the yardstick: one worker, access log off, a
#        keep-alive proxy to the same pod (with CACHE=1: `return 200` with the same body).
#        With NGINX_FORWARD=1 that nginx also adds edgegate's forwarding headers and a
#        request id (NGINX_FORWARD=fixed: one fixed id), as lib.sh describes.
# Needs: valgrind, nginx, python3 (apt-get install -y valgrind nginx-light python3); POLICY=1
#        builds edgegate-loadtest for its `issuer` command.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
n1=${2:-500}
n2=${3:-2500}
ensure_binary "$bin"
audit=""
[ "${AUDIT:-0}" = 1 ] && audit="audit: {db: $work/state/audit.db}"
export AUTHORIZATION="" EXPECT=200
[ "${ANONYMOUS:-0}" = 1 ] && EXPECT=403
if [ "${POLICY:-0}" = 1 ]; then
  loadtest_bin="$root/target/release/edgegate-loadtest"
  cargo build --release -q -p edgegate-loadtest --manifest-path "$root/Cargo.toml"
  token=$("$loadtest_bin" issuer "$work/issuer")
  AUTHORIZATION="Bearer $token"
  [ "${ANONYMOUS:-0}" = 1 ] && AUTHORIZATION=""
  audit="audit: {db: $work/state/audit.db}
policies: {dir: $work/issuer/policy}
identity: {jwt: {issuer: \"https://id.example.gov.cn\", audience: zwfw, keys: $work/issuer/jwks.json}}"
fi
setup_gateway_and_pod "$audit"
if [ "${POLICY:-0}" = 1 ]; then
  sed -i -e 's|address: "127.0.0.1:'"$gw"'"}|address: "127.0.0.1:'"$gw"'", behind_tls: true}|' \
    -e 's|public: true|policy: data.government.digital.allow|' "$work/gw.yaml"
  [ "${ANONYMOUS:-0}" = 1 ] && sed -i -e 's|policy: data.government.digital.allow|&, identity: optional|' "$work/gw.yaml"
fi

# The process under callgrind: the gateway, or (YARDSTICK=1) nginx in one process (no master),
# configured as start_nginx_peer configures the yardstick.
cachesim=()
[ "${CACHE_SIM:-0}" = 1 ] && cachesim=(--cache-sim=yes --I1=32768,8,64 --D1=49152,12,64 --LL=1048576,16,64)
under_callgrind() {
  if [ "${YARDSTICK:-0}" = 1 ]; then
    write_nginx_peer_config "$gw" "$up"
    exec valgrind --tool=callgrind "${cachesim[@]}" --callgrind-out-file="$work/cg.out" nginx -g "master_process off;" -p "$work/ng" -c "$work/ng/ng.conf"
  else
    EDGEGATE_LOG=$(gateway_log_level) exec valgrind --tool=callgrind "${cachesim[@]}" --callgrind-out-file="$work/cg.out" "$bin" run --config "$work/gw.yaml"
  fi
}

total_ir() {
  # Each run starts on an empty audit log: the gateway verifies the whole log at start, and
  # the N2 run would otherwise walk the N1 run's records (~7.6k instructions per request).
  rm -f "$work"/cg.out "$work"/state/audit.db*
  under_callgrind >"$work/vg.log" 2>&1 &
  local vg=$!
  # Ready once a request is answered with the status expected of every request.
  for _ in $(seq 200); do python3 -c "import os, urllib.request as u, urllib.error as e
a = os.environ['AUTHORIZATION']
try: status = u.urlopen(u.Request('http://127.0.0.1:$gw/api/x', headers={'Authorization': a} if a else {})).status
except e.HTTPError as x: status = x.code
raise SystemExit(status != int(os.environ['EXPECT']))" 2>/dev/null && break; sleep 0.2; done
  python3 - "$gw" "$1" <<'PY'
import http.client, os, sys
a = os.environ["AUTHORIZATION"]
headers = {"Authorization": a} if a else {}
fresh = os.environ.get("NEW_CONNECTION") == "1"
if fresh:
    headers["Connection"] = "close"
def client(n):
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
    for _ in range(n):
        if fresh:
            c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
        c.request("GET", "/api/x", headers=headers); r = c.getresponse(); r.read()
        assert r.status == int(os.environ["EXPECT"]), r.status
        if fresh:
            c.close()
conns, total = int(os.environ.get("CONNS", "1")), int(sys.argv[2])
if conns == 1:
    client(total)
else:
    import threading
    threads = [threading.Thread(target=client, args=(total // conns + (i < total % conns),)) for i in range(conns)]
    for t in threads: t.start()
    for t in threads: t.join()
PY
  kill -INT "$vg"; wait "$vg" 2>/dev/null || true
  # The total, and what SHA-256 cost in software: valgrind does not run the SHA extensions,
  # so under callgrind the audit chain's hash takes the portable code (~20k instructions
  # per record) where a CPU with them (`sha_ni` in /proc/cpuinfo) spends about a tenth.
  # The portable code is `sha2::sha256::soft::*`, or inlined into `compress256` (the
  # name it has in the sha2 0.10.9 edgegate builds with).
  # The totals' columns are named by the profile's `events:` line (Ir, and with --cache-sim
  # I1mr for instruction-cache misses, ILmr/DLmr/DLmw for last-level ones).
  echo "$(awk '/^events:/ {for (i = 2; i <= NF; i++) col[$i] = i}
    /^totals:/ {print $(col["Ir"]), (col["I1mr"] ? $(col["I1mr"]) : 0),
      (col["ILmr"] ? $(col["ILmr"]) + $(col["DLmr"]) + $(col["DLmw"]) : 0),
      (col["D1mr"] ? $(col["D1mr"]) + $(col["D1mw"]) : 0)}' "$work/cg.out") $(callgrind_annotate --threshold=100 "$work/cg.out" 2>/dev/null |
    awk '/sha2::sha256::(soft|compress256)/ {gsub(",", "", $1); s += $1} END {print s + 0}') $(clock_reads "$work/cg.out")"
}
# Calls to the C library's clock_gettime and gettimeofday (every Instant::now and
# SystemTime::now, the coarse clock's reads; nginx's time updates): callgrind counts one as
# ~10 instructions, but on a virtual machine a precise read costs tens of nanoseconds (the
# TSC read and the hypervisor's clock page), so the instruction count understates them. The
# profile names each function once as "(id) name" and by "(id)" after.
clock_reads() {
  python3 - "$1" <<'PY'
import re, sys
names, callee, calls = {}, "", 0
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?", line)
    if m:
        if m.group(3):
            names[m.group(2)] = m.group(3).strip()
        if m.group(1) == "cfn":
            callee = names.get(m.group(2), "")
    elif line.startswith("calls=") and re.match(r"(clock_gettime|gettimeofday)(@|$)", callee):
        calls += int(line[6:].split()[0])
print(calls)
PY
}
read -r a ai al ad sa ca < <(total_ir "$n1"); read -r b bi bl bd sb cb < <(total_ir "$n2")
[ -n "${CG_OUT:-}" ] && cp "$work/cg.out" "$CG_OUT"
[ "${YARDSTICK:-0}" = 1 ] && bin="nginx ($(nginx -v 2>&1 | sed "s/.*\///"))"
echo "{\"binary\":\"$bin\",\"requests\":[$n1,$n2],\"ir_per_request\":$(( (b - a) / (n2 - n1) )),\"soft_sha256_per_request\":$(( (sb - sa) / (n2 - n1) )),\"clock_reads_per_request\":$(python3 -c "print(round(($cb - $ca) / ($n2 - $n1), 2))")$(
  [ "${CACHE_SIM:-0}" = 1 ] && echo ",\"i1_misses_per_request\":$(( (bi - ai) / (n2 - n1) )),\"d1_misses_per_request\":$(( (bd - ad) / (n2 - n1) )),\"ll_misses_per_request\":$(( (bl - al) / (n2 - n1) ))")}"
