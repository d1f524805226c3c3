#!/usr/bin/env bash
# alerts.sh -- alerts from a live `sluice run` to a receiver that is another
# sluice process: a breaker opened from the admin API is one delivery; the
# group still open at SIGTERM goes out before the process exits 0; the
# webhook's secret path is never in the log or /status.
. "$(dirname "$0")/common.bash"

ADMIN_PORT=$(free_port)
RECV_PORT=$(free_port)
HOOK="/services/T0/B0/integrationS3cret"
cat >"$WORK/recv.lua" <<LUA
local srv = assert(require("sluice.server").listen({ port = $RECV_PORT }))
srv:route("POST", "$HOOK", function(req)
  local f = assert(io.open("$WORK/received", "a"))
  f:write(req.body, "\n")
  f:close()
  return 200, "ok"
end)
LUA
"$SLUICE" run "$WORK/recv.lua" --control none >"$WORK/recv.out" 2>&1 &
recv_pid=$!
cat >"$WORK/feed.lua" <<'LUA'
local collector = require "sluice.collector"
return collector.define({
  name = "feed", interval = 3600, limiter = false, retry = false,
  collect = function() return {} end,
})
LUA
config() {
  cat >"$WORK/sluice.lua" <<LUA
return {
  store = "$WORK/db.sqlite", shutdown_timeout = 30,
  admin = { port = $ADMIN_PORT, insecure_loopback_mutations = true },
  collectors = { { file = "feed.lua", name = "feed" } },
  alerts = { webhooks = { { url = "http://127.0.0.1:$RECV_PORT$HOOK", retry = { 0.05 } } },
    group_window = $1, check_interval = 0.1 },
}
LUA
}
config 0
"$SLUICE" run "$WORK/sluice.lua" --control none --log-format json >"$WORK/sluice.out" 2>&1 &
sluice_pid=$!
trap 'kill $sluice_pid $recv_pid 2>/dev/null; wait $sluice_pid $recv_pid 2>/dev/null; rm -rf "$WORK"' EXIT

post() { curl -s --max-time 5 -X POST -H 'Content-Type: application/json' "http://127.0.0.1:$ADMIN_PORT$1"; }
up() { curl -s --max-time 1 -o /dev/null "http://127.0.0.1:$ADMIN_PORT/health"; }
check "sluice answers" wait_until 20 up

events() { cat "$WORK/received" 2>/dev/null | grep -o "\"event\":\"$1\"" | wc -l; }
# events N TYPE: N events of TYPE received so far
seen() { [ "$(events "$2")" = "$1" ]; }
post /breakers/feed/open >/dev/null
check "the breaker opening is delivered" wait_until 20 seen 1 breaker_opened
# (the collector's health turns circuit_open, and back: events of their own)
check "the collector's health turning circuit_open too" wait_until 20 seen 1 collector_health_changed
post /breakers/feed/close >/dev/null
check "closing it is delivered" wait_until 20 seen 1 breaker_closed
check "the collector's health back to healthy" wait_until 20 seen 2 collector_health_changed
curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/status" >"$WORK/status.json"
check "one breaker_opened, one breaker_closed ($(events breaker_opened), $(events breaker_closed))" \
  test "$(events breaker_opened) $(events breaker_closed)" = "1 1"
contains "/status shows the webhook's deliveries" "$WORK/status.json" '"name":"alerts:1"'
contains "/status shows the URL without its path" "$WORK/status.json" "\"url\":\"http:\\/\\/127.0.0.1:$RECV_PORT\\/<redacted>\""

# a group window of a minute: what is gathered at SIGTERM goes out at shutdown
config 60
kill -HUP $sluice_pid
check "the reload applied" wait_until 20 sh -c "grep -q 'configuration reloaded' '$WORK/sluice.out'"
post /breakers/feed/open >/dev/null
kill -TERM $sluice_pid
if ended_within $sluice_pid 8; then
  check "sluice exits 0 at SIGTERM (exit $code)" test "$code" = 0
else
  not_ok "sluice exits within 8 s of SIGTERM (shutdown_timeout 30)"
fi
check "the gathered event was delivered at shutdown ($(events breaker_opened) breaker_opened)" \
  test "$(events breaker_opened)" = 2
check "in the last delivery" sh -c "tail -n 1 '$WORK/received' | grep -q '\"event\":\"breaker_opened\"'"
check "the webhook's path is in no log line" sh -c "! grep -q integrationS3cret '$WORK/sluice.out'"
check "nor in /status" sh -c "! grep -q integrationS3cret '$WORK/status.json'"

finish
