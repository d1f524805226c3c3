#!/usr/bin/env bash
# shutdown.sh -- SIGTERM/SIGINT: graceful shutdown within the deadline.
. "$(dirname "$0")/common.bash"

cat >"$WORK/sleepers.lua" <<'LUA'
local sluice = require "sluice"
io.stdout:setvbuf("line")
sluice.on_shutdown(function() print("handler: first registered") end)
sluice.on_shutdown(function()
  sluice.sleep(0.05) -- handlers may wait
  print("handler: second registered")
end)
sluice.after(3600, function(premature) print("after premature:", premature) end)
sluice.every(3600, function(premature) print("every premature:", premature) end)
for i = 1, 3 do
  sluice.spawn(function()
    local ok, why = sluice.sleep(3600)
    print("sleeper woke:", ok, why)
  end)
end
sluice.spawn(function() print("parked woke:", sluice.park()) end)
-- a task that ignores shutdown: the deadline ends it
sluice.spawn(function()
  while true do sluice.sleep(0.2) end
end)
print("ready")
LUA

wait_ready() { wait_for_text "$1" ready; }

"$SLUICE" run "$WORK/sleepers.lua" --shutdown-timeout 1 --log-format json >"$WORK/term.out" 2>&1 &
pid=$!
check "script started" wait_ready "$WORK/term.out"
start=$(date +%s.%N)
kill -TERM "$pid"
wait "$pid"
code=$?
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
check "SIGTERM exits 0 (got $code)" test "$code" -eq 0
check "exits within the 1 s deadline plus slack (took $elapsed s)" awk -v e="$elapsed" 'BEGIN { exit !(e < 3) }'
contains "on_shutdown handlers ran" "$WORK/term.out" "handler: second registered"
check "handlers run newest first" test "$(grep -n handler: "$WORK/term.out" | head -1 | grep -c second)" -eq 1
contains "after timer fired prematurely" "$WORK/term.out" "after premature:	true"
contains "every timer fired prematurely" "$WORK/term.out" "every premature:	true"
check "all sleepers woke early" test "$(grep -c 'sleeper woke:	false	shutdown' "$WORK/term.out")" -eq 3
contains "a parked task woke early too" "$WORK/term.out" "parked woke:	false	shutdown"
contains "shutdown was logged" "$WORK/term.out" '"msg":"SIGTERM received: shutting down"'
contains "the deadline killed the stubborn task" "$WORK/term.out" '"msg":"shutdown deadline passed; killing the remaining tasks","tasks":1'

# The deadline ends the process even while a server listens and the
# handler that would close it never returns (it waits for work in flight):
# the loop is not run again after the deadline (it waited for ever before).
cat >"$WORK/listening.lua" <<'LUA'
local sluice = require "sluice"
local server = require "sluice.server"
io.stdout:setvbuf("line")
local srv = assert(server.listen{ host = "127.0.0.1", port = 0 })
srv:route("GET", "/", function() return 200, "ok" end)
sluice.on_shutdown(function()
  while true do sluice.sleep(0.05) end -- never gets to srv:close()
end)
print("ready")
LUA
"$SLUICE" run "$WORK/listening.lua" --shutdown-timeout 0.5 --log-format json >"$WORK/listen.out" 2>&1 &
pid=$!
check "listening script started" wait_ready "$WORK/listen.out"
kill -TERM "$pid"
check "a listening server does not outlive the deadline" ended_within "$pid" 5
gone "$pid" || { kill -9 "$pid"; wait "$pid"; }
contains "the deadline killed the handler" "$WORK/listen.out" '"msg":"shutdown deadline passed; killing the remaining tasks"'

# A second SIGINT exits at once.
cat >"$WORK/stubborn.lua" <<'LUA'
local sluice = require "sluice"
io.stdout:setvbuf("line")
sluice.spawn(function() while true do sluice.sleep(0.1) end end)
print("ready")
LUA
"$SLUICE" run "$WORK/stubborn.lua" --shutdown-timeout 60 >"$WORK/int.out" 2>&1 &
pid=$!
check "second script started" wait_ready "$WORK/int.out"
kill -INT "$pid"
check "the first SIGINT begins the shutdown" wait_for_text "$WORK/int.out" '"SIGINT received: shutting down"'
kill -INT "$pid"
wait "$pid"
code=$?
check "second SIGINT exits at once with 130 (got $code)" test "$code" -eq 130

# SIGHUP runs the on_reload handlers and nothing else.
cat >"$WORK/reload.lua" <<'LUA'
local sluice = require "sluice"
io.stdout:setvbuf("line")
sluice.on_reload(function() print("reloaded"); sluice.shutdown() end)
sluice.spawn(function() sluice.sleep(30) end)
print("ready")
LUA
"$SLUICE" run "$WORK/reload.lua" >"$WORK/hup.out" 2>&1 &
pid=$!
check "reload script started" wait_ready "$WORK/hup.out"
kill -HUP "$pid"
wait "$pid"
code=$?
check "SIGHUP ran the reload handler, which shut down cleanly (got $code)" test "$code" -eq 0
contains "on_reload handler ran" "$WORK/hup.out" "reloaded"

# Natural end: the process exits when every task and timer is done, and
# on_shutdown handlers still run.
cat >"$WORK/natural.lua" <<'LUA'
local sluice = require "sluice"
sluice.on_shutdown(function() print("natural handler") end)
sluice.after(0.05, function(p) print("after fired", p) end)
sluice.spawn(function() sluice.sleep(0.1); print("task done") end)
LUA
expect_exit "natural end exits 0" 0 timeout 10 "$SLUICE" run "$WORK/natural.lua"
contains "timer ran before exit" "$WORK/out" "after fired	false"
contains "task ran before exit" "$WORK/out" "task done"
contains "handler ran at natural end" "$WORK/out" "natural handler"

# A configuration stopped while a collection is in flight: the run
# finishes and its rows are stored before the store closes.
cat >"$WORK/slow.lua" <<'LUA'
local sluice = require "sluice"
local collector = require "sluice.collector"
return collector.define {
  name = "slow", interval = 3600, limiter = false, breaker = false,
  tables = { ticks = { columns = { n = "integer" }, key = { "n" } } },
  collect = function()
    print("collecting")
    io.stdout:flush()
    -- busy for 0.5 s, yielding (a sleep would be woken by the shutdown)
    local t0 = sluice.now()
    while sluice.now() - t0 < 0.5 do sluice.yield() end
    return { ticks = { { n = 1 }, { n = 2 } } }
  end,
}
LUA
cat >"$WORK/slow_config.lua" <<LUA
return { store = "$WORK/slow.db", collectors = { { file = "slow.lua" } } }
LUA
"$SLUICE" run "$WORK/slow_config.lua" --control none --shutdown-timeout 5 >"$WORK/slow.out" 2>&1 &
pid=$!
check "the collection is under way" wait_for_text "$WORK/slow.out" collecting
kill -TERM "$pid"
wait "$pid"
code=$?
check "stopped mid-collection, it exits 0 (got $code)" test "$code" -eq 0
cat >"$WORK/count.lua" <<LUA
local db = assert(require("sluice.store").open("$WORK/slow.db"))
print("rows", db:query("SELECT COUNT(*) AS n FROM ticks")[1].n)
LUA
"$SLUICE" run "$WORK/count.lua" --control none >"$WORK/count.out" 2>&1
contains "the run in flight stored its rows before the store closed" "$WORK/count.out" "rows	2"

finish
