# Shared set-up of the hop benchmarks (sourced by server_vs_nginx.sh and
# hop_instructions.sh): a scratch directory cleaned up on exit, the nginx and
# bridge configurations that put each hop in front of the echo service, and
# waiting for a process to be ready. Callers set BIN and ECHO_PORT first.

dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

wait_for() { # file pattern: until the process writing FILE prints PATTERN
    for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; return 1
}
wait_port() { # port: until something accepts connections on it
    for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
    echo "nothing listens on port $1" >&2; return 1
}

start_echo() { # the HTTP echo service every hop forwards to
    "$BIN" echo-service --listen 127.0.0.1:$ECHO_PORT > "$dir/echo.out" 2>&1 & pids+=($!)
    wait_for "$dir/echo.out" listening
}

# nginx as a production reverse proxy: keep-alive upstream pool, HTTP/1.1 to
# the service, no access log. WORKERS worker processes, or one process that
# does everything (master_process off) when WORKERS is "single".
nginx_conf() { # port workers; prints the config file's path
    local port=$1 workers=$2 head="worker_processes $2;"
    [ "$workers" = single ] && head=$'master_process off;\nworker_processes 1;'
    mkdir -p "$dir/nginx"
    cat > "$dir/nginx/nginx.conf" <<CONF
daemon off;
user root;
$head
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
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
    echo "$dir/nginx/nginx.conf"
}

# The bridge routing bench.http.> to the echo service's /echo: no security
# (nginx checks no credentials either), no retries, nothing logged per request.
bridge_conf() { # port; prints the config file's path
    cat > "$dir/bridge.yaml" <<CONF
bridge:
  host: 127.0.0.1
  port: $1
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
    echo "$dir/bridge.yaml"
}
