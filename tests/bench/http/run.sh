#!/usr/bin/env bash
# run.sh -- sluice.http vs wrk against nginx on loopback, 1 KB JSON, keep-alive.
#   tests/bench/http/run.sh [sluice] [connections] [seconds]
# Needs nginx, wrk and /usr/bin/time (packages nginx-light, wrk, time).
set -euo pipefail
cd "$(dirname "$0")/../../.."
SLUICE=$(readlink -f "${1:-build/sluice}")
CONNS=${2:-50}
SECS=${3:-10}
dir=$(mktemp -d /tmp/sluice-bench.XXXXXX)
trap '/usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -s stop 2>/dev/null; sleep 0.2; rm -rf "$dir"' EXIT
mkdir -p "$dir/html"
chmod 755 "$dir" "$dir/html"
printf '{"symbol":"BTCUSDT","price":97123.5,"pad":"%s"}' "$(head -c 975 /dev/zero | tr '\0' x)" >"$dir/html/doc.json"
chmod 644 "$dir/html/doc.json"
port=$((20000 + RANDOM % 40000))
cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  types { application/json json; }
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  server { listen 127.0.0.1:$port backlog=4096; root $dir/html; }
}
CONF
/usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
url="http://127.0.0.1:$port/doc.json"
echo "document: $(stat -c %s "$dir/html/doc.json") bytes; $CONNS connections; $SECS s each"

echo "== wrk (1 thread: nginx takes the other core)"
wrk -t1 -c"$CONNS" -d"${SECS}s" "$url" | grep -E "Requests/sec|Latency|requests in"

echo "== sluice http.get + res:json()"
/usr/bin/time -f "cpu: user %U s, sys %S s; max RSS %M KiB" \
  "$SLUICE" run tests/bench/http/client.lua -- "$url" "$CONNS" "$SECS"
