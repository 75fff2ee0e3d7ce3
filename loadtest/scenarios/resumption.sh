#!/usr/bin/env bash
# What a node's citizens cost it when they come back on new HTTPS connections: many
# clients, each with a session store of its own, taking turns, each connection a TLS
# handshake and one proxied request (`Connection: close`). edgegate beside nginx with the
# same ECDSA P-256 certificate and the same upstream (nginx `return 200`), each on core 1
# with one worker; the clients (`edgegate-loadtest handshakes`) and the upstream on core 0.
# For TLS 1.3 and 1.2: every handshake full (clients never offer a session), then clients
# offering the session they got on their previous connection. Reports how many resumed and
# the server's CPU per connection (every thread's utime+stime from /proc).
#
# Run:   loadtest/scenarios/resumption.sh [path/to/edgegate] [CLIENTS] [CONNECTIONS]
#        (defaults: target/release/edgegate, 2000 clients, 20000 connections per row)
#        KEY=rsa uses an RSA 2048 certificate instead (the signature of a full handshake
#        costs far more than with ECDSA P-256).
#        FLEET=1 gives edgegate the fleet's ticket secrets (tls.session_ticket_keys) in
#        place of the keys of its own process.
#        nginx: ssl_session_cache shared:tls:10m and its default session tickets on.
# Needs: nginx, openssl, python3 (apt-get install -y nginx-light openssl python3).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/release/edgegate}
clients=${2:-2000}
connections=${3:-20000}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for tool in nginx openssl taskset python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$bin" ] || cargo build --release -q -p edgegate --manifest-path "$root/Cargo.toml"
cargo build --release -q -p edgegate-loadtest --manifest-path "$root/Cargo.toml"
loadtest="$root/target/release/edgegate-loadtest"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port); gw=$(free_port); gw_admin=$(free_port); ngx=$(free_port)

key=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
[ "${KEY:-ec}" = rsa ] && key=(-newkey rsa:2048)
openssl req -x509 "${key[@]}" -nodes -days 2 \
  -subj /CN=bench.gov.test -addext subjectAltName=DNS:bench.gov.test \
  -keyout "$work/cert.key" -out "$work/cert.crt" 2>/dev/null

temp="client_body_temp_path $work/b; proxy_temp_path $work/p; fastcgi_temp_path $work/f; uwsgi_temp_path $work/u; scgi_temp_path $work/s;"
cat > "$work/up.conf" <<CONF
worker_processes 1; daemon off; error_log $work/up.err warn; pid $work/up.pid;
events { worker_connections 4096; }
http { access_log off; $temp server { listen 127.0.0.1:$up; location / { return 200 'ok'; } } }
CONF
cat > "$work/ngx.conf" <<CONF
worker_processes 1; daemon off; error_log $work/ngx.err warn; pid $work/ngx.pid;
events { worker_connections 4096; }
http { access_log off; $temp
  upstream pods { server 127.0.0.1:$up; keepalive 128; }
  server { listen 127.0.0.1:$ngx ssl; ssl_certificate $work/cert.crt; ssl_certificate_key $work/cert.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:tls:10m;
    location / { proxy_pass http://pods; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
fleet=""
if [ "${FLEET:-0}" = 1 ]; then
  openssl rand -base64 32 > "$work/tickets.keys"
  fleet=", session_ticket_keys: tickets.keys"
fi
cat > "$work/edgegate.yaml" <<YAML
listeners: [{name: public, address: "127.0.0.1:$gw", tls: {certificates: [{cert: cert.crt, key: cert.key}]$fleet}}]
admin: {address: "127.0.0.1:$gw_admin"}
runtime: {threads: 1, work_stealing: false}
logging: {access_log: false}
limits: {new_connections_per_client: {rate: 1000000000, burst: 1000000000}}
upstreams: {pods: {endpoints: [{address: "127.0.0.1:$up"}]}}
routes: [{name: r, upstream: pods, public: true}]
YAML
taskset -c 0 nginx -p "$work" -c "$work/up.conf" & pids+=($!)
taskset -c 1 nginx -p "$work" -c "$work/ngx.conf" & pids+=($!)
EDGEGATE_LOG=warn taskset -c 1 "$bin" run --config "$work/edgegate.yaml" --state-dir "$work/state" >"$work/gw.log" 2>&1 & pids+=($!)
gw_pid=$!
for _ in $(seq 50); do [ -s "$work/ngx.pid" ] && curl -sk -o /dev/null "https://127.0.0.1:$gw/" && break; sleep 0.1; done
ngx_worker=$(pgrep -P "$(cat "$work/ngx.pid")" | head -1)

row() { # name port pid flags...
  local name=$1 port=$2 pid=$3; shift 3
  taskset -c 0 "$loadtest" handshakes --addr "127.0.0.1:$port" --sni bench.gov.test \
    --clients "$clients" --connections "$connections" --server-pid "$pid" "$@" \
    | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("| %s | %s | %s | %d of %d | %d | %.1f | %.1f | %.1f |" % (sys.argv[1], d["tls"], "yes" if d["offered_resumption"] else "no", d["resumed"], d["resumed"]+d["full"], d["failed"]+d["not_200"], d["server_user_us_per_connection"], d["server_kernel_us_per_connection"], d["server_cpu_us_per_connection"]))' "$name"
}
echo "$clients clients taking turns, $connections connections per row, $([ "${KEY:-ec}" = rsa ] && echo "RSA 2048" || echo "ECDSA P-256") certificate ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo
echo "| server | TLS | clients offer their session | resumed | failed or not 200 | user µs / conn | kernel µs / conn | CPU µs / conn |"
echo "|---|---|---|---|---|---|---|---|"
for v in "" --tls12; do
  for r in --no-resume ""; do
    # shellcheck disable=SC2086
    row nginx "$ngx" "$ngx_worker" $v $r
    # shellcheck disable=SC2086
    row edgegate "$gw" "$gw_pid" $v $r
  done
done
