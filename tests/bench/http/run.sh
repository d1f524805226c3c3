#!/usr/bin/env bash
# run.sh -- sluice.http vs wrk against nginx on loopback, 1 KB JSON, keep-alive.
#   tests/bench/http/run.sh [sluice] [connections] [seconds]
# Prints the rates, the ratio to wrk in the same run, and the CPU each
# client spends per request (user + sys), also as a ratio to wrk's: the CPU
# figure is the one that holds on a busy machine, where the rates swing.
# Every figure is also an "@figure name value [unit]" line for
# tests/bench/run.sh. Needs nginx, wrk and /usr/bin/time (packages
# nginx-light, wrk, time).
set -euo pipefail
cd "$(dirname "$0")/../../.."
SLUICE=$(readlink -f "${1:-build/sluice}")
CONNS=${2:-64}
SECS=${3:-10}
dir=$(mktemp -d /tmp/sluice-bench.XXXXXX)
trap '/usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -s stop 2>/dev/null; sleep 0.2; rm -rf "$dir"' EXIT
mkdir -p "$dir/html"
chmod 755 "$dir" "$dir/html"
printf '{"symbol":"BTCUSDT","price":97123.5,"pad":"%s"}' "$(head -c 975 /dev/zero | tr '\0' x)" >"$dir/html/doc.json"
chmod 644 "$dir/html/doc.json"
write_conf() {
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
}
# A port of the ephemeral range may be taken by a client socket: try a few.
for _ in 1 2 3 4 5 6 7 8; do
  port=$((20000 + RANDOM % 12000))
  write_conf
  /usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" 2>/dev/null && break
  port=
done
[ -n "$port" ] || { echo "nginx could not bind a port" >&2; exit 1; }
url="http://127.0.0.1:$port/doc.json"
echo "document: $(stat -c %s "$dir/html/doc.json") bytes; $CONNS connections; $SECS s each"

echo "== wrk (1 thread: nginx takes the other core)"
/usr/bin/time -f "cpu %U %S" -o "$dir/wrk.time" wrk -t1 -c"$CONNS" -d"${SECS}s" "$url" >"$dir/wrk.out"
grep -E "Requests/sec|Latency|requests in" "$dir/wrk.out"
wrk_rps=$(awk '/Requests\/sec/ {print $2}' "$dir/wrk.out")
wrk_n=$(awk '/requests in/ {print $1}' "$dir/wrk.out")
wrk_cpu=$(awk '/^cpu/ {print $2 + $3}' "$dir/wrk.time")

echo "== sluice http.get + res:json()"
/usr/bin/time -f "cpu %U %S; max RSS %M KiB" -o "$dir/sluice.time" \
  "$SLUICE" run tests/bench/http/client.lua -- "$url" "$CONNS" "$SECS" | tee "$dir/sluice.out"
cat "$dir/sluice.time"
s_rps=$(awk '/^sluice:/ {print $8}' "$dir/sluice.out")
s_n=$(awk '/^sluice:/ {print $2}' "$dir/sluice.out")
s_cpu=$(awk '/^cpu/ {print $2 + $3}' "$dir/sluice.time")

awk -v w="$wrk_rps" -v s="$s_rps" -v wn="$wrk_n" -v sn="$s_n" -v wc="$wrk_cpu" -v sc="$s_cpu" 'BEGIN {
  wus = wc / wn * 1e6; sus = sc / sn * 1e6
  printf "ratio: %.2fx wrk; cpu per request: sluice %.1f us, wrk %.1f us (%.1fx)\n", s / w, sus, wus, sus / wus
  printf "@figure http.get_vs_wrk %.3f\n", s / w
  printf "@figure http.get_rps %.0f req/s\n", s
  printf "@figure http.wrk_rps %.0f req/s\n", w
  printf "@figure http.cpu_per_req %.2f us\n", sus
  printf "@figure http.cpu_per_req_vs_wrk %.2f\n", sus / wus
}'
