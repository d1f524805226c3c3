#!/usr/bin/env bash
# status_page.sh -- the status page (GET /) in a real browser: headless
# Chromium, driven over the DevTools protocol by status_page_cdp.lua,
# against a running sluice with a healthy collector (the mock Binance), one
# whose breaker opened (its upstream refuses connections), one failing with
# markup in its error, and a backfill stalled at 4 of 12 windows. Checks the
# rendered DOM against /status and /history, the rollback button, no
# JavaScript errors; saves a screenshot to <build dir>/artifacts/status_page.png.
# Without chromium it skips, saying so, unless CI is set: there it fails.
source "$(dirname "$0")/common.bash"
HERE=$(cd "$(dirname "$0")" && pwd)

CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROMIUM" ]; then
  if [ -n "${CI:-}" ]; then
    not_ok "chromium is installed (apt-get install chromium; scripts/dev.sh lists it): required in CI"
    finish
    exit 1
  fi
  echo "SKIPPED: chromium is not installed (apt-get install chromium), so the status page was not tested in a browser"
  exit 0
fi

ARTIFACTS="$(dirname "$SLUICE")/artifacts"
mkdir -p "$ARTIFACTS"
ADMIN_PORT=$(free_port)

cat >"$WORK/broken.lua" <<'LUA'
local collector = require "sluice.collector"
return collector.define({
  name = "broken", interval = 1, limiter = false, breaker = false, retry = false,
  collect = function() error("upstream said <img src=x onerror=window.__xss=1> & <b>no</b>", 0) end,
})
LUA
cat >"$WORK/slowfill.lua" <<'LUA'
local sluice = require "sluice"
local collector = require "sluice.collector"
local START = 1704067200 -- 2024-01-01
return collector.define({
  name = "slowfill", interval = 3600, limiter = false, breaker = false, retry = false,
  tables = { fills = { columns = { t = "integer" }, key = { "t" } } },
  collect = function() return {} end,
  backfill_step = 7200,
  -- four windows, then one that does not end until shutdown (it looks: a
  -- window in flight at shutdown with the admin API up keeps the process
  -- past its shutdown deadline, a bug of its own)
  backfill = function(_, from)
    if (from - START) / 7200 >= 4 then
      while not sluice.stopping() do sluice.sleep(0.1) end
      error("shutting down", 0)
    end
    return { fills = { { t = from } } }
  end,
})
LUA
write_config() {
  cat >"$WORK/sluice.lua" <<LUA
local sluice = require "sluice"
local mock = require("sluice.mock.binance").start({ seed = 42 })
sluice.on_shutdown(function() mock:stop() end)
return { name = "$1", store = "$WORK/db.sqlite", shutdown_timeout = 1, log = { level = "info" },
  admin = { port = $ADMIN_PORT, insecure_loopback_mutations = true },
  collectors = {
    { use = "binance_klines", base_url = mock.url, symbols = { "BTCUSDT" }, candle = "1m" },
    { use = "binance_klines", name = "flaky", base_url = "http://127.0.0.1:9", symbols = { "BTCUSDT" },
      candle = "1m", interval = 1, retry = { max_attempts = 1 }, breaker = { failure_threshold = 1, timeout = 3600 } },
    { file = "broken.lua" },
    { file = "slowfill.lua" },
  } }
LUA
}
write_config first

"$SLUICE" run "$WORK/sluice.lua" --control none >"$WORK/sluice.log" 2>&1 &
SLUICE_PID=$!
CHROME_PID=
cleanup() {
  [ -n "$CHROME_PID" ] && kill "$CHROME_PID" 2>/dev/null && wait "$CHROME_PID" 2>/dev/null
  kill "$SLUICE_PID" 2>/dev/null && wait "$SLUICE_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

ADMIN="http://127.0.0.1:$ADMIN_PORT"
status_has() { curl -sf "$ADMIN/status" | grep -qF -- "$1"; }
check "sluice answers" wait_until 20 curl -sf "$ADMIN/health" -o /dev/null

# a second configuration applied, so that the page can roll back to the first
write_config second
check "a reload applies configuration 2" \
  curl -sf -X POST -H 'Content-Type: application/json' -d '{}' "$ADMIN/reload" -o /dev/null
curl -sf -X POST -H 'Content-Type: application/json' \
  -d '{"collector": "slowfill", "start_date": "2024-01-01", "end_date": "2024-01-02", "parallel": 1}' \
  "$ADMIN/backfill" >"$WORK/backfill.json"
contains "the backfill started" "$WORK/backfill.json" '"status":"started"'

# the states settle before the page loads
check "flaky's circuit is open" wait_until 20 status_has '"status":"circuit_open"'
check "broken has failed" wait_until 20 status_has '"status":"failed"'
check "the backfill stalls at 4 of 12 windows" wait_until 20 status_has '"windows_done":4'

"$CHROMIUM" --headless=new --no-sandbox --disable-gpu --remote-debugging-port=0 \
  --user-data-dir="$WORK/chrome" --no-first-run --no-default-browser-check --disable-extensions \
  --disable-background-networking --disable-component-update --disable-sync --disable-default-apps \
  --disable-domain-reliability --disable-client-side-phishing-detection --metrics-recording-only \
  about:blank >"$WORK/chrome.log" 2>&1 &
CHROME_PID=$!
if ! wait_until 30 test -s "$WORK/chrome/DevToolsActivePort"; then
  not_ok "chromium started with a DevTools port"
  sed 's/^/    /' "$WORK/chrome.log"
  finish
  exit 1
fi
DEVTOOLS=$(head -1 "$WORK/chrome/DevToolsActivePort")

DEVTOOLS=$DEVTOOLS ADMIN=$ADMIN SHOT="$ARTIFACTS/status_page.png" \
  "$SLUICE" run "$HERE/status_page_cdp.lua" --control none >"$WORK/cdp.out" 2>&1
code=$?
cat "$WORK/cdp.out"
passed=$((passed + $(grep -c '^ok - ' "$WORK/cdp.out")))
failed=$((failed + $(grep -c '^not ok - ' "$WORK/cdp.out")))
if [ "$code" != 0 ]; then
  not_ok "the DevTools driver ran to the end (exit $code)"
fi
if [ "$failed" -gt 0 ]; then sed 's/^/    sluice: /' "$WORK/sluice.log" | tail -20; fi
finish
