#!/usr/bin/env bash
# repl.sh -- the control socket and `sluice repl`: evaluation, helpers,
# multi-line input, errors, yielding, detaching, socket ownership, run -i.
. "$(dirname "$0")/common.bash"

SOCK="$WORK/ctl.sock"
cat >"$WORK/svc.lua" <<'LUA'
local sluice = require "sluice"
io.stdout:setvbuf("line")
-- the registries are weak: the timer keeps the breaker and limiter alive
local cb = require("sluice.breaker").new{ name = "api" }
local lim = require("sluice.limiter").new{ name = "quota", rate = 5 }
sluice.every(0.2, function() return cb, lim end)
print("ready")
LUA

"$SLUICE" run "$WORK/svc.lua" --control "$SOCK" --log-format json >"$WORK/svc.out" 2>&1 &
pid=$!
check "service started" wait_for_text "$WORK/svc.out" ready
check "socket mode is 0600 (got $(stat -c %a "$SOCK" 2>/dev/null))" test "$(stat -c %a "$SOCK" 2>/dev/null)" = 600

repl() { "$SLUICE" repl "$SOCK" "$@"; }

expect_exit "-e '1+1' exits 0" 0 repl -e '1+1'
check "-e '1+1' prints 2" test "$(cat "$WORK/out")" = "2"
expect_exit "breakers()" 0 repl -e 'breakers()'
contains "breakers() shows api closed" "$WORK/out" 'api = { failures = 0, health_score = 1, state = "closed" }'
expect_exit "trip(\"api\")" 0 repl -e 'trip("api")'
contains "trip says the breaker is open" "$WORK/out" "breaker 'api' is open"
expect_exit "breakers() after trip" 0 repl -e 'breakers().api.state'
check "breakers() shows api open" test "$(cat "$WORK/out")" = '"open"'
expect_exit "breakers() has the next attempt" 0 repl -e 'breakers().api.next_attempt:match("^%d%d%d%d%-%d%d%-%d%dT") ~= nil'
check "next attempt is an ISO time" test "$(cat "$WORK/out")" = true
expect_exit "reset(\"api\")" 0 repl -e 'reset("api")'
contains "reset closes it" "$WORK/out" "breaker 'api' is closed"
expect_exit "limiters()" 0 repl -e 'limiters()'
contains "limiters() shows quota" "$WORK/out" 'quota = { rate = 5, total_requests = 0, violations = 0, waiting = 0 }'
expect_exit "collectors() without a configuration" 0 repl -e 'collectors()'
contains "collectors() says there is none" "$WORK/out" "no configuration is running"
expect_exit "help()" 0 repl -e 'help()'
contains "help() lists trip" "$WORK/out" "trip(name)"

expect_exit "an error exits 1" 1 repl -e 'error("boom", 0)'
check "the error is printed" test "$(cat "$WORK/out")" = "boom"
expect_exit "a syntax error exits 1" 1 repl -e 'x ='
contains "the syntax error is printed" "$WORK/out" "repl:1:"
expect_exit "trip of an unknown breaker exits 1" 1 repl -e 'trip("nope")'
contains "it names the breaker" "$WORK/out" "no breaker named 'nope'"
expect_exit "a yielding expression" 0 repl -e 'require("sluice").sleep(0.1) and "slept"'
check "it returns after the sleep" test "$(cat "$WORK/out")" = '"slept"'
expect_exit "print goes to the client" 0 repl -e 'print("to the client")'
check "printed output arrives" test "$(cat "$WORK/out")" = "to the client"
check "and not on the server's stdout" sh -c "! grep -q 'to the client' '$WORK/svc.out'"

# The interactive client without a terminal: plain lines, no prompts.
printf 'for i = 1, 3 do\nprint(i)\nend\nanswer = 42\n\nanswer / 2\n{ b = { 1, "x" }, a = true }\nnosuch()\n"still here"\n' |
  "$SLUICE" repl "$SOCK" >"$WORK/multi.out" 2>&1
code=$?
check "interactive client exits 0 at end of input (got $code)" test "$code" -eq 0
cat >"$WORK/multi.want" <<'OUT'
1
2
3
21
{
  a = true,
  b = { 1, "x" }
}
repl:1: attempt to call global 'nosuch' (a nil value)
"still here"
OUT
if diff -u "$WORK/multi.want" "$WORK/multi.out" >"$WORK/diff"; then
  ok "multi-line input, globals, errors and results"
else
  not_ok "multi-line input, globals, errors and results"; sed 's/^/    /' "$WORK/diff"
fi
printf 'for i = 1, 3 do\n' | "$SLUICE" repl "$SOCK" >"$WORK/out" 2>&1
check "input ending inside a chunk exits 1" test $? -eq 1
contains "and says so" "$WORK/out" "unfinished chunk"

# Several clients at once; one that leaves mid-evaluation harms nothing.
pids=()
for i in 1 2 3; do
  repl -e "require('sluice').sleep(0.2) and $i" >"$WORK/par$i.out" 2>&1 &
  pids+=($!)
done
timeout 0.1 "$SLUICE" repl "$SOCK" -e 'require("sluice").sleep(0.5) and "dropped"' >/dev/null 2>&1
wait "${pids[@]}"
wait_jobs_ok=1
for i in 1 2 3; do test "$(cat "$WORK/par$i.out")" = "$i" || wait_jobs_ok=0; done
check "three clients at once each get their own answer" test "$wait_jobs_ok" -eq 1
sleep 0.6 # past the dropped evaluation's 0.5 s: it answers a client that has gone
check "the process survives a client leaving mid-evaluation" kill -0 "$pid"
expect_exit "and still answers" 0 repl -e '"alive"'

check "detaching left the process running" kill -0 "$pid"

expect_exit "a second run on the same socket is refused" 2 "$SLUICE" run "$WORK/svc.lua" --control "$SOCK"
contains "with a clear message" "$WORK/out" "control socket $SOCK is in use by another process"
echo "not a socket" >"$WORK/plain"
expect_exit "a path that is not a socket is refused" 2 "$SLUICE" run "$WORK/svc.lua" --control "$WORK/plain"
contains "saying so" "$WORK/out" "exists and is not a socket"
expect_exit "repl without a process exits 2" 2 "$SLUICE" repl "$WORK/none.sock" -e 1
check "with one line" test "$(wc -l <"$WORK/out")" -eq 1

kill -TERM "$pid"
wait "$pid"
check "SIGTERM still exits 0" test $? -eq 0
check "the socket file is removed at exit" test ! -e "$SOCK"

# A stale socket (nobody listening) is reused; a script that ends exits even
# though its control socket is open.
"$SLUICE" run "$WORK/svc.lua" --control "$SOCK" >"$WORK/killed.out" 2>&1 &
killed=$!
wait_for_text "$WORK/killed.out" ready
kill -9 "$killed"
wait "$killed" 2>/dev/null
check "a stale socket file is left behind by kill -9" test -S "$SOCK"
cat >"$WORK/short.lua" <<'LUA'
print("short done")
LUA
expect_exit "a stale socket is reused" 0 timeout 10 "$SLUICE" run "$WORK/short.lua" --control "$SOCK"
contains "the script ran" "$WORK/out" "short done"
check "and its socket removed" test ! -e "$SOCK"
expect_exit "--control none runs without a socket" 0 timeout 10 "$SLUICE" run "$WORK/short.lua" --control none

# run -i without a terminal: lines from stdin, evaluated in-process; end of
# input shuts down gracefully.
cat >"$WORK/inproc.lua" <<'LUA'
KEEP = require("sluice.breaker").new{ name = "local" }
LUA
printf 'breakers()\nfor i = 1, 2 do\nprint(i * 10)\nend\nrequire("sluice").sleep(0.05) and "ok"\n' |
  timeout 10 "$SLUICE" run "$WORK/inproc.lua" -i --control none --log-level none >"$WORK/i.out" 2>&1
code=$?
check "run -i exits 0 at end of input (got $code)" test "$code" -eq 0
cat >"$WORK/i.want" <<'OUT'
{
  ["local"] = { failures = 0, health_score = 1, state = "closed" }
}
10
20
"ok"
OUT
if diff -u "$WORK/i.want" "$WORK/i.out" >"$WORK/diff"; then ok "run -i evaluates in-process"; else
  not_ok "run -i evaluates in-process"; sed 's/^/    /' "$WORK/diff"; fi

finish
