#!/usr/bin/env bash
# The bridge hop beside the nginx hop, in one run (make bench-server).
#
# One HTTP echo service (`dreamos-bridge echo-service`) is reached four ways
# with the same client (`dreamos-bridge bench`), concurrency and request count:
# directly; through nginx as a reverse proxy (keep-alive upstream); through
# `dreamos-bridge plain-proxy`, the bridge's own libraries (hyper's server, a
# pooled reqwest client) forwarding with no bridge logic, the floor under the
# bridge; and through `dreamos-bridge serve`, whose config routes
# `bench.http.>` to the service (POST /v1/route). "Added" latency is each
# hop's percentile minus the direct
# one. Everything shares the machine's cores, so compare the lines, not the
# absolute numbers. "CPU us/req" is the CPU time (all threads, user + system,
# from /proc) the hop's process spent per request during its run: unlike
# latency it barely moves with what else the machine is doing.
#
# Usage: bench/server_vs_nginx.sh BIN [CONCURRENCY] [REQUESTS]
set -euo pipefail
BIN=${1:?path to the release dreamos-bridge binary}
CONC=${2:-16}
REQS=${3:-20000}
ECHO_PORT=${ECHO_PORT:-18091}
NGINX_PORT=${NGINX_PORT:-18092}
BRIDGE_PORT=${BRIDGE_PORT:-18093}
PROXY_PORT=${PROXY_PORT:-18094}

# shellcheck source=bench/hops.sh
. "$(dirname "$0")/hops.sh"

start_echo
nginx -c "$(nginx_conf $NGINX_PORT 2)" -p "$dir/nginx" & pids+=($!)
"$BIN" serve --config "$(bridge_conf $BRIDGE_PORT)" > "$dir/bridge.out" 2>&1 & pids+=($!)
wait_for "$dir/bridge.out" listening
"$BIN" plain-proxy --listen 127.0.0.1:$PROXY_PORT --upstream http://127.0.0.1:$ECHO_PORT > "$dir/proxy.out" 2>&1 & pids+=($!)
wait_for "$dir/proxy.out" listening
wait_port $NGINX_PORT

# CPU time (user + system, clock ticks) of processes and all their threads:
# what a hop costs per request, whatever else the machine is doing.
cpu_ticks() {
    local t=0 f
    for p in "$@"; do
        for f in /proc/"$p"/task/*/stat; do
            t=$((t + $(awk '{print $14 + $15}' "$f" 2>/dev/null || echo 0)))
        done
    done
    echo "$t"
}
nginx_pids() { pgrep -P "${pids[1]}" | tr '\n' ' '; }
echo_pid=${pids[0]}
bridge_pid=${pids[2]}
proxy_pid=${pids[3]}
HZ=$(getconf CLK_TCK)

payload='{"n":1,"text":"hello"}'
run() { # label, hop pids ("" for none), then bench arguments; adds hop_cpu_us per request
    local label=$1 hop=$2; shift 2
    local before after out
    before=$(cpu_ticks $hop)
    out=$("$BIN" bench --concurrency "$CONC" --requests "$REQS" --payload "$payload" --json --label "$label" "$@" 2>/dev/null)
    after=$(cpu_ticks $hop)
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["hop_cpu_us"]=(int(sys.argv[2])*1e6/int(sys.argv[4]))/int(sys.argv[3]); print(json.dumps(r))' \
        "$out" "$((after - before))" "$REQS" "$HZ"
}
# Warm-up (connection pools, nginx workers), then the measured runs.
run warm "" --raw-url http://127.0.0.1:$NGINX_PORT/echo > /dev/null
run warm "" --raw-url http://127.0.0.1:$PROXY_PORT/echo > /dev/null
run warm "" --url http://127.0.0.1:$BRIDGE_PORT --destination bench.http.echo > /dev/null
direct=$(run direct "$echo_pid" --raw-url http://127.0.0.1:$ECHO_PORT/echo)
nginx=$(run "via nginx" "$(nginx_pids)" --raw-url http://127.0.0.1:$NGINX_PORT/echo)
proxy=$(run "plain proxy" "$proxy_pid" --raw-url http://127.0.0.1:$PROXY_PORT/echo)
bridge=$(run "via bridge" "$bridge_pid" --url http://127.0.0.1:$BRIDGE_PORT --destination bench.http.echo)

python3 - "$CONC" "$REQS" "$direct" "$nginx" "$proxy" "$bridge" <<'PY'
import json, sys
conc, reqs = sys.argv[1], sys.argv[2]
d, n, p, b = (json.loads(a) for a in sys.argv[3:7])
print(f"POST to one HTTP echo service, {conc} in flight, {reqs} requests each:")
print(f"{'path':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'added p50':>11}{'added p99':>11}{'CPU us/req':>12}{'errors':>8}")
for r in (d, n, p, b):
    a50, a99 = r["p50_ms"] - d["p50_ms"], r["p99_ms"] - d["p99_ms"]
    added = (f"{a50:>11.3f}{a99:>11.3f}") if r is not d else f"{'-':>11}{'-':>11}"
    print(f"{r['label']:<12}{r['throughput']:>9.0f}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{added}{r['hop_cpu_us']:>12.1f}{r['errors']:>8}")
def ratio(x, y):
    # A negative "added" figure is noise (the hop measured faster than direct in this run).
    return f"{x / y:.2f}" if y > 0 and x >= 0 else "n/a (an added figure is below zero: noise, run again)"
def compare(title, x, y, peer):
    cpu = f", CPU per request {x['hop_cpu_us'] / y['hop_cpu_us']:.2f}x {peer}'s" if y["hop_cpu_us"] > 0 else ""
    print(f"{title}: added p50 {ratio(x['p50_ms'] - d['p50_ms'], y['p50_ms'] - d['p50_ms'])}, "
          f"added p99 {ratio(x['p99_ms'] - d['p99_ms'], y['p99_ms'] - d['p99_ms'])}, "
          f"throughput {x['throughput'] / y['throughput']:.2f}x {peer}'s{cpu}")
compare("bridge hop / nginx hop", b, n, "nginx")
compare("plain proxy hop / nginx hop (the libraries' floor)", p, n, "nginx")
compare("bridge hop / plain proxy hop (what the bridge adds)", b, p, "the plain proxy")
print("(CPU us/req: the echo service's own CPU for direct; the hop process's CPU, all threads, for the others)")
if d["errors"] or n["errors"] or p["errors"] or b["errors"]:
    sys.exit("errors during the run: the figures are not comparable")
PY
