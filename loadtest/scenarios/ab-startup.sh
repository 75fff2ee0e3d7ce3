#!/usr/bin/env bash
# exec → first proxied 200 of two (or more) gateway builds, started alternately (A, B, A,
# B, … 15 times each) so that a shared machine's drift falls on all alike; each start with
# a fresh state directory (so the last-known-good copy is written, as on a first start),
# pinned to core 0, one worker thread, the nginx upstream on core 1; the client polls every
# 0.2 ms. Prints each build's median and every start, and the medians of the CPU all the
# process's threads had used and of its page faults when the first 200 came.
#
# Run:   loadtest/scenarios/ab-startup.sh BIN_A BIN_B
# Needs: nginx, python3.
set -e
. "$(dirname "$0")/lib.sh"
up=$(free_port)
start_upstream "$up" '{"ok":1}' 1
sleep 0.3
python3 - "$up" "$work" "$@" <<'PY'
import socket,sys,time,subprocess,os,statistics,shutil
up=int(sys.argv[1]); work=sys.argv[2]; bins=sys.argv[3:]
def free_pair():
    # Both sockets held until both ports are known: two ports closed one after the other
    # can be the same one.
    a=socket.socket(); a.bind(("127.0.0.1",0)); b=socket.socket(); b.bind(("127.0.0.1",0))
    ports=(a.getsockname()[1], b.getsockname()[1]); a.close(); b.close(); return ports
def cpu_ms(pid):
    ns=0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try: ns+=int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
        except OSError: pass  # a thread that ended meanwhile
    return ns/1e6
res={b:[] for b in bins}
for i in range(15):
    for b in bins:
        gw, adm = free_pair()
        d=f"{work}/r{i}-{os.path.basename(b)}"; os.makedirs(d)
        open(f"{d}/gw.yaml","w").write(f'''listeners: [{{name: public, address: "127.0.0.1:{gw}"}}]
admin: {{address: "127.0.0.1:{adm}"}}
runtime: {{threads: 1, work_stealing: false}}
logging: {{access_log: false}}
upstreams: {{permits: {{endpoints: [{{address: "127.0.0.1:{up}"}}]}}}}
routes: [{{name: permits, match: {{path_prefix: /api/}}, upstream: permits, public: true}}]
''')
        t0=time.perf_counter()
        p=subprocess.Popen(["taskset","-c","0",b,"run","--config",f"{d}/gw.yaml","--state-dir",f"{d}/state"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL,env=dict(os.environ,EDGEGATE_LOG="warn"))
        while True:
            if p.poll() is not None:
                sys.exit(f"{b} exited during start-up (status {p.returncode}); its config: {d}/gw.yaml")
            try:
                s=socket.create_connection(("127.0.0.1",gw)); s.sendall(b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                if s.recv(12)==b"HTTP/1.1 200": break
            except Exception: pass
            time.sleep(0.0002)
        t=(time.perf_counter()-t0)*1e3
        # CPU of every thread so far (schedstat: ns on a core) and the page faults, taskset's
        # own (it execs the gateway in place) included alike for every build.
        cpu=cpu_ms(p.pid)
        faults=int(open(f"/proc/{p.pid}/stat").read().rsplit(")",1)[1].split()[7])
        res[b].append((t,cpu,faults))
        p.terminate(); p.wait()
for b,v in res.items():
    med=lambda k: statistics.median(x[k] for x in v)
    print(b, "median %.2f ms (CPU %.2f ms, %d page faults)"%(med(0),med(1),med(2)), " ".join("%.1f"%x[0] for x in v))
PY
