# Shared by the scenario scripts beside it (source it; it is not run on its own): a work
# directory and the processes started, both cleaned up on exit; free loopback ports; the
# release binary; an nginx upstream answering a fixed JSON body; the gateway's readiness;
# a TLS certificate, an nginx terminating TLS and a gateway config with an HTTPS listener.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# A script measures the binary it is given: a default build with a build for a CPU level
# beside it (target/pgo/edgegate-x86-64-v3) would run that one instead, and under callgrind
# out of its sight. Name the level's binary to measure it (or, to measure the hand-over
# itself, run the script with EDGEGATE_CPU_LEVEL_BUILD=on).
export EDGEGATE_CPU_LEVEL_BUILD=${EDGEGATE_CPU_LEVEL_BUILD:-off}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# What a script writes while a gateway runs goes in $scratch, not beside the gateway's config in
# $work: the gateway watches its config's directory, and each write there wakes its watcher
# thread on the gateway's core (at 100 req/s, at-rate.sh's own files cost ~0.5 µs a request).
scratch=$work/out
mkdir -p "$scratch"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ensure_binary PATH: builds the release gateway when PATH is not there.
ensure_binary() { [ -x "$1" ] || cargo build --release -q -p edgegate --manifest-path "$root/Cargo.toml"; }

# The open-loop generator (edgegate-loadtest); ensure_generator builds it when missing.
gen_bin=$root/target/release/edgegate-loadtest
ensure_generator() { [ -x "$gen_bin" ] || cargo build --release -q -p edgegate-loadtest --manifest-path "$root/Cargo.toml"; }

# start_upstream PORT BODY [CPU]: one nginx worker on 127.0.0.1:PORT answering 200 BODY.
start_upstream() {
  cat > "$work/up.conf" <<CONF
worker_processes 1; daemon off; error_log $work/up.err warn; pid $work/up.pid;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $work/b; proxy_temp_path $work/p; fastcgi_temp_path $work/f; uwsgi_temp_path $work/u; scgi_temp_path $work/s;
  server { listen 127.0.0.1:$1; location / { default_type application/json; return 200 '$2'; } } }
CONF
  if [ -n "${3:-}" ]; then taskset -c "$3" nginx -p "$work" -c "$work/up.conf" & else nginx -p "$work" -c "$work/up.conf" & fi
  pids+=($!)
}

# TLS beside nginx, for tls.sh and resumption.sh.
# tls_certificate [rsa]: a self-signed certificate for bench.gov.test in $work/cert.crt and
# $work/cert.key, ECDSA P-256 (RSA 2048 with `rsa`).
tls_certificate() {
  local key=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
  [ "${1:-ec}" = rsa ] && key=(-newkey rsa:2048)
  openssl req -x509 "${key[@]}" -nodes -days 2 -subj /CN=bench.gov.test \
    -addext subjectAltName=DNS:bench.gov.test -keyout "$work/cert.key" -out "$work/cert.crt" 2>/dev/null
}

# start_nginx_tls PORT UP CPU [LISTEN_EXTRA]: one nginx worker on CPU terminating TLS on
# 127.0.0.1:PORT with $work/cert.*, a session cache and its default tickets, proxying
# keep-alive to 127.0.0.1:UP; LISTEN_EXTRA after `ssl` (e.g. `http2`). Its worker's pid
# in $ngx_worker.
start_nginx_tls() {
  cat > "$work/ngx.conf" <<CONF
worker_processes 1; daemon off; error_log $work/ngx.err warn; pid $work/ngx.pid;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $work/b; proxy_temp_path $work/p; fastcgi_temp_path $work/f; uwsgi_temp_path $work/u; scgi_temp_path $work/s;
  upstream pods { server 127.0.0.1:$2; keepalive 128; }
  server { listen 127.0.0.1:$1 ssl ${4:-}; ssl_certificate $work/cert.crt; ssl_certificate_key $work/cert.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:tls:10m;
    location / { proxy_pass http://pods; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
  taskset -c "$3" nginx -p "$work" -c "$work/ngx.conf" & pids+=($!)
  for _ in $(seq 50); do [ -s "$work/ngx.pid" ] && pgrep -P "$(cat "$work/ngx.pid")" >/dev/null && break; sleep 0.1; done
  ngx_worker=$(pgrep -P "$(cat "$work/ngx.pid")" | head -1)
}

# write_tls_gateway_config GW ADMIN UP [TLS_EXTRA]: $work/gw.yaml with one HTTPS listener on
# GW ($work/cert.*; TLS_EXTRA inside its `tls`), one worker without work stealing, access
# log off, new connections not rate-limited, every path to the upstream on UP.
write_tls_gateway_config() {
  cat > "$work/gw.yaml" <<YAML
listeners: [{name: public, address: "127.0.0.1:$1", tls: {certificates: [{cert: cert.crt, key: cert.key}]${4:-}}}]
admin: {address: "127.0.0.1:$2"}
runtime: {threads: 1, work_stealing: false}
logging: {access_log: false}
limits: {$UNBOUNDED_NEW_CONNECTIONS}
upstreams: {pods: {endpoints: [{address: "127.0.0.1:$3"}]}}
routes: [{name: r, upstream: pods, public: true}]
YAML
}

# run_gateway LEVEL: "$bin" on $work/gw.yaml (state in $work/state, output in
# $scratch/gw.log) at EDGEGATE_LOG=LEVEL, its pid in $gwpid (stopped on exit), ready on $admin.
run_gateway() {
  EDGEGATE_LOG=$1 "$bin" run --config "$work/gw.yaml" --state-dir "$work/state" >"$scratch/gw.log" 2>&1 & gwpid=$!; pids+=($gwpid)
  wait_ready "$admin"
}

# latency_summary FILE: one line of a generator's JSON report (edgegate-loadtest load
# --json): its latency percentiles, the requests served and the errors by kind.
latency_summary() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); l=d["latency_ms"]; print("p50 %.2f  p99 %.2f  p99.9 %.2f  max %.2f ms, %d ok, errors %s" % (l["p50"], l["p99"], l["p99_9"], l["max"], d["ok"], d["errors"]))' "$1"; }

# worker_cores: $gw_cores and $gen_cores for a tail scenario — one worker on core 1 and the
# generators and upstream on core 0, or with WORKERS > 1 both cores for everything.
worker_cores() {
  gw_cores=1; gen_cores=0
  if [ "${WORKERS:-1}" -gt 1 ]; then gw_cores=0,1; gen_cores=0,1; fi
}

# wait_ready ADMIN_PORT: until the gateway's /readyz answers 200 (10 s at most).
wait_ready() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0; sleep 0.1; done; echo "gateway never ready" >&2; return 1; }

# The `limits` field that lets one loopback client open connections as fast as it likes,
# for the scenarios that open hundreds at once (builds before it refuse the field).
UNBOUNDED_NEW_CONNECTIONS="new_connections_per_client: {rate: 1000000000, burst: 1000000000}"

# write_gateway_config GW ADMIN UP [ROUTE_EXTRA] [TOP_EXTRA]: $work/gw.yaml for one
# worker, access log off (ACCESS_LOG=1: on), a public route /api/ to the upstream on UP.
# ROUTE_EXTRA is appended inside the route (e.g. ", cache: {ttl: 60s}"), TOP_EXTRA as
# top-level YAML.
write_gateway_config() {
  local access_log=false
  if [ "${ACCESS_LOG:-0}" = 1 ]; then access_log=true; fi
  cat > "$work/gw.yaml" <<YAML
listeners: [{name: public, address: "127.0.0.1:$1"}]
admin: {address: "127.0.0.1:$2"}
runtime: {threads: 1, work_stealing: false}
logging: {access_log: $access_log}
${5:-}
upstreams: {permits: {endpoints: [{address: "127.0.0.1:$3"}]}}
routes: [{name: permits, match: {path_prefix: /api/}, upstream: permits, public: true${4:-}}]
YAML
}

# gateway_log_level: the EDGEGATE_LOG the scripts run the gateway with: warnings only, and
# with ACCESS_LOG=1 the access log too (it logs at info).
gateway_log_level() { if [ "${ACCESS_LOG:-0}" = 1 ]; then echo "warn,edgegate::access=info"; else echo warn; fi; }

# cached_route: the ROUTE_EXTRA for write_gateway_config that the scenarios' CACHE=1 asks
# for — the route cached for an hour, so every request after the first is a hit; nothing
# otherwise.
cached_route() { if [ "${CACHE:-0}" = 1 ]; then echo ", cache: {ttl: 1h}"; fi; }

# keepalive_client N: N GETs of /api/x through the gateway on $gw, one at a time over one
# kept-alive connection, each answered 200 (a count per request divides by a known N).
keepalive_client() {
  python3 - "$gw" "$1" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    c.request("GET", "/api/x"); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
}

# setup_gateway_and_pod [TOP_EXTRA]: free ports in $up, $gw and $admin, $work/gw.yaml
# (write_gateway_config, the route as cached_route says) and the pod on $up answering a
# small JSON body.
setup_gateway_and_pod() {
  up=$(free_port); gw=$(free_port); admin=$(free_port)
  write_gateway_config "$gw" "$admin" "$up" "$(cached_route)" "${1:-}"
  start_upstream "$up" '{"service":"permits","status":"open"}'
}

# write_nginx_peer_config PORT UP: $work/ng/ng.conf for the yardstick beside the gateway —
# one nginx worker on 127.0.0.1:PORT, access log off, a keep-alive reverse proxy to the
# upstream on UP, or with CACHE=1 answering the upstream's body itself (`return 200`).
write_nginx_peer_config() {
  local loc
  if [ "${CACHE:-0}" = 1 ]; then
    loc="default_type application/json; return 200 '{\"service\":\"permits\",\"status\":\"open\"}';"
  else
    loc="proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection \"\";"
    # NGINX_FORWARD=1: nginx adds what edgegate adds to every proxied request — the Host as
    # sent, the client's address, the scheme, a fresh request id (also on the answer) and a
    # W3C `traceparent` of the same length (nginx cannot make a span id: a fixed one) — so
    # that both servers send the same bytes, as the `proxy` scenario's "nginx, forwarding
    # like edgegate" row does. NGINX_FORWARD=fixed: the same with one fixed request id
    # (no id made). Without it the yardstick forwards the request as sent.
    if [ "${NGINX_FORWARD:-0}" != 0 ]; then
      # shellcheck disable=SC2016  # nginx's variable, written into its config as it is
      local id='$request_id'
      [ "$NGINX_FORWARD" = fixed ] && id=c4a9121f4cdaf8b2fe15cb0a0612a423
      loc="$loc proxy_set_header Host \$http_host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;"
      loc="$loc proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Request-Id $id;"
      loc="$loc proxy_set_header traceparent 00-$id-f39f05b06c64c9f1-00; add_header X-Request-Id $id always;"
    fi
  fi
  # ACCESS_LOG=1: nginx logs too, its default way (the combined format, a write per request).
  local access="access_log off;"
  if [ "${ACCESS_LOG:-0}" = 1 ]; then access="access_log $work/ng/access.log;"; fi
  mkdir -p "$work/ng"
  cat > "$work/ng/ng.conf" <<CONF
worker_processes 1; daemon off; error_log $work/ng/err warn; pid $work/ng/pid;
events { worker_connections 1024; }
http { $access client_body_temp_path $work/ng/b; proxy_temp_path $work/ng/p; fastcgi_temp_path $work/ng/f; uwsgi_temp_path $work/ng/u; scgi_temp_path $work/ng/s;
  upstream pool { server 127.0.0.1:$2; keepalive 64; }
  server { listen 127.0.0.1:$1; location / { $loc } } }
CONF
}

# start_gateway_beside_nginx AUDIT_DEFAULT [ROUTE_EXTRA]: the pod (one nginx worker, core 1)
# on $up; "$bin" on core 0 on $gw (admin $admin, its pid in $gw_pid), its audit log on when
# AUDIT (default AUDIT_DEFAULT) is 1, with GATEWAY_AUDIT's YAML inside its `audit:` map; and
# the yardstick nginx (write_nginx_peer_config) on core 0 on $ng (its master in $ng_pid).
start_gateway_beside_nginx() {
  up=$(free_port); gw=$(free_port); admin=$(free_port); ng=$(free_port)
  start_upstream "$up" '{"service":"permits","status":"open"}' 1
  local audit=""
  [ "${AUDIT:-$1}" = 1 ] && audit="audit: {db: $work/state/audit.db${GATEWAY_AUDIT:+, $GATEWAY_AUDIT}}"
  write_gateway_config "$gw" "$admin" "$up" "${2:-}" "$audit"
  EDGEGATE_LOG=$(gateway_log_level) taskset -c 0 "$bin" run --config "$work/gw.yaml" --state-dir "$work/state" >"$scratch/gw.log" 2>&1 &
  gw_pid=$!; pids+=("$gw_pid")
  start_nginx_peer "$ng" "$up" 0
}

# start_nginx_peer PORT UP CORE: that nginx started, pinned to CORE. Sets ng_pid (the master).
start_nginx_peer() {
  write_nginx_peer_config "$1" "$2"
  taskset -c "$3" nginx -p "$work/ng" -c "$work/ng/ng.conf" & pids+=($!)
  for _ in $(seq 50); do [ -s "$work/ng/pid" ] && break; sleep 0.1; done
  ng_pid=$(cat "$work/ng/pid")
}
