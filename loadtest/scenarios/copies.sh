#!/usr/bin/env bash
# Memory copies and allocations per proxied request, counted on the gateway's request
# thread: libc's `memcpy`/`memmove` (calls and bytes, by size) and the allocator's
# `mi_malloc`, `mi_zalloc` and `mi_malloc_aligned` (calls and bytes), with uprobes while
# one keep-alive client sends N requests through it to a local nginx upstream, divided
# by N. Like the instruction and system-call counts, figures that do not move with
# machine noise; they show work the instruction count spreads over many functions — a
# struct moved by value is a `memcpy` call of its size, a buffer made per request an
# allocation. Allocations of 1,025-16,384 bytes that the allocator wrapper's per-thread
# cache hands back (third_party/README.md, patch 72) never reach mimalloc and are not
# counted; those it does not have go to `mi_malloc` and are.
#
# Run:   [CACHE=1] [AUDIT=1] [SITES=1] loadtest/scenarios/copies.sh [path/to/edgegate] [N]
#        SITES=1 also lists where the copies of 128 bytes or more are made (the caller's
#        source lines, inlined frames first, by addr2line): that needs a binary with line
#        tables, e.g. `cargo build --profile profiling -p edgegate`. (An allocation's
#        caller is the allocator's own wrapper; for its site a stack walk is needed, e.g.
#        `perf probe -x BIN mi_malloc` and `perf record --call-graph dwarf`.)
# Needs: bpftrace, nginx, python3 (scripts/deps.sh --loadtest); root (uprobes).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
n=${2:-2000}
ensure_binary "$bin"
bin=$(readlink -f "$bin")
libc=$(ldd "$bin" | awk '/libc\.so/ {print $3}')
# The entry point glibc's resolver picks for memcpy on this CPU (memmove shares it), as an
# address in the library: its name is in libc's debug symbols only.
memcpy=$(python3 - "$libc" <<'PY'
import ctypes, os, sys
real = os.path.realpath(sys.argv[1])
addr = ctypes.cast(ctypes.CDLL(real).memcpy, ctypes.c_void_p).value
for line in open("/proc/self/maps"):
    f = line.split()
    if len(f) >= 6 and os.path.realpath(f[5]) == real and f[2] == "00000000":
        print(hex(addr - int(f[0].split("-")[0], 16)))
        break
PY
)
[ -n "$memcpy" ] || { echo "memcpy not found in $libc" >&2; exit 1; }
audit=""
[ "${AUDIT:-0}" = 1 ] && audit="audit: {db: $work/state/audit.db}"
setup_gateway_and_pod "$audit"
run_gateway warn
keepalive_client 200   # warm: the upstream connection pooled, a cached route filled
# Only the request thread (`proxy`): the audit writers' copies are theirs, counted by
# the instruction count's AUDIT=1 run. The return address is read from the stack at entry.
sites=""
[ "${SITES:-0}" = 1 ] && sites='if (arg2 >= 128) { @copy_site[*(uint64 *)reg("sp"), arg2] = count(); }'
ulimit -l unlimited 2>/dev/null || true
bpftrace -q -e "
uprobe:$libc:$memcpy /pid == $gwpid && comm == \"proxy\"/ { @copies = count(); @copy_bytes = sum(arg2); @copy_size = hist(arg2); $sites }
uprobe:$bin:mi_malloc,uprobe:$bin:mi_zalloc,uprobe:$bin:mi_malloc_aligned /pid == $gwpid && comm == \"proxy\"/ { @allocs = count(); @alloc_bytes = sum(arg0); }
" >"$work/bt.txt" 2>"$work/bt.err" &
bt=$!
# bpftrace (-q) says nothing once its probes are placed: give it the time to place them.
sleep 3
keepalive_client "$n"
sleep 0.2
kill -INT "$bt"; wait "$bt" 2>/dev/null || true
grep -q '@copies' "$work/bt.txt" || { echo "bpftrace counted nothing:" >&2; cat "$work/bt.err" >&2; exit 1; }
base=$(awk -v b="$bin" '$6 == b && $3 == "00000000" {split($1, r, "-"); print r[1]; exit}' "/proc/$gwpid/maps")
python3 - "$work/bt.txt" "$n" "$bin" "${base:-0}" "${SITES:-0}" <<'PY'
import json, re, subprocess, sys
text = open(sys.argv[1]).read()
n = int(sys.argv[2]); binary = sys.argv[3]; base = int(sys.argv[4], 16); want_sites = sys.argv[5] == "1"
def scalar(name):
    m = re.search(r"^@%s: (\d+)$" % name, text, re.M)
    return int(m.group(1)) if m else 0
def unit(s):
    return int(s[:-1]) * {"K": 1024, "M": 1 << 20}[s[-1]] if s[-1] in "KM" else int(s)
# bpftrace's histogram rows: "[0]", "[4, 8)", "[1K, 2K)", each with its count.
counts = {}
for lo, count in re.findall(r"^\[(\d+[KM]?)(?:\]|, *\d+[KM]?\))\s+(\d+) \|", text, re.M):
    key = "under 64" if unit(lo) < 64 else ("64-255" if unit(lo) < 256 else "256 and over")
    counts[key] = counts.get(key, 0) + int(count)
sizes = {key: round(count / n, 2) for key, count in counts.items()}
out = {"binary": binary, "requests": n,
       "copies_per_request": round(scalar("copies") / n, 2), "copied_bytes_per_request": round(scalar("copy_bytes") / n),
       "copies_by_size": sizes,
       "allocations_per_request": round(scalar("allocs") / n, 2), "allocated_bytes_per_request": round(scalar("alloc_bytes") / n)}
print(json.dumps(out))
if want_sites:
    rows = {}
    for addr, size, count in re.findall(r"^@copy_site\[(\d+), (\d+)\]: (\d+)$", text, re.M):
        rows.setdefault(int(addr), []).append((int(size), int(count)))
    top = sorted(rows.items(), key=lambda kv: -sum(s * c for s, c in kv[1]))[:25]
    addrs = [hex(a - base - 1) for a, _ in top]
    lines = subprocess.run(["addr2line", "-a", "-i", "-f", "-C", "-e", binary, *addrs], capture_output=True, text=True).stdout
    blocks = re.split(r"^0x[0-9a-f]+\n", lines, flags=re.M)[1:]
    name = lambda f: re.sub(r"::\{\{closure\}\}", "", f)[:70]
    print("copy sites (per request: calls, bytes; caller, innermost first):")
    for (addr, hits), block in zip(top, blocks + [""] * len(top)):
        calls = sum(c for _, c in hits) / n; total = sum(s * c for s, c in hits) / n
        frames = block.strip().split("\n")
        where = " < ".join(f"{name(frames[i])} ({frames[i + 1].rsplit('/', 1)[-1]})" for i in range(0, min(len(frames), 6), 2) if i + 1 < len(frames))
        print(f"  {calls:5.2f} {total:7.0f} B  {where}")
PY
