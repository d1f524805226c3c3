#!/usr/bin/env bash
# secrets.sh -- a configuration full of distinct secrets (a Redis password on
# a real redis-server with requirepass, header values, an auth value,
# collector.env values, the admin token, a URL password in a log line and an
# error carrying a Redis URL) runs; no admin response (with and without the
# token), no log line and no REPL view shows any of them.
. "$(dirname "$0")/common.bash"

REDIS_PW="rpw-7c1e9a-redis"
start_redis "$REDIS_PW" || { finish; exit 1; }
ADMIN_PORT=$(free_port)
trap 'kill "$sluice_pid" 2>/dev/null; stop_redis; wait 2>/dev/null; rm -rf "$WORK"' EXIT

export SLUICE_IT_ADMIN_TOKEN="adm-4f2b8d-token"
export SLUICE_IT_AUTH="auth-91ce3a-value"
export SLUICE_IT_ENV="env-5d7f10-value"
export SLUICE_IT_URL_PW="url-2b6e4c-pass"
export SLUICE_IT_REDIS_PW="$REDIS_PW"
HDR_SECRET="hdr-83a0f5-key"
COOKIE_SECRET="cookie-6a9d21-session"
SECRETS=("$REDIS_PW" "$SLUICE_IT_ADMIN_TOKEN" "$SLUICE_IT_AUTH" "$SLUICE_IT_ENV" "$SLUICE_IT_URL_PW"
  "$HDR_SECRET" "$COOKIE_SECRET")

cat >"$WORK/leaky.lua" <<'LUA'
local collector = require "sluice.collector"
return collector.define({
  name = "leaky", interval = 1, limiter = false, retry = { max_attempts = 1 },
  options = { api_token = collector.env("SLUICE_IT_NONE", "") },
  collect = function(self)
    self.log.warning("fetching https://reader:" .. os.getenv("SLUICE_IT_URL_PW") .. "@127.0.0.1:1/feed",
      { token = collector.reveal(self.options.api_token) })
    error("redis://:" .. os.getenv("SLUICE_IT_REDIS_PW") .. "@127.0.0.1:1/0: connection refused")
  end,
})
LUA
cat >"$WORK/sluice.lua" <<LUA
local sluice = require "sluice"
local collector = require "sluice.collector"
local mock = require("sluice.mock.binance").start({})
sluice.on_shutdown(function() mock:stop() end)
return {
  store = "$WORK/db.sqlite",
  redis = "redis://:$REDIS_PW@127.0.0.1:$REDIS_PORT/0",
  admin = { port = $ADMIN_PORT, token = collector.env("SLUICE_IT_ADMIN_TOKEN") },
  collectors = {
    { use = "binance_klines", base_url = mock.url, interval = 1, limit = 5,
      headers = { ["X-Api-Key"] = "$HDR_SECRET", Cookie = "$COOKIE_SECRET", Accept = "application/json" },
      auth = { header = "X-MBX-APIKEY", value = collector.env("SLUICE_IT_AUTH") } },
    { file = "leaky.lua", api_token = collector.env("SLUICE_IT_ENV") },
  },
}
LUA
"$SLUICE" run "$WORK/sluice.lua" --control "$WORK/ctl.sock" --log-format json >"$WORK/sluice.out" 2>&1 &
sluice_pid=$!

URL="http://127.0.0.1:$ADMIN_PORT"
AUTH="Authorization: Bearer $SLUICE_IT_ADMIN_TOKEN"
# ready: klines collected and leaky failed at least once each
both_ran() {
  local body
  body=$(curl -s --max-time 2 -H "$AUTH" "$URL/status")
  case "$body" in *'"last_error":"'*'leaky.lua:8: redis:'*)
    case "$body" in *'"data_points_collected":'[1-9]*) return 0 ;; esac ;;
  esac
  return 1
}
check "both collectors ran (klines collected, leaky failed)" wait_until 10 both_ran
check "the shared state is on the password-protected Redis" \
  bash -c "[ \"\$(REDISCLI_AUTH='$REDIS_PW' redis-cli -p $REDIS_PORT --scan --pattern 'lease:collector:*' | wc -l)\" -ge 1 ]"

i=0
for path in /status /health /logs /metrics /circuit-breaker-status /limiters /data-quality /performance \
  "/logs?level=trace&limit=1000"; do
  i=$((i + 1))
  curl -s --max-time 5 -H "$AUTH" "$URL$path" >"$WORK/resp.$i.auth"
  curl -s --max-time 5 "$URL$path" >"$WORK/resp.$i.anon"
  check "GET $path answers (with the token)" test -s "$WORK/resp.$i.auth"
done
contains "/status shows the Redis URL without its password" "$WORK/resp.1.auth" \
  '"redis":"redis:\/\/<redacted>@127.0.0.1:'"$REDIS_PORT"'\/0"'
contains "/status shows the header value of Accept" "$WORK/resp.1.auth" '"Accept":"application\/json"'
contains "/status shows the last error without the password" "$WORK/resp.1.auth" \
  'leaky.lua:8: redis:\/\/<redacted>@127.0.0.1:1\/0: connection refused"'
contains "/status without the token is refused" "$WORK/resp.1.anon" '"error":"admin: unauthorized'
contains "/logs has the leaky warning, scrubbed" "$WORK/resp.3.auth" \
  'fetching https:\/\/<redacted>@127.0.0.1:1\/feed'

for view in 'collectors()' 'breakers()' 'limiters()' 'backfills()'; do
  "$SLUICE" repl "$WORK/ctl.sock" -e "$view" >"$WORK/repl.$view" 2>&1
  check "REPL $view answers" test -s "$WORK/repl.$view"
done
contains "REPL collectors() shows the scrubbed last error" "$WORK/repl.collectors()" \
  'redis://<redacted>@127.0.0.1:1/0: connection refused'

kill -TERM "$sluice_pid"
wait "$sluice_pid"
contains "the log has the leaky warning, scrubbed" "$WORK/sluice.out" 'fetching https://<redacted>@127.0.0.1:1/feed'

for s in "${SECRETS[@]}"; do
  found=$(grep -lF -- "$s" "$WORK"/resp.* "$WORK"/repl.* "$WORK/sluice.out" 2>/dev/null | tr '\n' ' ')
  check "'$s' appears nowhere${found:+ (found in $found)}" test -z "$found"
done

finish
