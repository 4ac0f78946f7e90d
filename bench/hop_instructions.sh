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

# shellcheck source=bench/hops.sh
. "$(dirname "$0")/hops.sh"

start_echo
nginx_file=$(nginx_conf $HOP_PORT single)
bridge_file=$(bridge_conf $HOP_PORT)

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
nginx=$(count nginx nginx -c "$nginx_file" -p "$dir/nginx")
proxy=$(count proxy "$BIN" plain-proxy --listen 127.0.0.1:$HOP_PORT --upstream http://127.0.0.1:$ECHO_PORT)
bridge=$(count bridge "$BIN" serve --config "$bridge_file")
printf '%-34s %8s\n' "nginx hop" "$nginx" "plain proxy hop (hyper + reqwest)" "$proxy" "bridge hop (/v1/route)" "$bridge"
python3 -c 'import sys; n, p, b = map(int, sys.argv[1:]); print(f"plain proxy / nginx {p / n:.2f}x, bridge / nginx {b / n:.2f}x, bridge / plain proxy {b / p:.2f}x")' \
    "$nginx" "$proxy" "$bridge"
