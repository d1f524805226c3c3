#!/usr/bin/env bash
# backfill_shared.sh -- two `sluice backfill` processes, each with its own
# SQLite store, share one range through a real redis-server: between them
# every window is fetched exactly once (counted by each process's mock
# Binance), their stores together hold every candle exactly once, each
# reports the other's windows as done elsewhere, and the done marks carry
# a 7-day TTL. Then an instance is killed with SIGKILL mid-job: another one
# takes over its claims once they expire (--claim-ttl 2) and completes.
. "$(dirname "$0")/common.bash"

FROM=1704060000        # a window boundary (1000-minute windows)
N=20000                # 1m candles per symbol: 20 windows per symbol
TO=$((FROM + N * 60))
WINDOWS=40

start_redis || { finish; exit 1; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; stop_redis; wait 2>/dev/null; rm -rf "$WORK"' EXIT

# Each process serves itself the same candles (mock seed 42) and, at
# shutdown, writes the kline requests its mock answered 200 to REQLOG.
cat >"$WORK/bf.lua" <<LUA
local sluice = require "sluice"
local mock = require("sluice.mock.binance").start({ seed = 42 })
sluice.on_shutdown(function()
  local f = assert(io.open(os.getenv("REQLOG"), "w"))
  for _, e in ipairs(mock.log) do
    if e.status == 200 and e.path == "/api/v3/klines" then
      f:write(e.query.symbol, " ", tostring(e.query.startTime), "\n")
    end
  end
  f:close()
  mock:stop()
end)
local rate = tonumber(os.getenv("RATE"))
return { store = os.getenv("DB"), redis = "redis://127.0.0.1:$REDIS_PORT/0", lease_ttl = 30, log = { level = os.getenv("LOGLEVEL") or "warning" },
  collectors = { { use = "binance_klines", base_url = mock.url, symbols = { "BTCUSDT", "ETHUSDT" },
    candle = "1m", limiter = { rate = rate, max_rate = rate },
    retry = { max_attempts = 3, base_delay = 0.05, max_delay = 0.2 } } } }
LUA

# union.lua DB...: the candles of the stores together; prints
# "total distinct dup_windows missing".
cat >"$WORK/union.lua" <<'LUA'
local store = require "sluice.store"
local FROM, N = tonumber(os.getenv("FROM")), tonumber(os.getenv("N"))
local seen, total, dup = {}, 0, {}
for path in os.getenv("DBS"):gmatch("%S+") do
  local db = assert(store.open(path))
  for _, r in ipairs(assert(db:query("SELECT raw_symbol AS symbol, open_time FROM klines WHERE interval = '1m'"))) do
    local k = r.symbol .. "/" .. string.format("%d", r.open_time)
    if seen[k] then dup[r.symbol .. "/" .. math.floor((r.open_time / 1000 - FROM) / 60000)] = true end
    seen[k] = true
    total = total + 1
  end
  db:close()
end
local distinct, missing, ndup = 0, 0, 0
for _ in pairs(seen) do distinct = distinct + 1 end
for _ in pairs(dup) do ndup = ndup + 1 end
for _, sym in ipairs({ "BTCUSDT", "ETHUSDT" }) do
  for i = 0, N - 1 do
    if not seen[sym .. "/" .. string.format("%d", (FROM + i * 60) * 1000)] then missing = missing + 1 end
  end
end
print(total, distinct, ndup, missing)
LUA
union() { env DBS="$*" FROM=$FROM N=$N "$SLUICE" run "$WORK/union.lua" --control none; }

backfill() { # backfill NAME RATE [args...] &: one instance, in the background
  local name=$1 rate=$2; shift 2
  env LOGLEVEL="${LOGLEVEL:-warning}" DB="$WORK/$name.db" REQLOG="$WORK/$name.req" RATE="$rate" timeout 120 "$SLUICE" backfill \
    "$WORK/bf.lua" binance_klines --from $FROM --to $TO "$@" >"$WORK/$name.out" 2>&1
}
done_of() { sed -n 's/.*; \([0-9]*\) of [0-9]* windows done.*/\1/p' "$WORK/$1.out"; }

# 1. A and B at once on the same range.
backfill a 40 --parallel 2 & pa=$!
backfill b 40 --parallel 2 & pb=$!
wait $pa; ca=$?
wait $pb; cb=$?
check "A exits 0 (exit $ca)" test "$ca" = 0
check "B exits 0 (exit $cb)" test "$cb" = 0
sed 's/^/    /' "$WORK/a.out" "$WORK/b.out"
da=$(done_of a); db=$(done_of b)
check "A and B did every window between them once (A $da, B $db)" test "$((da + db))" = $WINDOWS
check "both took part" test "$da" -gt 0 -a "$db" -gt 0
contains "A accounts for all $WINDOWS windows" "$WORK/a.out" "of $WINDOWS windows done, 0 failed"
contains "B accounts for all $WINDOWS windows" "$WORK/b.out" "of $WINDOWS windows done, 0 failed"
contains "A reports B's windows as done elsewhere" "$WORK/a.out" "elsewhere: $db windows done by other instances ($((db * 1000)) rows"
contains "B reports A's windows as done elsewhere" "$WORK/b.out" "elsewhere: $da windows done by other instances ($((da * 1000)) rows"
cat "$WORK/a.req" "$WORK/b.req" >"$WORK/all.req"
check "the mocks answered $WINDOWS window requests in all ($(wc -l <"$WORK/all.req"))" \
  test "$(wc -l <"$WORK/all.req")" = $WINDOWS
check "no window was fetched twice" test "$(sort -u "$WORK/all.req" | wc -l)" = $WINDOWS
read -r total distinct dups missing < <(union "$WORK/a.db" "$WORK/b.db")
check "the stores together hold every candle once ($total rows, $distinct distinct, $missing missing)" \
  test "$total" = $((2 * N)) -a "$distinct" = $((2 * N)) -a "$missing" = 0
keys=$(redis-cli -p "$REDIS_PORT" --scan --pattern 'backfill:binance_klines:*' | wc -l)
check "one done mark per window in Redis ($keys)" test "$keys" = $WINDOWS
ttl=$(redis-cli -p "$REDIS_PORT" ttl "backfill:binance_klines:ETHUSDT:$FROM")
check "a done mark lives 7 days (ttl $ttl)" test "$ttl" -gt 604700 -a "$ttl" -le 604800
redis-cli -p "$REDIS_PORT" get "backfill:binance_klines:ETHUSDT:$FROM" >"$WORK/mark"
contains "the mark says done, with the row count" "$WORK/mark" '"rows":1000'

# A's --plan: nothing to fetch, B's windows done elsewhere.
expect_exit "A's --plan" 0 env DB="$WORK/a.db" REQLOG="$WORK/p.req" RATE=40 "$SLUICE" backfill "$WORK/bf.lua" \
  binance_klines --from $FROM --to $TO --plan
contains "plans nothing to fetch" "$WORK/out" "binance_klines: 0 windows to fetch, $da already done"
contains "and names B's windows" "$WORK/out" "elsewhere $db"

# 2. C is killed mid-job; D, started after, takes over C's claims once they
#    expire and completes the range (a fresh Redis database of marks).
redis-cli -p "$REDIS_PORT" flushall >/dev/null
# (sluice itself in the background, so that $! is its pid)
env DB="$WORK/c.db" REQLOG="$WORK/c.req" RATE=10 "$SLUICE" backfill "$WORK/bf.lua" binance_klines \
  --from $FROM --to $TO --parallel 2 --claim-ttl 2 >"$WORK/c.out" 2>&1 &
pc=$!
pids+=($pc)
# Wait (bounded) until C holds a claim, then kill it at once: waiting for a
# number of keys raced with C finishing those windows on a loaded machine.
claimed() {
  redis-cli -p "$REDIS_PORT" --scan --pattern 'backfill:*' | xargs -r -n1 redis-cli -p "$REDIS_PORT" get |
    grep -c '"state":"claimed"'
}
held=0
holding() {
  [ "$(redis-cli -p "$REDIS_PORT" --scan --pattern 'backfill:*' | wc -l)" -ge 4 ] &&
    held=$(claimed) && [ "$held" -ge 1 ]
}
wait_until 15 holding
kill -KILL $pc
wait $pc 2>/dev/null
check "C died holding claims ($held)" test "$held" -ge 1
check "a backfill takes no collector lease (none left behind by the killed C either)" \
  test "$(redis-cli -p "$REDIS_PORT" --scan --pattern 'lease:collector:*' | wc -l)" = 0
t0=$(date +%s.%N)
LOGLEVEL=info backfill d 200 --parallel 2 --claim-ttl 2
cd_=$?
took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
check "D completes (exit $cd_) in ${took} s" test "$cd_" = 0
grep -v '"level":"info"' "$WORK/d.out" | sed 's/^/    /'
contains "D accounts for every window" "$WORK/d.out" "of $WINDOWS windows done, 0 failed"
taken=$(grep -c "backfill window taken over" "$WORK/d.out")
check "D took over C's windows once their claims expired ($taken, at most C's parallel 2)" test "$taken" -ge 1 -a "$taken" -le 2
read -r total distinct dups missing < <(union "$WORK/c.db" "$WORK/d.db")
check "C's and D's stores together hold every candle ($distinct distinct, $missing missing)" \
  test "$distinct" = $((2 * N)) -a "$missing" = 0
# (a window C committed but was killed before marking done is fetched again)
check "at most C's in-flight windows are in both stores ($dups)" test "$dups" -le 2

finish
