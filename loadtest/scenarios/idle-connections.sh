#!/usr/bin/env bash
# Memory per idle keep-alive client connection: opens N connections to the gateway, sends
# one request on each and keeps them all open and idle, then reads the gateway's RSS.
#
# Run:   [TLS=1] loadtest/scenarios/idle-connections.sh [path/to/edgegate] [N]
#        defaults: target/release/edgegate, 10000. Target: ≤ 8 KiB per idle connection.
#        TLS=1: the connections are HTTPS (TLS 1.3, an ECDSA P-256 certificate), as a
#        citizen-facing listener's are.
# Needs: nginx, python3 (apt-get install -y nginx-light python3).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
n=${2:-10000}
ulimit -n $((n + 1024))  # each process holds one end of every connection
ensure_binary "$bin"
up=$(free_port); gw=$(free_port); admin=$(free_port)
write_gateway_config "$gw" "$admin" "$up" "" "limits: {max_connections_per_client: $((n + 100)), $UNBOUNDED_NEW_CONNECTIONS}"  # all from 127.0.0.1
start_upstream "$up" '{"status":"open"}'
scheme=http
if [ "${TLS:-0}" = 1 ]; then
  tls_certificate ec
  sed -i "s|address: \"127.0.0.1:$gw\"}|address: \"127.0.0.1:$gw\", tls: {certificates: [{cert: cert.crt, key: cert.key}]}}|" "$work/gw.yaml"
  scheme=https
fi
run_gateway warn
curl -sfk --resolve "bench.gov.test:$gw:127.0.0.1" "$scheme://bench.gov.test:$gw/api/warm" >/dev/null
rss() { awk '/^VmRSS/ {print $2}' "/proc/$gwpid/status"; }
before=$(rss)
python3 - "$gw" "$n" "$gwpid" "$before" "${TLS:-0}" <<'PY'
import asyncio, sys, json, ssl
port, n, pid, before = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
tls = None
if sys.argv[5] == "1":
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
async def one(conns):
    if tls:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls, server_hostname="bench.gov.test")
    else:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /api/x HTTP/1.1\r\nHost: h.test\r\n\r\n")
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    await r.readexactly(length)
    conns.append((r, w))
async def main():
    conns = []
    for i in range(0, n, 200):
        await asyncio.gather(*(one(conns) for _ in range(min(200, n - i))))
    await asyncio.sleep(2)
    with open(f"/proc/{pid}/status") as f:
        after = int([l for l in f if l.startswith("VmRSS")][0].split()[1])
    print(json.dumps({"connections": len(conns), "rss_before_kib": before, "rss_after_kib": after,
                      "kib_per_connection": round((after - before) / len(conns), 2)}))
    for _, w in conns:
        w.close()
asyncio.run(main())
PY
