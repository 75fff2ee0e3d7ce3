#!/usr/bin/env python3
"""Time from a config change on disk to the new route serving, through the real gateway.

Run:   loadtest/scenarios/reload-latency.py [--runs 30] [--routes 1000]
Needs: a release build (cargo build --release -p edgegate), nginx (the upstream).

Three ways of changing the config, as operators do:
  file       write a new file and rename it over the old one (deploy tools, editors)
  configmap  kubelet's update: new timestamped dir, `..data` symlink swapped atomically
  admin      write the file, then POST /-/reload (no watching involved)
For each, the clock starts just before the change and stops at the first 200 from the
new route (polled every 1 ms on loopback). Watch-triggered reloads include the 100 ms
debounce. Prints a JSON summary; loopback only, bounded by --runs.
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "edgegate")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def config(port, admin, up, routes, marker):
    lines = [
        f'listeners: [{{name: public, address: "127.0.0.1:{port}"}}]',
        f'admin: {{address: "127.0.0.1:{admin}"}}',
        "logging: {access_log: false}",
        f'upstreams: {{svc: {{endpoints: [{{address: "127.0.0.1:{up}"}}]}}}}',
        "routes:",
        f"  - {{name: marker, match: {{path: /{marker}}}, upstream: svc, public: true}}",
    ]
    lines += [f"  - {{name: r{i}, match: {{host: h{i % 100}.gov.cn, path_prefix: /api/s{i}/}}, upstream: svc, public: true}}" for i in range(routes)]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--routes", type=int, default=1000)
    args = ap.parse_args()
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "edgegate"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp()
    procs = []
    try:
        up, port, admin = free_port(), free_port(), free_port()
        with open(f"{work}/up.conf", "w") as f:
            f.write(f"""worker_processes 1; daemon off; error_log {work}/up.err warn; pid {work}/up.pid;
events {{ worker_connections 256; }}
http {{ access_log off; client_body_temp_path {work}/b; proxy_temp_path {work}/p; fastcgi_temp_path {work}/f; uwsgi_temp_path {work}/u; scgi_temp_path {work}/s;
  server {{ listen 127.0.0.1:{up}; location / {{ return 200 'ok'; }} }} }}
""")
        procs.append(subprocess.Popen(["nginx", "-p", work, "-c", f"{work}/up.conf"]))
        results = {}
        for mode in ("file", "configmap", "admin"):
            cfg_dir = f"{work}/{mode}"
            os.makedirs(cfg_dir)
            path = f"{cfg_dir}/edgegate.yaml"

            def write(marker, n):
                text = config(port, admin, up, args.routes, marker)
                if mode == "configmap":
                    ts = f"{cfg_dir}/..{n:04d}"
                    os.makedirs(ts)
                    with open(f"{ts}/edgegate.yaml", "w") as f:
                        f.write(text)
                    os.symlink(os.path.basename(ts), f"{cfg_dir}/..data_tmp")
                    os.rename(f"{cfg_dir}/..data_tmp", f"{cfg_dir}/..data")
                    if not os.path.islink(path):
                        os.symlink("..data/edgegate.yaml", path)
                else:
                    with open(f"{path}.tmp", "w") as f:
                        f.write(text)
                    os.rename(f"{path}.tmp", path)

            write("m0", 0)
            cmd = [BIN, "run", "--config", path, "--state-dir", f"{work}/state-{mode}"]
            if mode == "admin":
                cmd.append("--no-watch")
            gw = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "EDGEGATE_LOG": "warn"})
            procs.append(gw)
            deadline = time.time() + 20
            while status(f"http://127.0.0.1:{port}/m0") != 200:
                if time.time() > deadline:
                    sys.exit(f"{mode}: gateway never served")
                time.sleep(0.02)
            times = []
            for n in range(1, args.runs + 1):
                marker = f"m{n}"
                t0 = time.monotonic()
                write(marker, n)
                if mode == "admin":
                    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{admin}/-/reload", method="POST"), timeout=10).read()
                while status(f"http://127.0.0.1:{port}/{marker}") != 200:
                    if time.monotonic() - t0 > 10:
                        sys.exit(f"{mode}: route {marker} never served")
                    time.sleep(0.001)
                times.append((time.monotonic() - t0) * 1000)
                time.sleep(0.15)
            gw.terminate()
            gw.wait()
            times.sort()
            results[mode] = {
                "p50_ms": round(statistics.median(times), 1),
                "p90_ms": round(times[int(len(times) * 0.9) - 1], 1),
                "max_ms": round(times[-1], 1),
            }
        print(json.dumps({"routes": args.routes + 1, "runs": args.runs, "change_to_serving": results}))
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
