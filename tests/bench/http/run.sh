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
# shellcheck source=tests/bench/http/nginx.bash
. tests/bench/http/nginx.bash
start_nginx
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
