#!/usr/bin/env bash
# app_collectors.sh -- N collectors as a user runs them: one configuration,
# `sluice run`, each collector its own entry of one collector file (GET a
# 300-byte JSON document from nginx, one row upserted into one shared
# table, every second). Prints the most RSS sampled each second, the Lua
# heap (sampled, then live after two full collections, through the
# control socket), the CPU the process used a second over the window after
# a 10 s warm-up, and the rows stored. The anchor, measured first in the
# same run: the same configuration with one collector (app.rss_vs_one;
# app.rss_per is what each further collector adds).
#   tests/bench/app_collectors.sh [sluice] [N] [SECONDS] [ADMIN]
#     (build/sluice 1000 40 off; ADMIN "on": the admin API on a free port,
#     with the status page's history sampling)
# collectors.lua measures the framework alone (instances built as the app
# builds them); this measures everything `sluice run` adds around them.
set -euo pipefail
cd "$(dirname "$0")/../.."
SLUICE=$(readlink -f "${1:-build/sluice}")
N=${2:-1000}
SECS=${3:-40}
ADMIN=${4:-off}
# nginx as the HTTP benchmarks start it (tests/bench/http/nginx.bash: dir,
# port), serving collectors.lua's 300-byte document instead of their 1 KB
# shellcheck source=tests/bench/http/nginx.bash
. tests/bench/http/nginx.bash
start_nginx
W=$dir PORT=$port
printf '%s' '{"symbol":"BTCUSDT","price":"97123.45","qty":"0.012","time":1733400000000,"bids":[["97123.40","1.2"],["97123.30","0.7"]],"asks":[["97123.50","0.9"],["97123.60","2.1"]],"status":"TRADING","source":"bench"}' >"$W/html/doc.json"
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  /usr/sbin/nginx -p "$W" -c "$W/nginx.conf" -e "$W/error.log" -s stop 2>/dev/null
  sleep 0.2
  rm -rf "$W"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cat >"$W/get.lua" <<EOF
local collector = require "sluice.collector"
local sluice = require "sluice"
return collector.define({
  name = "get",
  base_url = "http://127.0.0.1:$PORT",
  interval = 1,
  tables = { samples = { columns = { k = "text", price = "real", at = "real" }, key = { "k" } } },
  collect = function(self)
    local d = assert(self:get("/doc.json"))
    return { { k = self.name, price = tonumber(d.price), at = sluice.time() } }
  end,
})
EOF
admin=
[ "$ADMIN" = on ] && admin="admin = { port = $(free_port) },"
cat >"$W/config.lua" <<EOF
local c = {}
for i = 1, tonumber(os.getenv("APP_N")) do c[i] = { file = "get.lua", name = string.format("c%05d", i) } end
return { store = "$W/app.db", log = { level = "warning" }, $admin collectors = c }
EOF

# the anchor, same configuration with one collector: the most RSS over 8 s
APP_N=1 "$SLUICE" run "$W/config.lua" --control none >"$W/one.log" 2>&1 &
pid=$!
rss_one=0
for _ in 1 2 3 4 5 6 7 8; do
  sleep 1
  r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
  [ "$r" -gt "$rss_one" ] && rss_one=$r
done
kill "$pid"; wait "$pid" 2>/dev/null || true
pid=
rm -f "$W"/app.db*

APP_N=$N "$SLUICE" run "$W/config.lua" --control "$W/ctl.sock" >"$W/run.log" 2>&1 &
pid=$!
rss_max=0 heap_max=0 c0=
for i in $(seq 1 "$SECS"); do
  sleep 1
  r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
  [ "$r" -gt "$rss_max" ] && rss_max=$r
  if [ "$i" -gt 10 ]; then
    h=$("$SLUICE" repl "$W/ctl.sock" -e 'return math.floor(collectgarbage("count"))' 2>/dev/null | tr -d '"')
    [ -n "$h" ] && [ "$h" -gt "$heap_max" ] && heap_max=$h
  fi
  [ "$i" = 10 ] && c0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
done
c1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
live=$("$SLUICE" repl "$W/ctl.sock" -e 'collectgarbage() collectgarbage() return math.floor(collectgarbage("count"))' | tr -d '"')
rows=$(sqlite3 "$W/app.db" 'select count(*) from samples')
lines=$(wc -l <"$W/run.log")
[ "$lines" -gt 0 ] && head -c 600 "$W/run.log" >&2
tick=$(getconf CLK_TCK)
echo "$N collectors in sluice run, admin API $ADMIN, $SECS s: $rows rows stored, $lines log lines"
awk -v o="$rss_one" -v r="$rss_max" -v h="$heap_max" -v l="$live" -v n="$N" -v c="$((c1 - c0))" -v t="$tick" -v s="$((SECS - 10))" 'BEGIN {
  printf "@figure app.rss_max %.1f MiB\n", r / 1024
  printf "@figure app.rss_max_mb %.1f MB\n", r * 1024 / 1e6
  printf "@figure app.rss_one %.1f MiB\n", o / 1024
  printf "@figure app.rss_vs_one %.2f ratio\n", r / o
  printf "@figure app.rss_per %.1f KiB\n", (r - o) / (n - 1)
  printf "@figure app.lua_heap_max %.1f MiB\n", h / 1024
  printf "@figure app.lua_heap_live %.1f MiB\n", l / 1024
  printf "@figure app.cpu %.0f ms/s\n", c * 1000 / t / s
  printf "@figure app.cpu_per %.0f us\n", c * 1e6 / t / s / n
}'
