#!/usr/bin/env bash
# What the shared Redis level costs a node's L2 hit, three ways: plain (`redis://`, no key),
# sealed (`key_file`: each entry encrypted, AES-256-GCM, and named by a MAC by the node
# storing it, opened by the node reading it) and sealed over TLS (`rediss://` with `ca`). For each, gateway A
# answers N distinct paths (misses, stored in Redis), then a fresh gateway B asks for the
# same N: every answer is an L2 hit. Prints B's mean Redis lookup time (its own
# `edgegate_cache_l2_lookup_seconds`), wall time and CPU time per request (utime+stime, in
# clock ticks: a few µs of resolution at N=4000), and B's L2 errors (expected 0).
#
# Run:   loadtest/scenarios/redis-level.sh [path/to/edgegate] [N] [ROUNDS]
# Needs: redis-server built with TLS (Debian's is), openssl, nginx, python3.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=$(realpath "${1:-$root/target/release/edgegate}")
n=${2:-4000}
rounds=${3:-2}
ensure_binary "$bin"
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 1 \
  -subj "/CN=edgegate test CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout redis.key -out redis.csr -subj "/CN=redis" 2>/dev/null
printf "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n" > ext
openssl x509 -req -in redis.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out redis.crt -days 1 -extfile ext 2>/dev/null
head -c 32 /dev/urandom | base64 > fleet.key
plain=$(free_port); tls=$(free_port); up=$(free_port)
redis-server --port "$plain" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & pids+=($!)
redis-server --port 0 --tls-port "$tls" --bind 127.0.0.1 --tls-cert-file redis.crt --tls-key-file redis.key \
  --tls-auth-clients no --save "" --appendonly no >/dev/null 2>&1 & pids+=($!)
start_upstream "$up" '{"service":"catalogue","items":[1,2,3],"note":"an answer of a few hundred bytes, as the pods give"}' 0
sleep 0.5
for variant in plain sealed tls; do
  case $variant in
    plain) redis="url: \"redis://127.0.0.1:$plain/0\"" ;;
    sealed) redis="url: \"redis://127.0.0.1:$plain/1\", key_file: $work/fleet.key" ;;
    tls) redis="url: \"rediss://127.0.0.1:$tls/2\", key_file: $work/fleet.key, ca: $work/ca.pem" ;;
  esac
  for side in a b; do
    cat > "$variant-$side.yaml" <<EOF
listeners: [{name: public, address: "127.0.0.1:$(free_port)"}]
admin: {address: "127.0.0.1:$(free_port)"}
runtime: {threads: 1}
cache: {memory: 16MiB, redis: {$redis, timeout: 1s}}
upstreams:
  a: {endpoints: [{address: "127.0.0.1:$up"}]}
routes: [{name: c, upstream: a, public: true, cache: {ttl: 600s}}]
EOF
  done
done
python3 - "$bin" "$n" "$rounds" <<'PY'
import http.client, os, re, subprocess, sys, time
bin, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def ports(cfg):
    return [int(p) for p in re.findall(r"127.0.0.1:(\d+)", open(f"{cfg}.yaml").read())[:2]]
def start(cfg):
    p = subprocess.Popen([bin, "run", "--config", f"{cfg}.yaml", "--no-watch"], stdout=open(f"{cfg}.log", "w"),
                         stderr=subprocess.STDOUT, preexec_fn=lambda: os.sched_setaffinity(0, {1}))
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", ports(cfg)[1]); c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return p
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"{cfg} never ready: see {cfg}.log")
def ask(cfg, count, tag):
    c = http.client.HTTPConnection("127.0.0.1", ports(cfg)[0])
    seen = {}
    for i in range(count):
        c.request("GET", f"/{tag}/{i}", headers={"Host": "zwfw.gov.test"})
        r = c.getresponse(); r.read()
        seen[r.getheader("x-cache")] = seen.get(r.getheader("x-cache"), 0) + 1
    return seen
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def metrics(cfg):
    c = http.client.HTTPConnection("127.0.0.1", ports(cfg)[1]); c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    return {k: float(v) for k, v in re.findall(r"^(edgegate_cache_l2_\w+) (\S+)$", text, re.M)}
for r in range(rounds):
    for variant in ("plain", "sealed", "tls"):
        a = start(f"{variant}-a")
        tag = f"r{r}-{time.time_ns()}"
        ask(f"{variant}-a", n, tag)
        time.sleep(1.5)  # the L2 writes are asynchronous
        b = start(f"{variant}-b")
        ask(f"{variant}-b", 1, "warm")
        c0, t0 = cpu(b.pid), time.time()
        seen = ask(f"{variant}-b", n, tag)
        t1, c1 = time.time(), cpu(b.pid)
        m = metrics(f"{variant}-b")
        lookup = 1e6 * m["edgegate_cache_l2_lookup_seconds_sum"] / max(m["edgegate_cache_l2_lookup_seconds_count"], 1)
        print(f"{variant:6} round {r + 1}: {seen}, lookup {lookup:.1f} us, wall {1e6 * (t1 - t0) / n:.1f} us/request, "
              f"cpu {1e6 * (c1 - c0) / n:.1f} us/request, l2 errors {m['edgegate_cache_l2_errors_total']:.0f}")
        for p in (a, b):
            p.terminate(); p.wait()
PY
