#!/usr/bin/env bash
# reload.sh -- reloads and manual runs of a live `sluice run` from outside:
# a burst of SIGHUPs starts no extra run, a SIGHUP honours a flip of
# `enabled` (shown in /status), 30 concurrent POST /collect run the
# collector once (the others join that run), and a refused reload is
# logged whoever asked for it (SIGHUP, POST /reload, the REPL, which exits 1).
. "$(dirname "$0")/common.bash"

ADMIN_PORT=$(free_port)
cat >"$WORK/feed.lua" <<LUA
local sluice = require "sluice"
local collector = require "sluice.collector"
return collector.define({
  name = "feed", interval = 3600, limiter = false, retry = false,
  collect = function(self)
    local f = assert(io.open("$WORK/runs", "a"))
    f:write(self.name, "\n")
    f:close()
    -- held while the test's hold file exists
    while io.open("$WORK/hold") do sluice.sleep(0.02) end
    return {}
  end,
})
LUA
config() {
  cat >"$WORK/sluice.lua" <<LUA
return {
  store = "$WORK/db.sqlite",
  admin = { port = $ADMIN_PORT, insecure_loopback_mutations = true },
  collectors = { { file = "feed.lua", name = "a" }, { file = "feed.lua", name = "b", enabled = $1 } },
}
LUA
}
config true
: >"$WORK/runs"
touch "$WORK/hold"
"$SLUICE" run "$WORK/sluice.lua" --control "$WORK/ctl.sock" --log-format json >"$WORK/sluice.out" 2>&1 &
sluice_pid=$!
trap 'kill $sluice_pid 2>/dev/null; wait $sluice_pid 2>/dev/null; rm -rf "$WORK"' EXIT

runs() { grep -c "^$1\$" "$WORK/runs"; }
reloads() { grep -c '"configuration reloaded"' "$WORK/sluice.out"; }

check "both collectors run once at start-up" wait_until 20 sh -c "[ \$(grep -c . '$WORK/runs') -eq 2 ]"

# 50 SIGHUPs while the first runs are still going (held)
for _ in $(seq 1 50); do kill -HUP $sluice_pid; done
check "the SIGHUPs reload the configuration" wait_until 20 sh -c "[ \$(grep -c '\"configuration reloaded\"' '$WORK/sluice.out') -ge 1 ]"
# no event marks the last reload of a burst (signals coalesce): wait until
# the count holds still for a quarter of a second
settled() { local n; n=$(reloads); sleep 0.25; [ "$(reloads)" = "$n" ]; }
wait_until 5 settled
check "no SIGHUP started a run ($(reloads) reloads; a: $(runs a), b: $(runs b) runs)" test "$(runs a) $(runs b)" = "1 1"
rm -f "$WORK/hold"

# disable b by SIGHUP
config false
before=$(reloads)
kill -HUP $sluice_pid
check "the flip of enabled is reloaded" wait_until 20 sh -c "[ \$(grep -c '\"configuration reloaded\"' '$WORK/sluice.out') -gt $before ]"
curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/status" >"$WORK/status.json"
contains "/status shows b disabled" "$WORK/status.json" '"status":"disabled"'
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST -H 'Content-Type: application/json' -d '{"collector":"b"}' \
  "http://127.0.0.1:$ADMIN_PORT/collect")
check "POST /collect for the disabled b answers 409 (got $code)" test "$code" = 409

# 30 concurrent POST /collect for a: one run, the others join it
touch "$WORK/hold"
for i in $(seq 1 30); do
  curl -s --max-time 20 -X POST -H 'Content-Type: application/json' -d '{"collector":"a"}' "http://127.0.0.1:$ADMIN_PORT/collect" \
    >"$WORK/collect.$i" &
done
waiters() {
  curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/status" | grep -q '"run_waiters":29'
}
check "29 requests wait for the run in flight" wait_until 20 waiters
rm -f "$WORK/hold"
wait_collects() { [ "$(cat "$WORK"/collect.* | grep -o '"status":"ok"' | wc -l)" = 30 ]; }
check "all 30 POST /collect answer ok" wait_until 20 wait_collects
joined=$(cat "$WORK"/collect.* | grep -o '"joined":true' | wc -l)
check "one ran and 29 joined it (joined: $joined, a ran $(runs a) times)" test "$joined $(runs a)" = "29 2"
check "the process is still up" kill -0 $sluice_pid

# a broken configuration: every way of asking refuses, says why, and logs it
refused() { grep -c "\"msg\":\"reload refused\".*\"by\":\"$1\"" "$WORK/sluice.out"; }
echo 'return { store = "'"$WORK"'/db.sqlite", collectors = { { file = "feed.lua", interval = "soon" } } }' \
  >"$WORK/sluice.lua"
kill -HUP $sluice_pid
check "a refused SIGHUP reload is logged" wait_until 20 sh -c "[ \$(grep -c '\"by\":\"SIGHUP\"' '$WORK/sluice.out') -ge 1 ]"
code=$(curl -s -o "$WORK/reload.json" -w '%{http_code}' --max-time 5 -X POST -H 'Content-Type: application/json' \
  "http://127.0.0.1:$ADMIN_PORT/reload")
check "POST /reload of a broken configuration answers 422 (got $code)" test "$code" = 422
contains "and says why" "$WORK/reload.json" "option 'interval' must be a finite number > 0, got string"
check "a refused POST /reload is logged ($(refused 'POST /reload'))" wait_until 20 sh -c "[ \$(grep -c '\"by\":\"POST /reload\"' '$WORK/sluice.out') -ge 1 ]"
expect_exit "sluice repl -e 'reload()' exits 1 when refused" 1 "$SLUICE" repl "$WORK/ctl.sock" -e 'reload()'
contains "and prints why" "$WORK/out" "option 'interval' must be a finite number > 0, got string"
check "a refused REPL reload is logged ($(refused repl))" wait_until 20 sh -c "[ \$(grep -c '\"by\":\"repl\"' '$WORK/sluice.out') -ge 1 ]"
check "the running collectors are untouched" kill -0 $sluice_pid

finish
