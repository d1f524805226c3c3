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
# shellcheck source=tests/bench/http/nginx.bash
. tests/bench/http/nginx.bash
# the certificate, in nginx's directory, before nginx reads it
dir=$(mktemp -d /tmp/sluice-bench.XXXXXX)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
  -days 2 -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
start_nginx "ssl http2" "  http2_max_concurrent_streams 256;" \
  "    ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem;"
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
