#!/usr/bin/env bash
# Slowloris: N connections each send a request line and then one more header line every
# 5 s, never finishing the head (as `slowhttptest -H`). After 20 s, how many does the
# gateway still hold, and what do they cost it (fds, RSS)? Meanwhile a normal client's
# requests are timed.
#
# Run:   loadtest/scenarios/slowloris.sh [path/to/edgegate] [N] [HEAD_TIMEOUT]
#        defaults: target/release/edgegate, 4000, 10s (the default limits.head_timeout).
# Needs: nginx, python3 (apt-get install -y nginx-light python3).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
n=${2:-4000}
head_timeout=${3:-10s}
ulimit -n $((n + 1024))
ensure_binary "$bin"
up=$(free_port); gw=$(free_port); admin=$(free_port)
write_gateway_config "$gw" "$admin" "$up" "" "limits: {head_timeout: $head_timeout, max_connections_per_client: $((n + 1000)), $UNBOUNDED_NEW_CONNECTIONS}"
start_upstream "$up" '{"status":"open"}'
run_gateway warn
python3 - "$gw" "$n" "$gwpid" <<'PY'
import asyncio, sys, json, os, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def rss():
    with open(f"/proc/{pid}/status") as f:
        return int([l for l in f if l.startswith("VmRSS")][0].split()[1])
def fds():
    return len(os.listdir(f"/proc/{pid}/fd"))
open_now = 0
answered = {}
async def slow(i):
    global open_now
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    open_now += 1
    w.write(f"GET /api/slow/{i} HTTP/1.1\r\nHost: h.test\r\n".encode())
    try:
        for k in range(100):
            await w.drain()
            try:
                data = await asyncio.wait_for(r.read(64), timeout=5)
                key = data[:12].decode(errors="replace") or "closed"
                answered[key] = answered.get(key, 0) + 1
                break
            except asyncio.TimeoutError:
                w.write(f"X-Slow-{k}: a\r\n".encode())
    except (ConnectionError, OSError):
        answered["reset"] = answered.get("reset", 0) + 1
    finally:
        open_now -= 1
        w.close()
async def normal(lat):
    while True:
        t = time.perf_counter()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /api/ok HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n")
        await w.drain()
        await r.read()
        w.close()
        lat.append((time.perf_counter() - t) * 1000)
        await asyncio.sleep(0.1)
async def main():
    before_rss, before_fds = rss(), fds()
    tasks = []
    for i in range(0, n, 250):
        tasks += [asyncio.create_task(slow(j)) for j in range(i, min(n, i + 250))]
        await asyncio.sleep(0.05)
    lat = []
    probe = asyncio.create_task(normal(lat))
    await asyncio.sleep(3)
    peak = {"open": open_now, "rss_kib": rss(), "fds": fds()}
    await asyncio.sleep(17)
    after = {"open": open_now, "rss_kib": rss(), "fds": fds()}
    probe.cancel()
    lat.sort()
    print(json.dumps({"slow_connections": n, "before": {"rss_kib": before_rss, "fds": before_fds},
                      "at_3s": peak, "at_20s": after, "answers": answered,
                      "normal_requests": len(lat),
                      "normal_p50_ms": round(lat[len(lat)//2], 2) if lat else None,
                      "normal_max_ms": round(lat[-1], 2) if lat else None}))
    for t in tasks:
        t.cancel()
asyncio.run(main())
PY
