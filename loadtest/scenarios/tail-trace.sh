#!/usr/bin/env bash
# Where the slowest requests' time goes, seen from the kernel, for edgegate and nginx doing
# the same forwarding (NGINX_FORWARD=1) at one open-loop rate, in rotating rounds. Neither
# server is changed or instrumented: bpftrace follows each server's request thread through
# the kernel's socket and scheduler tracepoints, and every request passes through four
# stretches there:
#
#   request waits   the request's bytes arrive in the client socket → the server reads them
#                   (the server was busy with others, asleep, or off its core);
#   inside          the server reads the request → it writes the first bytes of the answer
#                   (its own work both ways plus the pod's time);
#   pod             the server writes to the pod → the pod's answer arrives;
#   answer waits    the pod's answer arrives → the server reads it.
#
# Beside them, the server thread's run-queue waits (woken or preempted → running again) and
# which other threads ran on its core meanwhile, and the generator's own split of the
# client's p99: the wait for one of its 64 connections (all held by earlier requests, as
# when anything on the path stalls for ~2.5 ms) and the time from sending to the answer.
# A stretch's count over 1 ms, set against the 1 % of requests that make the client's p99,
# tells where the tail comes from. The tracing itself costs each traced event ~0.5–1 µs of
# CPU on the core it fires on: compare the servers with each other, not with untraced runs.
#
# The servers on core 0 (edgegate audit off unless AUDIT=1, one worker), the pod (one nginx
# worker), the generator (64 connections) and bpftrace on core 1.
#
# Run:   loadtest/scenarios/tail-trace.sh [path/to/edgegate] [RATE] [SECONDS] [ROUNDS]
#        defaults: target/release/edgegate, 25000, 4, 2. AUDIT=1: the gateway's audit log on;
#        NGINX_FORWARD=0: nginx forwarding the request as sent; TRACE_OUT=DIR: each round's
#        whole bpftrace output (the stretches' histograms) kept there.
# Needs: nginx, bpftrace (root), python3, the release edgegate-loadtest.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/edgegate}
rate=${2:-25000}
secs=${3:-4}
rounds=${4:-2}
command -v bpftrace >/dev/null || { echo "needs bpftrace (apt-get install bpftrace) and root" >&2; exit 1; }
ensure_binary "$bin"
ensure_generator

NGINX_FORWARD=${NGINX_FORWARD:-1} start_gateway_beside_nginx 0
wait_ready "$admin"

# The trace of thread $1 for $2 seconds. Sockets are told apart by the thread's first
# operation on them after the trace starts: a read first is a client's connection, a write
# first one to the pod (the generator opens new connections each run; the pod's were opened
# by the warm-up below or are opened by a write). What is kept for a socket is dropped when
# it closes.
cat > "$scratch/trace.bt" <<'BT'
tracepoint:sock:sk_data_ready {
  if (!@arrived[args->skaddr]) { @arrived[args->skaddr] = nsecs; }
  if (@kind[args->skaddr] == 2) {
    if (@asked[args->skaddr]) {
      $p = (nsecs - @asked[args->skaddr]) / 1000; @pod_us = hist($p); @pod_n = count();
      if ($p > 1000) { @pod_over_1ms = count(); }
      delete(@asked[args->skaddr]);
    } else { @answered[args->skaddr] = nsecs; }
  }
}
tracepoint:sock:sock_recv_length {
  if (tid == $1 && args->ret > 0) {
    if (!@kind[args->sk]) { @kind[args->sk] = 1; }
    $t = @arrived[args->sk];
    if ($t) {
      $w = (nsecs - $t) / 1000;
      if (@kind[args->sk] == 1) { @request_waits_us = hist($w); @request_n = count(); if ($w > 1000) { @request_over_1ms = count(); } }
      else { @answer_waits_us = hist($w); if ($w > 1000) { @answer_over_1ms = count(); } }
    }
    if (@kind[args->sk] == 1 && !@began[args->sk]) { @began[args->sk] = nsecs; }
  }
  if (args->ret > 0) { delete(@arrived[args->sk]); }
}
// A write to the pod is timed from the writing call's start: on loopback the pod can answer
// on its own core before the call returns (then the answer is already in `@answered`).
tracepoint:syscalls:sys_enter_write,tracepoint:syscalls:sys_enter_writev,tracepoint:syscalls:sys_enter_sendto,tracepoint:syscalls:sys_enter_sendmsg /tid == $1/ { @send_started = nsecs; }
tracepoint:sock:sock_send_length /tid == $1/ {
  if (!@kind[args->sk]) { @kind[args->sk] = 2; }
  if (@kind[args->sk] == 2) {
    $a = @answered[args->sk];
    if ($a >= @send_started) { $p = ($a - @send_started) / 1000; @pod_us = hist($p); @pod_n = count(); if ($p > 1000) { @pod_over_1ms = count(); } }
    else { @asked[args->sk] = @send_started; }
    delete(@answered[args->sk]);
  }
  if (@kind[args->sk] == 1 && @began[args->sk]) {
    $s = (nsecs - @began[args->sk]) / 1000; @inside_us = hist($s); @inside_n = count();
    if ($s > 1000) { @inside_over_1ms = count(); }
    delete(@began[args->sk]);
  }
}
// A closed socket's address is soon reused by a new one, which must not inherit its kind.
tracepoint:sock:inet_sock_set_state /args->newstate == 7/ {
  delete(@kind[args->skaddr]); delete(@began[args->skaddr]); delete(@asked[args->skaddr]);
  delete(@answered[args->skaddr]); delete(@arrived[args->skaddr]);
}
tracepoint:sched:sched_wakeup /args->pid == $1/ { @ready = nsecs; }
tracepoint:sched:sched_switch {
  if (args->prev_pid == $1 && args->prev_state == 0) { @ready = nsecs; }
  if (@ready && args->prev_pid != $1 && cpu == @core) {
    $from = @switched > @ready ? @switched : @ready;
    @ran_meanwhile_us[args->prev_comm] = sum((nsecs - $from) / 1000);
  }
  if (args->next_pid == $1) {
    @core = cpu;
    if (@ready) { $r = (nsecs - @ready) / 1000; @runqueue_waits_us = hist($r); if ($r > 1000) { @runqueue_over_1ms = count(); } }
    @ready = 0;
  }
  if (cpu == @core) { @switched = nsecs; }
}
interval:s:$2 { exit(); }
END { clear(@arrived); clear(@kind); clear(@began); clear(@asked); clear(@answered); clear(@send_started); clear(@ready); clear(@core); clear(@switched); }
BT

# busiest PID: the thread of PID that has run longest (the request thread after the warm-up).
busiest() { for t in "/proc/$1/task/"*; do echo "$(awk '{print $1}' "$t/schedstat") $(basename "$t")"; done | sort -n | tail -1 | cut -d' ' -f2; }
for port in "$ng" "$gw"; do
  taskset -c 1 "$gen_bin" load --url "http://127.0.0.1:$port/api/x" --rate 5000 --duration 2 --connections 64 >/dev/null
done
ng_worker=$(pgrep -P "$ng_pid" | head -1)
gw_worker=$(busiest "$gw_pid")

# summary FILE: the bpftrace output's counts in two lines (TRACE_OUT=DIR keeps each round's
# whole output, histograms included).
summary() {
  python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def n(name):
    m = re.search(r"^@%s: (\d+)$" % name, text, re.M)
    return int(m.group(1)) if m else 0
req = n("request_n")
print(f"    requests traced {req}, pod answers {n('pod_n')}; over 1 ms: request waits {n('request_over_1ms')}, inside {n('inside_over_1ms')},"
      f" pod {n('pod_over_1ms')}, answer waits {n('answer_over_1ms')}; run-queue waits over 1 ms {n('runqueue_over_1ms')}")
ran = sorted(((int(v), k) for k, v in re.findall(r"^@ran_meanwhile_us\[(.+)\]: (\d+)$", text, re.M)), reverse=True)
# The idle task "runs" from a wake-up on an idle core until the thread is switched in.
idle = sum(v for v, k in ran if k.startswith("swapper"))
others = [(v, k) for v, k in ran if not k.startswith("swapper")]
print("    ran on the core while the server thread waited for it: " + (", ".join(f"{k} {v / 1000:.1f} ms" for v, k in others[:5]) or "nothing")
      + f" (and {idle / 1000:.1f} ms of wake-ups from an idle core)")
PY
}

for r in $(seq "$rounds"); do
  order="nginx edgegate"; [ $((r % 2)) = 0 ] && order="edgegate nginx"
  for who in $order; do
    port=$ng; tid=$ng_worker
    [ "$who" = edgegate ] && { port=$gw; tid=$gw_worker; }
    taskset -c 1 bpftrace "$scratch/trace.bt" "$tid" "$((secs + 3))" >"$scratch/trace.$who.$r" 2>&1 &
    bt=$!
    sleep 2 # bpftrace attaches
    taskset -c 1 "$gen_bin" load --url "http://127.0.0.1:$port/api/x" --rate "$rate" --duration "$secs" \
      --connections 64 --json "$scratch/load.json" >/dev/null
    wait "$bt" || true
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); l, q, s = r["latency_ms"], r["queued_ms"], r["service_ms"]
print("round %s, %s: %d requests, p50 %s ms, p99 %s ms; p99 waiting for a connection %s ms, once sent %s ms" % (sys.argv[2], sys.argv[3], r["ok"], l["p50"], l["p99"], q["p99"], s["p99"]))' \
      "$scratch/load.json" "$r" "$who"
    summary "$scratch/trace.$who.$r"
    if [ -n "${TRACE_OUT:-}" ]; then mkdir -p "$TRACE_OUT"; cp "$scratch/trace.$who.$r" "$TRACE_OUT/"; fi
  done
done
