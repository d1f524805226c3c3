#!/usr/bin/env bash
# exchanges_backfill.sh -- `sluice backfill` of klines (1h) and funding
# history over 90 days, for each of the five exchange collectors against
# its mock (started inside each sluice process with a fixed seed; candles
# and settlements of the past are the same in every run): killed with
# SIGKILL twice mid-job (once a window more is done each time), resumed to
# the end, it holds every candle and every settlement exactly once -- the
# same rows as a one-shot backfill into a fresh store -- and after each kill
# every window recorded done holds exactly its rows, none outside them.
# HTX's spot klines reach back 2000 candles only (its API has no time
# range), so HTX is backfilled for its perpetuals alone.
. "$(dirname "$0")/common.bash"

NOW=$(date -u +%s)
TO=$((NOW / 86400 * 86400 - 86400))   # yesterday 00:00 UTC: every candle closed
FROM=$((TO - 90 * 86400))
CANDLES=$((90 * 24))                   # 1h candles per symbol
SETTLEMENTS=$((90 * 3))                # funding every 8 h per perpetual
echo "# $FROM .. $TO: $CANDLES candles per symbol, $SETTLEMENTS settlements per perpetual"

cat >"$WORK/bf.lua" <<'LUA'
local sluice = require "sluice"
local name = os.getenv("EX")
local mock = require("sluice.mock." .. name).start({ seed = 42 })
sluice.on_shutdown(function() mock:stop() end)
local rate = tonumber(os.getenv("RATE"))
local symbols = {}
for s in os.getenv("SYMBOLS"):gmatch("%S+") do symbols[#symbols + 1] = s end
return { store = os.getenv("DB"), log = { level = "warning" }, collectors = {
  { use = name, base_url = mock.url, symbols = symbols, candle = "1h",
    limiter = { rate = rate, max_rate = rate },
    retry = { max_attempts = 3, base_delay = 0.05, max_delay = 0.2 } } } }
LUA

q() { sqlite3 -cmd ".timeout 2000" "$1" "$2" 2>/dev/null; }
done_windows() { q "$1" "SELECT COUNT(*) FROM sluice_backfill WHERE status = 'done'"; }
# killable PID DB N: N windows are done in DB (or the process PID ended)
killable() { gone "$1" || [ "$(done_windows "$2")" -ge "$3" ] 2>/dev/null; }

# faults DB -> "BAD OUTSIDE FAILED": the windows recorded done that do not
# hold exactly their candles and settlements (and the rows they recorded),
# the rows outside the done windows (stored minus recorded), the windows
# recorded failed.
faults() {
  q "$1" "SELECT (SELECT COUNT(*) FROM (SELECT w.rows,
      (SELECT COUNT(*) FROM klines k WHERE k.symbol = w.partition AND k.interval = '1h'
         AND k.open_time >= w.covered_from * 1000 AND k.open_time < w.window_end * 1000) AS kn,
      (SELECT COUNT(*) FROM funding_rates f WHERE f.symbol = w.partition
         AND f.funding_time >= w.covered_from * 1000 AND f.funding_time < w.window_end * 1000) AS fn,
      (w.window_end - w.covered_from) / 3600 AS kwant,
      CASE WHEN w.partition LIKE '%:%'
        THEN (w.window_end + 28799) / 28800 - (w.covered_from + 28799) / 28800 ELSE 0 END AS fwant
    FROM sluice_backfill w WHERE w.status = 'done')
    WHERE kn <> kwant OR fn <> fwant OR rows <> kn + fn),
    (SELECT COUNT(*) FROM klines) + (SELECT COUNT(*) FROM funding_rates)
      - (SELECT COALESCE(SUM(rows), 0) FROM sluice_backfill WHERE status = 'done'),
    (SELECT COUNT(*) FROM sluice_backfill WHERE status <> 'done')" | tr '|' ' '
}
# consistent LABEL DB: none of those faults
consistent() {
  local bad outside failed
  read -r bad outside failed < <(faults "$2")
  check "$1: every done window holds exactly its candles and settlements (${bad:-?} bad)" test "$bad" = 0
  check "$1: no row outside the done windows (${outside:-?})" test "$outside" = 0
  check "$1: no window recorded failed (${failed:-?})" test "$failed" = 0
}

# dump DB: every row of both tables, in key order (the decimal columns as
# the text stored)
dump() {
  q "$1" "SELECT * FROM klines ORDER BY exchange, market, symbol, interval, open_time" &&
    q "$1" "SELECT * FROM funding_rates ORDER BY exchange, market, symbol, funding_time"
}

for ex in binance bybit bitget gate htx; do
  symbols="BTC/USDT BTC/USDT:USDT BTC/USD:BTC"
  [ "$ex" = htx ] && symbols="BTC/USDT:USDT BTC/USD:BTC"
  db="$WORK/$ex.db"
  backfill() { # backfill DB RATE: the command, in the foreground
    env EX="$ex" DB="$1" RATE="$2" SYMBOLS="$symbols" timeout 60 "$SLUICE" backfill "$WORK/bf.lua" "$ex" \
      --from $FROM --to $TO --parallel 2
  }

  # 1. Two runs killed mid-job, at 3 requests a second: once a window more
  #    than before is done, SIGKILL.
  before=0
  for attempt in 1 2; do
    env EX="$ex" DB="$db" RATE=3 SYMBOLS="$symbols" "$SLUICE" backfill "$WORK/bf.lua" "$ex" \
      --from $FROM --to $TO --parallel 2 >"$WORK/$ex.run$attempt" 2>&1 &
    pid=$!
    wait_until 30 killable "$pid" "$db" $((before + 1))
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    code=$?
    before=$(done_windows "$db")
    check "$ex: run $attempt died of SIGKILL mid-job (exit $code, $before windows done)" test "$code" = 137
    consistent "$ex: after kill $attempt" "$db"
  done

  # 2. Resumed to the end: the windows done before are not fetched again.
  expect_exit "$ex: the resumed backfill completes" 0 backfill "$db" 15
  contains "$ex: it skips the $before windows done before and fails none" "$WORK/out" ", 0 failed, $before skipped;"
  consistent "$ex: resumed" "$db"
  for s in $symbols; do
    k=$(q "$db" "SELECT COUNT(*), COUNT(DISTINCT open_time), MIN(open_time), MAX(open_time) FROM klines
                 WHERE exchange = '$ex' AND symbol = '$s' AND interval = '1h'")
    check "$ex $s: $CANDLES candles, each once, from the start to the last hour ($k)" \
      test "$k" = "$CANDLES|$CANDLES|$((FROM * 1000))|$(((TO - 3600) * 1000))"
    case "$s" in *:*) want="$SETTLEMENTS|$SETTLEMENTS|$((FROM * 1000))|$(((TO - 28800) * 1000))" ;;
      *) want="0|0||" ;; esac
    f=$(q "$db" "SELECT COUNT(*), COUNT(DISTINCT funding_time), MIN(funding_time), MAX(funding_time)
                 FROM funding_rates WHERE exchange = '$ex' AND symbol = '$s'")
    check "$ex $s: every settlement once ($f)" test "$f" = "$want"
  done

  # 3. The same rows as a one-shot backfill into a fresh store.
  expect_exit "$ex: a one-shot backfill into a fresh store" 0 backfill "$WORK/$ex.clean.db" 15
  dump "$db" >"$WORK/$ex.rows"
  dump "$WORK/$ex.clean.db" >"$WORK/$ex.clean.rows"
  rows=$(wc -l <"$WORK/$ex.rows")
  check "$ex: the resumed store holds the one-shot's rows, field for field ($rows rows)" \
    sh -c "test $rows -gt 0 && cmp -s '$WORK/$ex.rows' '$WORK/$ex.clean.rows'"

  # 4. Again: nothing left to fetch.
  expect_exit "$ex: a repeated backfill" 0 backfill "$db" 15
  contains "$ex: fetches nothing" "$WORK/out" "0 rows, 0 requests"
done

# 5. The checks see a lost candle and a lost settlement (a doctored copy).
cp "$WORK/gate.db" "$WORK/doctored.db"
q "$WORK/doctored.db" "DELETE FROM klines WHERE symbol = 'BTC/USDT' AND open_time = $(((FROM + 86400) * 1000));
  DELETE FROM funding_rates WHERE symbol = 'BTC/USD:BTC' AND funding_time = $(((FROM + 86400) * 1000))"
check "doctored: two windows short, two rows missing ($(faults "$WORK/doctored.db"))" \
  test "$(faults "$WORK/doctored.db")" = "2 -2 0"
dump "$WORK/doctored.db" >"$WORK/doctored.rows"
differ() { ! cmp -s "$1" "$2"; }
check "doctored: its rows differ from the one-shot's" differ "$WORK/doctored.rows" "$WORK/gate.clean.rows"

finish
