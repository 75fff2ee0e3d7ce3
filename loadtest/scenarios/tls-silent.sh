#!/usr/bin/env bash
# Connections to the HTTPS listener that never send a ClientHello: N TCP connections from
# 127.0.0.1 opened at once and kept silent; the gateway's RSS and open file descriptors
# before, 2 s after and 12 s after (past the default `limits.head_timeout`, 10 s).
#
# Run:   loadtest/scenarios/tls-silent.sh [path/to/edgegate] [N]
#        defaults: target/release/edgegate, 5000.
# Needs: openssl, python3 (apt-get install -y openssl python3).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
n=${2:-5000}
ulimit -n $((n + 4096))
ensure_binary "$bin"
gw=$(free_port); admin=$(free_port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=a.gov.test -addext subjectAltName=DNS:a.gov.test \
  -keyout "$work/a.key" -out "$work/a.crt" 2>/dev/null
cat > "$work/gw.yaml" <<YAML
listeners: [{name: public, address: "127.0.0.1:$gw", tls: {certificates: [{cert: $work/a.crt, key: $work/a.key}]}}]
admin: {address: "127.0.0.1:$admin"}
runtime: {threads: 1}
logging: {access_log: false}
limits: {$UNBOUNDED_NEW_CONNECTIONS}
upstreams: {svc: {endpoints: [{address: "127.0.0.1:9"}]}}
routes: [{name: r, upstream: svc, public: true}]
YAML
run_gateway error
python3 - "$gw" "$n" "$gwpid" <<'PY'
import json, socket, sys, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def now():
    import os
    with open(f"/proc/{pid}/status") as f:
        rss = int([l for l in f if l.startswith("VmRSS")][0].split()[1])
    return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}
before = now()
held = []
for _ in range(n):
    s = socket.socket()
    s.connect(("127.0.0.1", port))
    held.append(s)  # never a byte
time.sleep(2)
at_2s = now()
time.sleep(10)
print(json.dumps({"silent_connections": n, "before": before, "at_2s": at_2s, "at_12s": now()}))
PY
