#!/usr/bin/env bash
# collector.sh -- configurations under `sluice run`: the quickstart, config
# errors naming file and key, env overrides, and an open breaker that stays
# open across a restart on the same database.
. "$(dirname "$0")/common.bash"

# 1. The quickstart runs offline and lands rows.
expect_exit "quickstart exits 0" 0 env -C "$WORK" SLUICE_QUICKSTART_DB="$WORK/q.db" \
  timeout 30 "$SLUICE" run "$PWD/examples/quickstart.lua" --log-format json
contains "quickstart stored BTCUSDT candles" "$WORK/out" "BTCUSDT "
contains "quickstart reports health" "$WORK/out" "health: healthy"
check "quickstart database exists" test -s "$WORK/q.db"

# The custom-collector example runs too.
expect_exit "custom collector example exits 0" 0 env SLUICE_EXAMPLE_DB="$WORK/custom.db" \
  timeout 30 "$SLUICE" run "$PWD/examples/custom.lua" --log-format json
contains "custom collector stored prices" "$WORK/out" "BTCUSDT  "

# 2. Configuration errors name the file and the key, and exit 1.
cat >"$WORK/bad.lua" <<'LUA'
return { collectors = { { use = "binance_klines", candle = 5 } } }
LUA
expect_exit "a bad option exits 1" 1 "$SLUICE" run "$WORK/bad.lua" --log-format json
contains "the error names the file and the option" "$WORK/out" "bad.lua: collectors[1]: collector 'binance_klines': option 'candle' must be a string, got number"
"$SLUICE" run "$WORK/bad.lua" --log-format json >"$WORK/stdout" 2>"$WORK/stderr"
check "a configuration error writes nothing to stdout (no JSON line, no traceback)" test ! -s "$WORK/stdout"
check "and one line to stderr ($(wc -l <"$WORK/stderr"))" test "$(wc -l <"$WORK/stderr")" = 1
contains "that line is sluice: file: key: problem" "$WORK/stderr" \
  "sluice: $WORK/bad.lua: collectors[1]: collector 'binance_klines': option 'candle' must be a string, got number"
"$SLUICE" backfill "$WORK/bad.lua" binance_klines --from 2024-01-01 --to 2024-01-02 >"$WORK/stdout" 2>"$WORK/stderr"
rc=$?
check "sluice backfill: the same one line on stderr, exit 1 (exit $rc, $(wc -l <"$WORK/stderr") lines, stdout $(wc -c <"$WORK/stdout") bytes)" \
  test "$rc $(wc -l <"$WORK/stderr") $(wc -c <"$WORK/stdout")" = "1 1 0"
cat >"$WORK/unknown.lua" <<'LUA'
return { colectors = {} }
LUA
expect_exit "an unknown setting exits 1" 1 "$SLUICE" run "$WORK/unknown.lua" --log-format json
contains "the unknown setting is named" "$WORK/out" "unknown.lua: colectors: unknown setting"
cat >"$WORK/nouse.lua" <<'LUA'
return { collectors = { { use = "no_such_collector" } } }
LUA
expect_exit "an unknown shipped collector exits 1" 1 "$SLUICE" run "$WORK/nouse.lua" --log-format json
contains "the missing collector is named" "$WORK/out" "nouse.lua: collectors[1].use: no shipped collector named 'no_such_collector'"
expect_exit "an unknown profile exits 1" 1 "$SLUICE" run "$WORK/unknown.lua" --profile prod
expect_exit "a bad env override exits 1" 1 env SLUICE_COLLECTORS__BINANCE_KLINES__INTERVAL=soon \
  "$SLUICE" run "$PWD/examples/quickstart.lua" --log-format json
contains "the override is named" "$WORK/out" "SLUICE_COLLECTORS__BINANCE_KLINES__INTERVAL: must be a number, got 'soon'"

# 3. An open breaker survives a restart on the same database.
cat >"$WORK/ban.lua" <<'LUA'
local sluice = require "sluice"
local breaker = require "sluice.breaker"
local mock = require("sluice.mock.binance").start({})
sluice.on_shutdown(function() mock:stop() end)
if os.getenv("BAN") then mock:inject({ status = 418, retry_after = 600, count = 10 }) end
sluice.after(1.5, function(premature)
  local cb = breaker.get("binance_klines")
  print("breaker:", cb:state(), "requests to the exchange:", mock.requests)
  print("limit:", require("sluice.app").current.collectors.binance_klines.options.limit)
  if not premature then sluice.shutdown() end
end)
return { store = os.getenv("DB"), collectors = {
  { use = "binance_klines", base_url = mock.url, interval = 0.5, limit = 2,
    retry = { max_attempts = 1 } } } }
LUA
expect_exit "first run gets banned" 0 env BAN=1 DB="$WORK/ban.db" timeout 30 "$SLUICE" run "$WORK/ban.lua" --log-format json
contains "the ban opened the breaker" "$WORK/out" "breaker:	open"
expect_exit "second run on the same database" 0 env DB="$WORK/ban.db" timeout 30 "$SLUICE" run "$WORK/ban.lua" --log-format json
contains "the breaker is still open after the restart, and no request went out" "$WORK/out" "breaker:	open	requests to the exchange:	0"

# 4. Environment overrides reach the collector.
expect_exit "run with an env override" 0 env DB="$WORK/env.db" SLUICE_COLLECTORS__BINANCE_KLINES__LIMIT=3 \
  timeout 30 "$SLUICE" run "$WORK/ban.lua" --log-format json
contains "the override applied" "$WORK/out" "limit:	3"

finish
