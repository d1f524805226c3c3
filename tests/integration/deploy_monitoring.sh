#!/usr/bin/env bash
# deploy_monitoring.sh -- deploy/prometheus and deploy/grafana as shipped:
# alerts.yml passes `promtool check rules` and its unit tests
# (alerts_test.yml, `promtool test rules`); every query of the Grafana
# dashboard parses as PromQL, and every sluice_ metric a query names is
# exported: a sluice with collectors, a breaker, a limiter, a backfill job
# and a sink (redis_stream, Redis on loopback) is scraped, and each name
# must have samples in its /metrics.
. "$(dirname "$0")/common.bash"

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=/usr/bin/python3
if ! command -v promtool >/dev/null; then
  not_ok "promtool available (apt-get install prometheus)"
  finish
  exit 1
fi

# --- alerts ------------------------------------------------------------------------
(cd "$ROOT/deploy/prometheus" && promtool check rules alerts.yml) >"$WORK/rules.out" 2>&1
code=$?
if [ "$code" = 0 ]; then ok "promtool check rules alerts.yml"; else
  not_ok "promtool check rules alerts.yml"; sed 's/^/    /' "$WORK/rules.out"; fi
contains "8 rules" "$WORK/rules.out" "SUCCESS: 8 rules found"
for a in SluiceBreakerOpen SluiceCollectorFailed SluiceLimiterBanned SluiceOutboxGrowing; do
  check "alert $a is tested" grep -q "alertname: $a" "$ROOT/deploy/prometheus/alerts_test.yml"
done
(cd "$ROOT/deploy/prometheus" && promtool test rules alerts_test.yml) >"$WORK/test.out" 2>&1
code=$?
if [ "$code" = 0 ]; then ok "promtool test rules alerts_test.yml"; else
  not_ok "promtool test rules alerts_test.yml"; sed 's/^/    /' "$WORK/test.out"; fi

# --- the dashboard's queries ---------------------------------------------------------------
$PY - "$ROOT/deploy/grafana/sluice.json" "$WORK" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
exprs = []
def walk(panels):
    for p in panels:
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            exprs.append(t["expr"])
walk(d["panels"])
for v in d["templating"]["list"]:
    q = v.get("definition")
    if q:
        exprs.append(re.sub(r"^label_values\((\w+),.*\)$", r"\1", q))
with open(sys.argv[2] + "/exprs", "w") as f:
    f.write("\n".join(exprs) + "\n")
# as recording rules, with Grafana's variables as a query would have them
with open(sys.argv[2] + "/dashboard_rules.yml", "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        e = e.replace("$__rate_interval", "2m").replace("$instance", ".*")
        f.write(f"      - record: dashboard:query{i}\n        expr: {json.dumps(e)}\n")
names = sorted(set(re.findall(r"\bsluice_[a-z0-9_]+", "\n".join(exprs))))
with open(sys.argv[2] + "/names", "w") as f:
    f.write("\n".join(names) + "\n")
PY
nexprs=$(wc -l <"$WORK/exprs")
check "the dashboard has its queries ($nexprs)" [ "$nexprs" -ge 30 ]
promtool check rules "$WORK/dashboard_rules.yml" >"$WORK/dash.out" 2>&1
code=$?
if [ "$code" = 0 ]; then ok "every dashboard query parses as PromQL"; else
  not_ok "every dashboard query parses as PromQL"; sed 's/^/    /' "$WORK/dash.out" | head -20; fi
for want in sluice_collector_requests_total sluice_collection_requests_total sluice_breaker_state \
    sluice_limiter_rate sluice_limiter_quota_remaining sluice_records_processed_total \
    sluice_backfill_operations_total sluice_outbox_depth sluice_http_request_duration_seconds_bucket; do
  check "the dashboard shows $want" grep -qx "$want" "$WORK/names"
done

# --- a sluice with all of it, scraped ---------------------------------------------------------
start_redis || { finish; exit 1; }
ADMIN_PORT=$(free_port)
cat >"$WORK/sluice.lua" <<LUA
local sluice = require "sluice"
local mock = require("sluice.mock.binance").start({})
-- Bybit's headers say how much quota is left (sluice_limiter_quota_remaining)
local bybit = require("sluice.mock.bybit").start({})
sluice.on_shutdown(function() mock:stop(); bybit:stop() end)
return {
  store = "$WORK/db.sqlite",
  redis = "redis://127.0.0.1:$REDIS_PORT/0",
  sinks = { redis_stream = { stream = "sluice:{table}", maxlen = 100000 } },
  admin = { port = $ADMIN_PORT, insecure_loopback_mutations = true },
  collectors = {
    { use = "binance_klines", base_url = mock.url, interval = 1, limit = 5, candle = "1m" },
    { use = "bybit", base_url = bybit.url, symbols = { "BTC/USDT" }, candle = "1m",
      datasets = { tickers = { interval = 1 } } },
  },
}
LUA
"$SLUICE" run "$WORK/sluice.lua" --control none --log-format json >"$WORK/sluice.out" 2>&1 &
sluice_pid=$!
trap 'kill $sluice_pid 2>/dev/null; wait $sluice_pid 2>/dev/null; stop_redis; rm -rf "$WORK"' EXIT

up() { curl -s --max-time 2 -o /dev/null "http://127.0.0.1:$ADMIN_PORT/health"; }
wait_until 30 up || { not_ok "sluice's admin API is up"; sed 's/^/    /' "$WORK/sluice.out" | tail; finish; exit 1; }
from=$(date -u -d '-3 hours' +%Y-%m-%dT%H:00:00Z)
to=$(date -u -d '-1 hours' +%Y-%m-%dT%H:00:00Z)
curl -s --max-time 10 -H 'Content-Type: application/json' \
  -d "{\"collector\": \"binance_klines\", \"start_date\": \"$from\", \"end_date\": \"$to\"}" \
  "http://127.0.0.1:$ADMIN_PORT/backfill" >"$WORK/backfill.json"
contains "a backfill job started" "$WORK/backfill.json" '"task_id"'

# each name has a sample line: NAME{...} value or NAME value
missing() {
  curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$WORK/metrics"
  local n out=""
  while read -r n; do
    grep -qE "^$n(\{| )" "$WORK/metrics" || out="$out $n"
  done <"$WORK/names"
  echo "$out"
}
all_there() { [ -z "$(missing)" ]; }
wait_until 60 all_there
left=$(missing)
if [ -z "$left" ]; then ok "every metric the dashboard names has samples in /metrics ($(wc -l <"$WORK/names") names)"; else
  not_ok "every metric the dashboard names has samples in /metrics; missing:$left"; fi
# the check can fail: a name sluice does not export is missing
echo sluice_no_such_metric >>"$WORK/names"
check "a name /metrics lacks is reported" [ "$(missing)" = " sluice_no_such_metric" ]
# and every metric an alert names is exported too
grep -oE 'sluice_[a-z0-9_]+[a-z0-9]' "$ROOT/deploy/prometheus/alerts.yml" | sort -u >"$WORK/names"
left=$(missing)
check "every metric alerts.yml names has samples in /metrics${left:+ (missing:$left)}" [ -z "$left" ]

finish
