#!/usr/bin/env bash
# fd_exhaustion.sh -- out of file descriptors, a server backs off accepting
# instead of spinning on accept() and flooding the log, and answers again
# once descriptors free up. Needs util-linux prlimit and python3.
. "$(dirname "$0")/common.bash"

pid=""
client=""
trap 'kill -9 $pid $client 2>/dev/null; rm -rf "$WORK"' EXIT

cat >"$WORK/server.lua" <<'LUA'
local server = require "sluice.server"
io.stdout:setvbuf("line")
local srv = assert(server.listen({ host = "127.0.0.1", port = 0 }))
srv:route("GET", "/ping", function() return 200, "pong" end)
print("port " .. srv.port)
LUA
prlimit --nofile=40 -- "$SLUICE" run "$WORK/server.lua" --control none --log-format json \
  >"$WORK/run.out" 2>"$WORK/run.err" &
pid=$!
port=""
port_known() { port=$(sed -n 's/^port //p' "$WORK/run.out"); [ -n "$port" ]; }
check "the server started under a 40-descriptor limit" wait_until 5 port_known
check "and answers" test "$(curl -s --max-time 5 "http://127.0.0.1:$port/ping")" = pong

# 60 idle connections, held until $WORK/release exists.
cat >"$WORK/client.py" <<'PY'
import os, socket, sys, time
port, work = int(sys.argv[1]), sys.argv[2]
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
open(work + "/held", "w").close()
deadline = time.time() + 60
while not os.path.exists(work + "/release") and time.time() < deadline:
    time.sleep(0.05)
for c in conns:
    c.close()
PY
python3 "$WORK/client.py" "$port" "$WORK" &
client=$!
check "60 connections are open" wait_until 5 test -e "$WORK/held"

# cpu_ticks: user + system time of the server, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
check "the episode begins" \
  wait_for_text "$WORK/run.out" '"msg":"cannot accept connections; pausing accepts until descriptors free up"'
t0=$(cpu_ticks)
sleep 2 # the CPU time it uses over 2 s is what is measured
t1=$(cpu_ticks)
hz=$(getconf CLK_TCK)
used=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }')
check "out of descriptors, the server uses little CPU ($used s in 2 s)" \
  awk -v u="$used" 'BEGIN { exit !(u < 0.3) }'
lines=$(cat "$WORK/run.out" "$WORK/run.err" | wc -l)
check "and writes a bounded log ($lines lines)" test "$lines" -le 5
check "one warning for the episode" \
  test "$(grep -c '"msg":"cannot accept connections; pausing accepts until descriptors free up"' "$WORK/run.out")" = 1
contains "naming the listener and the error" "$WORK/run.out" \
  "\"listener\":\"server 127.0.0.1:$port\",\"error\":\"Too many open files\""

touch "$WORK/release"
wait "$client"
client=""
answer=""
pongs() { answer=$(curl -s --max-time 2 "http://127.0.0.1:$port/ping"); [ "$answer" = pong ]; }
check "with the connections closed, the server answers again" wait_until 10 pongs
wait_for_text "$WORK/run.out" '"accepting connections again"' 6
contains "the recovery is logged with the errors kept quiet" "$WORK/run.out" \
  '"msg":"accepting connections again","listener":"server 127.0.0.1:'"$port"'","errors_suppressed":'
kill -TERM "$pid"
wait "$pid"
code=$?
pid=""
check "and it shuts down cleanly (got $code)" test "$code" = 0

finish
