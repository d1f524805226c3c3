#!/usr/bin/env bash
# log_stall.sh -- a sluice whose stdout is a pipe nobody reads keeps its
# loop running: logging fills the pipe, then its bounded queue, then drops
# lines (counted in sluice_log_dropped_total) while an HTTP endpoint still
# answers; once the reader drains the pipe, logging resumes.
. "$(dirname "$0")/common.bash"

cat >"$WORK/stall.lua" <<'LUA'
local server = require "sluice.server"
local log = require "sluice.log"
local metrics = require "sluice.metrics"
log.level("info")
log.format("json")
local srv = assert(server.listen({ port = 0 }))
srv:route("GET", "/ping", function() return 200, "pong", { ["content-type"] = "text/plain" } end)
srv:route("GET", "/metrics", metrics.handler)
-- /log?n=N&tag=T logs N lines of about 1 KiB
srv:route("GET", "/log", function(req)
  local pad = string.rep("x", 1000)
  for i = 1, tonumber(req.query.n) do log.info(req.query.tag, { i = i, pad = pad }) end
  return 200, "logged", { ["content-type"] = "text/plain" }
end)
require("sluice").on_shutdown(function() srv:close() end)
local f = assert(io.open(os.getenv("PORT_FILE"), "w"))
f:write(srv.port, "\n")
f:close()
LUA

mkfifo "$WORK/fifo"
# fd 3 holds the FIFO open for reading (and writing, so the open does not
# block) but nothing reads it until the drain below.
exec 3<>"$WORK/fifo"
PORT_FILE="$WORK/port" "$SLUICE" run "$WORK/stall.lua" --control none >"$WORK/fifo" 2>"$WORK/err" &
PID=$!
trap 'kill "$PID" 2>/dev/null; [ -n "${CAT:-}" ] && kill "$CAT" 2>/dev/null; rm -rf "$WORK"' EXIT
wait_until 5 test -s "$WORK/port"
PORT=$(cat "$WORK/port")
URL="http://127.0.0.1:$PORT"

dropped() { curl -s --max-time 5 "$URL/metrics" | awk '$1 == "sluice_log_dropped_total" { print $2 }'; }

check "no line dropped before the stall" [ "$(dropped)" = "0" ]
# 3000 lines of ~1 KiB: more than the pipe (64 KiB) and the queue (1 MiB) hold
check "logging into a stalled stdout returns" \
  curl -s --max-time 10 -o "$WORK/log1" "$URL/log?n=3000&tag=stalled"
contains "the handler finished" "$WORK/log1" "logged"
check "the loop still answers /ping" bash -c "[ \"\$(curl -s --max-time 5 '$URL/ping')\" = pong ]"
D1=$(dropped)
check "dropped lines are counted ($D1)" [ "${D1:-0}" -gt 0 ] 2>/dev/null
check "fewer lines dropped than logged ($D1 < 3000)" [ "${D1:-3000}" -lt 3000 ]
curl -s --max-time 5 "$URL/metrics" | grep -q '^sluice_log_dropped_bytes_total [1-9]'
check "dropped bytes are counted" [ $? -eq 0 ]

# the reader comes back: what was queued arrives, whole lines only, and
# new lines are written again
cat <&3 >"$WORK/drained" &
CAT=$!
# what was queued is written first: wait (bounded) until it has all arrived,
# or the next line could still meet a full queue
queued_arrived() { [ "$(grep -c '"msg":"stalled"' "$WORK/drained")" -ge $((3000 - ${D1:-0})) ]; }
wait_until 10 queued_arrived
check "logging after the drain" curl -s --max-time 10 -o /dev/null "$URL/log?n=1&tag=resumed"
wait_for_text "$WORK/drained" '"msg":"resumed"'
contains "a line logged after the drain arrives" "$WORK/drained" '"msg":"resumed"'
D2=$(dropped)
check "nothing more dropped once drained ($D1 = $D2)" [ "$D1" = "$D2" ]
STALLED=$(grep -c '"msg":"stalled"' "$WORK/drained")
check "kept + dropped = logged ($STALLED + $D1 = 3000)" [ $((STALLED + D1)) -eq 3000 ]
BAD=$(grep -vc '^{"ts":.*}$' "$WORK/drained")
check "no torn line ($BAD)" [ "$BAD" -eq 0 ]

kill -TERM "$PID"
wait "$PID"; code=$?; [ "$code" -eq 0 ] || sed "s/^/    /" "$WORK/err"; (exit $code)
check "SIGTERM: sluice exits 0" [ $? -eq 0 ]
wait_for_text "$WORK/drained" '"msg":"SIGTERM received'
contains "lines logged at shutdown are flushed" "$WORK/drained" '"msg":"SIGTERM received: shutting down"'
finish
