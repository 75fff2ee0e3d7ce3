#!/usr/bin/env bash
# TLS on one core, edgegate beside nginx with the same ECDSA P-256 certificate:
# full handshakes/s and resumed handshakes/s (openssl s_time), and HTTP/2 requests/s
# through the proxy to a local upstream (h2load). Proxy on core 1, clients and
# upstream on core 0, one worker each, release build; loopback only, bounded in time.
#
# Run:   loadtest/scenarios/tls.sh [seconds]
# Needs: nginx, openssl, h2load, python3 (apt-get install -y nginx-light openssl nghttp2-client python3).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-5}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for tool in nginx openssl h2load taskset python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
cargo build --release -q -p edgegate --manifest-path "$root/Cargo.toml"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port); gw=$(free_port); gw_admin=$(free_port); ngx=$(free_port)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
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
  server { listen 127.0.0.1:$ngx ssl http2; ssl_certificate $work/cert.crt; ssl_certificate_key $work/cert.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:tls:10m;
    location / { proxy_pass http://pods; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$work/edgegate.yaml" <<YAML
listeners: [{name: public, address: "127.0.0.1:$gw", tls: {certificates: [{cert: cert.crt, key: cert.key}]}}]
admin: {address: "127.0.0.1:$gw_admin"}
runtime: {threads: 1, work_stealing: false}
logging: {access_log: false}
limits: {new_connections_per_client: {rate: 1000000000, burst: 1000000000}}
upstreams: {pods: {endpoints: [{address: "127.0.0.1:$up"}]}}
routes: [{name: r, upstream: pods, public: true}]
YAML
taskset -c 0 nginx -p "$work" -c "$work/up.conf" & pids+=($!)
taskset -c 1 nginx -p "$work" -c "$work/ngx.conf" & pids+=($!)
EDGEGATE_LOG=warn taskset -c 1 "$root/target/release/edgegate" run --config "$work/edgegate.yaml" --state-dir "$work/state" >"$work/gw.log" 2>&1 & pids+=($!)
sleep 1

# utime+stime (clock ticks) of every thread of a process.
ticks() { cat /proc/"$1"/task/*/stat | sed 's/.*) //' | awk '{t += $12 + $13} END {print t}'; }

# Handshakes/s as the client saw them, and server CPU µs per handshake. A single
# sequential s_time client is mostly measuring itself on these machines; the server's
# CPU per handshake is the figure to compare.
handshakes() { # port pid -new|-reuse
  local before after out n secs_real
  before=$(ticks "$2")
  out=$(taskset -c 0 openssl s_time -connect "127.0.0.1:$1" $3 -time "$secs" 2>/dev/null | grep 'connections in .* real seconds')
  after=$(ticks "$2")
  n=$(echo "$out" | awk '{print $1}'); secs_real=$(echo "$out" | awk '{print $4}')
  awk -v n="$n" -v s="$secs_real" -v d=$((after - before)) 'BEGIN {printf "%.0f/s, %.0f µs CPU", n/s, d*10000/n}'
}
h2() {
  taskset -c 0 h2load -n 20000 -c 16 -m 10 "https://127.0.0.1:$1/" 2>/dev/null \
    | awk '/^finished in/ {gsub(",",""); print $4; exit}'
}
ngx_worker=$(pgrep -P "$(cat "$work/ngx.pid")" | head -1)
gw_pid=${pids[2]}
echo "| server (core 1, 1 worker) | full handshakes (client-seen rate, server CPU each) | resumed handshakes (TLS 1.2 session id) | HTTP/2 req/s (h2load -c16 -m10) |"
echo "|---|---|---|---|"
echo "| nginx | $(handshakes "$ngx" "$ngx_worker" -new) | $(handshakes "$ngx" "$ngx_worker" "-reuse -tls1_2") | $(h2 "$ngx") |"
echo "| edgegate | $(handshakes "$gw" "$gw_pid" -new) | $(handshakes "$gw" "$gw_pid" "-reuse -tls1_2") | $(h2 "$gw") |"
