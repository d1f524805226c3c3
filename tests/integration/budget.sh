#!/usr/bin/env bash
# budget.sh -- a collector that spins on the CPU or waits forever: its runs
# fail at their budget, a healthy collector beside it keeps collecting, the
# admin API answers, SIGTERM still shuts down cleanly, and a second SIGTERM
# exits at once even while Lua is stuck.
. "$(dirname "$0")/common.bash"

pid=""
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$WORK"' EXIT

# rows NAME: data points the collector NAME has collected, from /status.
rows() {
  curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/status" |
    python3 -c "import json, sys; print(json.load(sys.stdin)['collectors']['$1']['data_points_collected'])" 2>/dev/null
}

ADMIN_PORT=$(free_port)
cat >"$WORK/collectors.lua" <<'LUA'
local sluice = require "sluice"
local collector = require "sluice.collector"
local n = 0
local function crunch() local x = 0 while true do x = (x * 3 + 1) % 1000 end end
return {
  spin = collector.define {
    name = "spin", interval = 0.2, limiter = false, breaker = false, retry = false,
    run_budget = { cpu = 0.5 },
    collect = function() while true do end end,
  },
  crunch = collector.define {
    name = "crunch", interval = 0.2, limiter = false, breaker = false, retry = false,
    run_budget = { cpu = 0.3 },
    collect = function() pcall(crunch) end,
  },
  stuck = collector.define {
    name = "stuck", interval = 0.2, limiter = false, breaker = false, retry = false,
    run_budget = { wall = 1 },
    collect = function() sluice.sleep(1e9) end,
  },
  healthy = collector.define {
    name = "healthy", interval = 0.1, limiter = false, breaker = false, retry = false,
    tables = { ticks = { columns = { n = "integer" }, key = { "n" } } },
    collect = function() n = n + 1; return { { n = n } } end,
  },
}
LUA
for c in spin crunch stuck healthy; do
  echo "return require('collectors').$c" >"$WORK/$c.lua"
done
cat >"$WORK/config.lua" <<LUA
package.path = "$WORK/?.lua;" .. package.path
return {
  store = "$WORK/db.sqlite", admin = { port = $ADMIN_PORT },
  collectors = { { file = "spin.lua" }, { file = "crunch.lua" }, { file = "stuck.lua" },
    { file = "healthy.lua" } },
}
LUA
"$SLUICE" run "$WORK/config.lua" --control none --shutdown-timeout 5 --log-format json >"$WORK/run.out" 2>&1 &
pid=$!
check "the spinning run fails at its CPU budget" \
  wait_for_text "$WORK/run.out" '"error":"collector spin: run exceeded its CPU budget of 0.5 s"' 20
check "the crunching run fails at its CPU budget, past its pcall" \
  wait_for_text "$WORK/run.out" '"error":"collector crunch: run exceeded its CPU budget of 0.3 s"' 20
check "the stuck run fails at its wall-clock deadline" \
  wait_for_text "$WORK/run.out" '"error":"collector stuck: run exceeded its wall-clock deadline of 1 s"' 20
first=$(rows healthy)
check "the healthy collector collected ($first rows)" test "${first:-0}" -gt 0
later=$first
# spin and crunch take the loop for 0.8 s of CPU per round and the healthy
# collector runs between rounds: a round lasts longer when the machine is
# loaded (ASan, a busy CI box), so wait for progress, bounded generously
more_rows() { later=$(rows healthy); [ "${later:-0}" -ge $((first + 5)) ]; }
wait_until 40 more_rows
check "and keeps collecting beside them ($first -> $later rows)" test "${later:-0}" -ge $((first + 5))
start=$(date +%s.%N)
health=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$ADMIN_PORT/health")
took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
check "/health answers ($health) within 4 s (took $took s)" \
  awk -v h="$health" -v t="$took" 'BEGIN { exit !(h != "000" && t < 4) }'
kill -TERM "$pid"
code=""
check "SIGTERM ends the process within 5 s" ended_within "$pid" 5
check "gracefully, exit 0 (got $code)" test "$code" = 0
pid=""
contains "the shutdown was logged" "$WORK/run.out" '"msg":"SIGTERM received: shutting down"'

# A second SIGTERM exits at once, even while Lua spins without a budget.
cat >"$WORK/forever.lua" <<'LUA'
local collector = require "sluice.collector"
return collector.define {
  name = "forever", interval = 60, limiter = false, breaker = false, retry = false,
  run_budget = false,
  collect = function() io.stderr:write("spinning\n"); while true do end end,
}
LUA
cat >"$WORK/config2.lua" <<LUA
return { store = "$WORK/db2.sqlite", collectors = { { file = "forever.lua" } } }
LUA
for sig in TERM INT; do
  "$SLUICE" run "$WORK/config2.lua" --control none >"$WORK/forever.out" 2>&1 &
  pid=$!
  check "the budgetless run spins ($sig)" wait_for_text "$WORK/forever.out" spinning 10
  kill -"$sig" "$pid"
  # nothing to wait for: the spinning process cannot say it was told (the
  # loop that would log it is what spins), so look after a while
  sleep 0.2
  check "one SIG$sig does not stop a spinning run" kill -0 "$pid"
  kill -"$sig" "$pid"
  code=""
  check "a second SIG$sig exits within 2 s" ended_within "$pid" 2
  want=$((128 + $(kill -l "$sig")))
  check "with $want (got $code)" test "$code" = "$want"
  contains "saying why" "$WORK/forever.out" "sluice: second SIG$sig: exiting now"
  [ -n "$code" ] || kill -9 "$pid" 2>/dev/null
  pid=""
done

finish
