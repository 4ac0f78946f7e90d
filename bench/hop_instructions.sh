#!/usr/bin/env bash
# Instructions per request of each hop process, under callgrind (make bench-server).
#
# Wall-clock figures on a shared 2-core machine move with whatever else runs;
# the number of user-space instructions a process executes per request does
# not. This runs the three hops of bench/server_vs_nginx.sh one at a time
# under valgrind's callgrind, sends WARM requests to warm pools and caches,
# zeroes the counters, sends REQS more, and divides. nginx runs as a single
# process (master_process off) so that one callgrind sees all its work.
# System-call time is not counted (the hops make the same system calls per
# request: see docs/server.md).
#
# Usage: bench/hop_instructions.sh BIN [REQUESTS] [CONCURRENCY]
set -euo pipefail
BIN=${1:?path to the release dreamos-bridge binary}
REQS=${2:-2000}
CONC=${3:-16}
WARM=500
ECHO_PORT=${ECHO_PORT:-18191}
HOP_PORT=${HOP_PORT:-18192}
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }

dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

wait_for() { # file pattern
    for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; return 1
}
wait_port() {
    for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
    echo "nothing listens on port $1" >&2; return 1
}

"$BIN" echo-service --listen 127.0.0.1:$ECHO_PORT > "$dir/echo.out" 2>&1 & pids+=($!)
wait_for "$dir/echo.out" listening

mkdir -p "$dir/nginx"
cat > "$dir/nginx/nginx.conf" <<CONF
daemon off;
master_process off;
user root;
worker_processes 1;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    upstream echo { server 127.0.0.1:$ECHO_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$HOP_PORT;
        location / { proxy_pass http://echo; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
CONF
cat > "$dir/bridge.yaml" <<CONF
bridge:
  host: 127.0.0.1
  port: $HOP_PORT
  queue_size: 100000
  retry_attempts: 0
monitoring:
  log_level: WARN
services:
  echo:
    url: http://127.0.0.1:$ECHO_PORT
routes:
  - pattern: bench.http.>
    service: echo
    path: /echo
CONF

payload='{"n":1,"text":"hello"}'
count() { # label, then the command line of the hop; prints instructions per request
    local label=$1; shift
    local client=(--raw-url "http://127.0.0.1:$HOP_PORT/echo")
    [ "$label" = bridge ] && client=(--url "http://127.0.0.1:$HOP_PORT" --destination bench.http.echo)
    valgrind --tool=callgrind --callgrind-out-file="$dir/cg.$label" "$@" > "$dir/$label.out" 2>&1 &
    local pid=$!
    wait_port $HOP_PORT
    "$BIN" bench --concurrency "$CONC" --requests $WARM --payload "$payload" "${client[@]}" > /dev/null 2>&1
    callgrind_control -z "$pid" > /dev/null 2>&1
    "$BIN" bench --concurrency "$CONC" --requests "$REQS" --payload "$payload" "${client[@]}" > /dev/null 2>&1
    callgrind_control -d "$pid" > /dev/null 2>&1
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local total
    total=$(callgrind_annotate "$dir/cg.$label".*1 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    echo $((total / REQS))
}
echo "instructions per request (callgrind, user space), $CONC in flight, $REQS requests after $WARM warm-up:"
nginx=$(count nginx nginx -c "$dir/nginx/nginx.conf" -p "$dir/nginx")
proxy=$(count proxy "$BIN" plain-proxy --listen 127.0.0.1:$HOP_PORT --upstream http://127.0.0.1:$ECHO_PORT)
bridge=$(count bridge "$BIN" serve --config "$dir/bridge.yaml")
printf '%-34s %8s\n' "nginx hop" "$nginx" "plain proxy hop (hyper + reqwest)" "$proxy" "bridge hop (/v1/route)" "$bridge"
python3 -c 'import sys; n, p, b = map(int, sys.argv[1:]); print(f"plain proxy / nginx {p / n:.2f}x, bridge / nginx {b / n:.2f}x, bridge / plain proxy {b / p:.2f}x")' \
    "$nginx" "$proxy" "$bridge"
