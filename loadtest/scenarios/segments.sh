#!/usr/bin/env bash
# Instructions between the system calls of a proxied request, counted by callgrind: how much
# user-space work stands between reading the client's request and sending it to the pod,
# and between reading the pod's response and sending it to the client. Those two stretches
# are the time a peer waits for edgegate; the longer they are, the more often the peer has
# gone to sleep and a send must wake it (docs/benchmarks.md, "why the ratio depends on the
# machine"). Like instructions.sh, a figure that does not move with machine noise.
#
# Runs the gateway under valgrind with a profile dump after every `recv` and before every
# `send`, sends N keep-alive requests through it to a local nginx upstream, and averages
# each stretch over the requests in the middle of the run (start-up and shutdown left out).
#
# Run:   [CACHE=1] loadtest/scenarios/segments.sh [path/to/edgegate] [N]
#        CACHE=1 caches the route: a hit has one read and one send.
# Needs: valgrind, nginx, python3 (apt-get install -y valgrind nginx-light python3).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
n=${2:-300}
ensure_binary "$bin"
setup_gateway_and_pod
mkdir -p "$work/cg"
EDGEGATE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/cg/out" \
  --dump-after=recv --dump-before=send "$bin" run --config "$work/gw.yaml" >"$work/vg.log" 2>&1 &
vg=$!
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$gw/api/x" >/dev/null && break; sleep 0.2; done
python3 - "$gw" "$n" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    c.request("GET", "/api/x"); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
kill -INT "$vg"; wait "$vg" 2>/dev/null || true
python3 - "$work/cg" "$bin" "${CACHE:-0}" <<'PY'
import glob, json, os, re, sys
d, binary, cache = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
dumps = []
for path in glob.glob(os.path.join(d, "out.*")):
    part = int(path.rsplit(".", 1)[1])
    text = open(path).read()
    trigger = re.search(r"^desc: Trigger: (\S+)", text, re.M).group(1)
    total = int(re.search(r"^summary: (\d+)", text, re.M).group(1))
    # A dump before a send that parsed a request head ends the client-request stretch.
    request = trigger == "--dump-before=send" and "HttpSession::read_request" in text
    dumps.append((part, trigger, total, request))
dumps.sort()
# Each stretch is named by the dump that ends it; a request's dumps follow its request read.
names = (["request read -> response sent (cache hit)", "response sent -> next request read"] if cache else
         ["request read -> sent to pod", "sent to pod -> pod's response read",
          "pod's response read -> response sent", "response sent -> next request read"])
starts = [i for i, (_, _, _, req) in enumerate(dumps) if req]
# Leave out the first and last fifth (warm-up, the probe requests, shutdown).
keep = starts[len(starts) // 5: len(starts) - len(starts) // 5]
sums = [0] * len(names)
count = 0
for i in keep:
    seq = dumps[i:i + len(names)]
    if len(seq) < len(names) or any(s[3] for s in seq[1:]):
        continue
    count += 1
    for k, s in enumerate(seq):
        sums[k] += s[2]
if not count:
    sys.exit("no complete request found among the profile dumps")
out = {"binary": binary, "requests": count, "instructions": {name: round(s / count) for name, s in zip(names, sums)}}
print(json.dumps(out))
PY
