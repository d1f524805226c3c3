#!/usr/bin/env bash
# operator.sh -- a running configuration seen from outside: a real Prometheus
# scrapes its /metrics (the target is up, a sluice_ series is queryable, and
# promtool accepts the text), and a trip at the REPL shows in the admin API.
# Needs Debian's prometheus package.
. "$(dirname "$0")/common.bash"

if [ ! -x /usr/bin/prometheus ]; then
  echo "prometheus is not installed (apt-get install prometheus)"
  not_ok "prometheus available"
  finish
  exit 1
fi

ADMIN_PORT=$(free_port)
PROM_PORT=$(free_port)
cat >"$WORK/sluice.lua" <<LUA
local sluice = require "sluice"
local mock = require("sluice.mock.binance").start({})
sluice.on_shutdown(function() mock:stop() end)
return {
  store = "$WORK/db.sqlite",
  admin = { port = $ADMIN_PORT },
  collectors = { { use = "binance_klines", base_url = mock.url, interval = 1, limit = 5 } },
}
LUA
"$SLUICE" run "$WORK/sluice.lua" --control "$WORK/ctl.sock" --log-format json >"$WORK/sluice.out" 2>&1 &
sluice_pid=$!

cat >"$WORK/prometheus.yml" <<YML
global: { scrape_interval: 1s, evaluation_interval: 1s }
scrape_configs:
  - job_name: sluice
    static_configs: [ { targets: [ "127.0.0.1:$ADMIN_PORT" ] } ]
YML
/usr/bin/prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$WORK/prom.out" 2>&1 &
prom_pid=$!
trap 'kill $sluice_pid $prom_pid 2>/dev/null; wait $sluice_pid $prom_pid 2>/dev/null; rm -rf "$WORK"' EXIT

query() {
  curl -s --max-time 2 "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$1"
}

up=""
scraped() {
  up=$(query 'up{job="sluice"}')
  case "$up" in *'"value":['*',"1"]'*) return 0 ;; esac
  return 1
}
wait_until 30 scraped
case "$up" in *'"value":['*',"1"]'*) ok "Prometheus scrapes sluice: up == 1" ;;
  *) not_ok "Prometheus scrapes sluice: up == 1"; echo "    $up"; sed 's/^/    /' "$WORK/prom.out" | tail -5 ;; esac

series=""
queryable() {
  series=$(query 'sluice_collection_requests_total{collector="binance_klines",status="success"}')
  case "$series" in *'"value":'*) return 0 ;; esac
  return 1
}
wait_until 10 queryable
case "$series" in *'"value":'*) ok "a sluice_ series is queryable" ;;
  *) not_ok "a sluice_ series is queryable"; echo "    $series" ;; esac

curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$WORK/metrics.txt"
check "promtool check metrics accepts /metrics" sh -c "promtool check metrics <'$WORK/metrics.txt' >'$WORK/promtool.out' 2>&1 && test ! -s '$WORK/promtool.out'"

# The REPL steers the same process the admin API reports on.
"$SLUICE" repl "$WORK/ctl.sock" -e 'trip("binance_klines")' >"$WORK/repl.out" 2>&1
contains "trip() at the REPL" "$WORK/repl.out" "breaker 'binance_klines' is open"
curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/circuit-breaker-status" >"$WORK/cb.json"
contains "the trip shows in /circuit-breaker-status" "$WORK/cb.json" '"state":"open"'
"$SLUICE" repl "$WORK/ctl.sock" -e 'reset("binance_klines")' >/dev/null 2>&1
curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/circuit-breaker-status" >"$WORK/cb.json"
contains "reset() shows too" "$WORK/cb.json" '"state":"closed"'

finish
