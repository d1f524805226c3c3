#!/usr/bin/env bash
# h2.sh -- sluice.http over HTTP/2 vs h2load against nginx on loopback:
# TLS (a self-signed certificate made here) with ALPN h2, 1 KB JSON, ONE
# connection carrying N concurrent streams on both sides.
#   tests/bench/http/h2.sh [sluice] [streams] [seconds]
# Prints the rates, the ratio to h2load in the same run and the CPU per
# request of each client, and every figure as an "@figure" line. Needs
# nginx, openssl, h2load and /usr/bin/time (nginx-light, openssl,
# nghttp2-client, time).
set -euo pipefail
cd "$(dirname "$0")/../../.."
SLUICE=$(readlink -f "${1:-build/sluice}")
STREAMS=${2:-64}
SECS=${3:-10}
dir=$(mktemp -d /tmp/sluice-bench.XXXXXX)
trap '/usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -s stop 2>/dev/null; sleep 0.2; rm -rf "$dir"' EXIT
mkdir -p "$dir/html"
chmod 755 "$dir" "$dir/html"
printf '{"symbol":"BTCUSDT","price":97123.5,"pad":"%s"}' "$(head -c 975 /dev/zero | tr '\0' x)" >"$dir/html/doc.json"
chmod 644 "$dir/html/doc.json"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
  -days 2 -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
write_conf() {
cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  http2_max_concurrent_streams 256;
  types { application/json json; }
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  server {
    listen 127.0.0.1:$port ssl http2 backlog=4096; root $dir/html;
    ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem;
  }
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
url="https://127.0.0.1:$port/doc.json"
echo "document: $(stat -c %s "$dir/html/doc.json") bytes; 1 connection, $STREAMS streams; $SECS s each"

echo "== h2load (1 client, 1 thread)"
/usr/bin/time -f "cpu %U %S" -o "$dir/h2load.time" \
  h2load -c1 -t1 -m"$STREAMS" -D"$SECS" "$url" >"$dir/h2load.out"
grep -E "^finished|^requests:|Application protocol" "$dir/h2load.out"
h_rps=$(awk '/^finished in/ {print $4}' "$dir/h2load.out")
h_n=$(awk '/^requests:/ {print $8}' "$dir/h2load.out")
h_cpu=$(awk '/^cpu/ {print $2 + $3}' "$dir/h2load.time")

echo "== sluice http.get + res:json(), $STREAMS tasks"
/usr/bin/time -f "cpu %U %S; max RSS %M KiB" -o "$dir/sluice.time" \
  "$SLUICE" run tests/bench/http/client.lua -- "$url" "$STREAMS" "$SECS" h2 | tee "$dir/sluice.out"
cat "$dir/sluice.time"
s_rps=$(awk '/^sluice:/ {print $8}' "$dir/sluice.out")
s_n=$(awk '/^sluice:/ {print $2}' "$dir/sluice.out")
s_cpu=$(awk '/^cpu/ {print $2 + $3}' "$dir/sluice.time")

awk -v h="$h_rps" -v s="$s_rps" -v hn="$h_n" -v sn="$s_n" -v hc="$h_cpu" -v sc="$s_cpu" 'BEGIN {
  hus = hc / hn * 1e6; sus = sc / sn * 1e6
  printf "ratio: %.2fx h2load; cpu per request: sluice %.1f us, h2load %.1f us (%.1fx)\n", s / h, sus, hus, sus / hus
  printf "@figure http.h2_get_vs_h2load %.3f\n", s / h
  printf "@figure http.h2_get_rps %.0f req/s\n", s
  printf "@figure http.h2load_rps %.0f req/s\n", h
  printf "@figure http.h2_cpu_per_req %.2f us\n", sus
  printf "@figure http.h2_cpu_per_req_vs_h2load %.2f\n", sus / hus
}'
