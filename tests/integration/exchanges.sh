#!/usr/bin/env bash
# exchanges.sh -- the five exchange collectors (binance, bybit, bitget,
# gate, htx) in one configuration against their mocks, each on its own
# 127.0.0.1 port in another sluice process (exchange_mocks.lua): every
# dataset of every exchange (spot, linear and inverse symbols; tickers,
# order books, funding, klines) lands rows and keeps collecting for 30 s
# without a failed run; then one exchange's mock answers
# 503 to everything: its breaker alone opens, it sends nothing more, the
# other four keep collecting, /health names it; SIGTERM exits 0.
# EXCHANGES_FAIL picks the failing exchange (default gate).
. "$(dirname "$0")/common.bash"
HERE=$(cd "$(dirname "$0")" && pwd)
FAIL=${EXCHANGES_FAIL:-gate}
NAMES="binance bybit bitget gate htx"
DB="$WORK/ex.db"

mocks_pid=""
sluice_pid=""
cleanup() {
  for p in $sluice_pid $mocks_pid; do kill -TERM "$p" 2>/dev/null; done
  for p in $sluice_pid $mocks_pid; do wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# 1. The mocks, in a process of their own.
env MOCKS_FILE="$WORK/mocks.txt" "$SLUICE" run "$HERE/exchange_mocks.lua" --control none \
  --log-format json >"$WORK/mocks.out" 2>&1 &
mocks_pid=$!
if ! wait_until 10 test -s "$WORK/mocks.txt"; then
  not_ok "the mocks listen"; sed 's/^/    /' "$WORK/mocks.out"; finish; exit 1
fi
CONTROL=$(awk '$1 == "control" { print $2 }' "$WORK/mocks.txt")
ok "the five mocks and their control server listen"

# 2. One configuration with all five exchanges and the admin API.
ADMIN_PORT=$(free_port)
ADMIN="http://127.0.0.1:$ADMIN_PORT"
cat >"$WORK/sluice.lua" <<LUA
local urls = {}
for line in io.lines("$WORK/mocks.txt") do
  local name, url = line:match("^(%S+) (%S+)$")
  urls[name] = url
end
local collectors = {}
for _, name in ipairs({ "binance", "bybit", "bitget", "gate", "htx" }) do
  collectors[#collectors + 1] = { use = name, base_url = urls[name],
    symbols = { "BTC/USDT", "BTC/USDT:USDT", "BTC/USD:BTC" },
    datasets = { tickers = { interval = 1 }, order_book = { interval = 1 },
      funding = { interval = 2 }, klines = { interval = 2 } },
    depth = 20, candle = "1m" }
end
return { store = "$DB", admin = { port = $ADMIN_PORT }, collectors = collectors }
LUA
"$SLUICE" run "$WORK/sluice.lua" --control none --log-format json >"$WORK/sluice.out" 2>&1 &
sluice_pid=$!

# q SQL: one query on the store (WAL: read while sluice writes)
q() { sqlite3 -cmd ".timeout 2000" "$DB" "$1" 2>/dev/null; }
probe() { "$SLUICE" run "$HERE/exchanges_probe.lua" --control none -- "$1" "$ADMIN" 2>"$WORK/probe.err"; }

# What must land: each table, exchange and market (funding: perpetuals).
: >"$WORK/want.txt"
for t in tickers order_books klines funding_current; do
  for e in $NAMES; do
    for m in inverse linear spot; do
      [ "$t" = funding_current ] && [ "$m" = spot ] && continue
      echo "$t|$e|$m" >>"$WORK/want.txt"
    done
  done
done
sort -o "$WORK/want.txt" "$WORK/want.txt"
landed() {
  q "SELECT DISTINCT 'tickers', exchange, market FROM tickers
     UNION SELECT DISTINCT 'order_books', exchange, market FROM order_books
     UNION SELECT DISTINCT 'klines', exchange, market FROM klines
     UNION SELECT DISTINCT 'funding_current', exchange, market FROM funding_current" |
    sort >"$WORK/got.txt"
  cmp -s "$WORK/want.txt" "$WORK/got.txt"
}
if wait_until 30 landed; then
  ok "every dataset of every exchange and market lands rows ($(wc -l <"$WORK/want.txt") table/exchange/market)"
else
  not_ok "every dataset of every exchange and market lands rows; missing:"
  comm -23 "$WORK/want.txt" "$WORK/got.txt" | sed 's/^/    /'
fi

all_fine() {
  probe status >"$WORK/status.txt" || return 1
  for e in $NAMES; do
    grep -qx "$e breaker closed" "$WORK/status.txt" && grep -qx "$e status healthy" "$WORK/status.txt" || return 1
    for d in tickers order_book funding klines; do
      grep -qx "$e $d rows [1-9][0-9]*" "$WORK/status.txt" || return 1
    done
  done
}
if wait_until 10 all_fine; then
  ok "/status: every exchange healthy, breaker closed, rows in every dataset"
else
  not_ok "/status: every exchange healthy, breaker closed, rows in every dataset"
  sed 's/^/    /' "$WORK/status.txt" "$WORK/probe.err"
fi
probe health >"$WORK/health.txt"
check "/health: 200 healthy before the fault" test "$(head -2 "$WORK/health.txt" | tr '\n' ' ')" = "http 200 status healthy "

# 30 s of collecting: every exchange's tickers and order books, due every
# second, have run 25 times (bounded), and no run of any dataset failed.
soaked() {
  probe status >"$WORK/status.txt" || return 1
  for e in $NAMES; do
    for d in tickers order_book; do
      awk -v e="$e" -v d="$d" '$1 == e && $2 == d && $3 == "runs" && $4 >= 25 { f = 1 } END { exit !f }' \
        "$WORK/status.txt" || return 1
    done
  done
}
if wait_until 60 soaked; then ok "30 s of collecting: tickers and order books of every exchange ran 25 times"; else
  not_ok "30 s of collecting: tickers and order books of every exchange ran 25 times"
  grep ' runs ' "$WORK/status.txt" | sed 's/^/    /'
fi
check "and no run of any dataset failed ($(awk '$3 == "runs" && $6 > 0' "$WORK/status.txt" | tr '\n' ';'))" \
  test -z "$(awk '$3 == "runs" && $6 > 0' "$WORK/status.txt")"

# 3. $FAIL's mock answers 503 to everything from now on.
curl -s --max-time 5 "$CONTROL/inject?exchange=$FAIL&status=503&count=1000000" >"$WORK/inject.out"
contains "$FAIL's mock answers 503 from now on" "$WORK/inject.out" "\"injected\":\"$FAIL\""
fail_open() { probe status >"$WORK/status.txt" && grep -qx "$FAIL breaker open" "$WORK/status.txt"; }
if wait_until 20 fail_open; then ok "$FAIL's breaker opens"; else
  not_ok "$FAIL's breaker opens"; sed 's/^/    /' "$WORK/status.txt"; fi

# stored EXCHANGE: the tickers and order books it has stored
stored() {
  q "SELECT (SELECT COUNT(*) FROM tickers WHERE exchange = '$1')
          + (SELECT COUNT(*) FROM order_books WHERE exchange = '$1')"
}
# counts PREFIX: PREFIX.<exchange> = stored so far, PREFIX.requests = the
# requests each mock has answered
counts() {
  for e in $NAMES; do stored "$e" >"$WORK/$1.$e"; done
  curl -s --max-time 5 "$CONTROL/requests" >"$WORK/$1.requests"
}
# others_grow SINCE: each of the other four stored more than at SINCE
others_grow() {
  local e
  for e in $NAMES; do
    [ "$e" = "$FAIL" ] && continue
    [ "$(stored "$e")" -gt "$(cat "$WORK/$1.$e")" ] || return 1
  done
}
counts open
if wait_until 15 others_grow open; then ok "the other four keep storing tickers and order books"; else
  not_ok "the other four keep storing tickers and order books"
  for e in $NAMES; do echo "    $e: $(cat "$WORK/open.$e") at the opening"; done
fi
# No row of $FAIL was fetched after its breaker opened (a run in flight
# then may still commit what it fetched before, so count by the rows'
# times, not the rows), and its mock gets no request meanwhile.
opened=$(grep -F '"msg":"circuit breaker state change","breaker":"'"$FAIL"'"' "$WORK/sluice.out" |
  grep -F '"to":"open"' | head -1 | sed -E 's/^\{"ts":"([^"]*)".*/\1/')
opened_ms=$(date -u -d "$opened" +%s%3N 2>/dev/null || echo 0)
counts mid
wait_until 15 others_grow mid
counts later
newest=$(q "SELECT MAX(ts) FROM (SELECT ts FROM tickers WHERE exchange = '$FAIL'
                                UNION ALL SELECT ts FROM order_books WHERE exchange = '$FAIL')")
check "$FAIL stores nothing fetched after its breaker opened at $opened (newest row $newest)" \
  test "$opened_ms" -gt 0 -a "${newest:-0}" -le "$opened_ms"
fail_requests() { sed -E "s/.*\"$FAIL\":([0-9]+).*/\1/" "$1"; }
check "and sends its mock nothing ($(fail_requests "$WORK/mid.requests") requests)" \
  test "$(fail_requests "$WORK/mid.requests")" = "$(fail_requests "$WORK/later.requests")"

probe status >"$WORK/status.txt"
for e in $NAMES; do
  [ "$e" = "$FAIL" ] && continue
  check "$e's breaker stays closed, $e healthy" \
    sh -c "grep -qx '$e breaker closed' '$WORK/status.txt' && grep -qx '$e status healthy' '$WORK/status.txt'"
done
contains "/status counts $FAIL failed" "$WORK/status.txt" "summary failed_exchanges 1"
contains "and four healthy" "$WORK/status.txt" "summary healthy_exchanges 4"

probe health >"$WORK/health.txt"
# four of five exchanges collect: degraded (200), not down
check "/health says degraded ($(grep '^status' "$WORK/health.txt"))" \
  grep -qx 'status degraded' "$WORK/health.txt"
contains "/health answers 200" "$WORK/health.txt" "http 200"
contains "/health names $FAIL" "$WORK/health.txt" "reason $FAIL is circuit_open"
check "/health names no other exchange ($(grep -c '^reason' "$WORK/health.txt") reasons)" \
  test "$(grep -c '^reason' "$WORK/health.txt")" = 1
echo "# /health: $(tr '\n' ' ' <"$WORK/health.txt")"

# 4. SIGTERM: a clean exit.
kill -TERM "$sluice_pid"
if ended_within "$sluice_pid" 15; then
  sluice_pid=""
  check "SIGTERM: sluice exits 0 (exit $code)" test "$code" = 0
else
  not_ok "SIGTERM: sluice exits within 15 s"
fi
kill -TERM "$mocks_pid"
if ended_within "$mocks_pid" 15; then mocks_pid=""; check "the mocks stop (exit $code)" test "$code" = 0; else
  not_ok "the mocks stop within 15 s"; fi
if grep -q '"level":"\(error\|critical\)"' "$WORK/sluice.out"; then
  echo "# errors logged:"; grep '"level":"\(error\|critical\)"' "$WORK/sluice.out" | sort | uniq -c | head -20
fi
finish
