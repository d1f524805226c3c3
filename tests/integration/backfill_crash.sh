#!/usr/bin/env bash
# backfill_crash.sh -- `sluice backfill` killed with SIGKILL at random
# moments (seeded, logged) and restarted each time, then run to the end:
# the table must hold exactly the expected candles (none missing, none
# twice, none outside the range), the same as a clean one-shot backfill,
# and no window may be recorded failed. After every kill, each window
# recorded done must hold exactly its rows and no row may lie outside a
# done window (a window's rows and its coverage are one transaction).
#
# The exchange is the mock Binance, started inside each sluice process
# with a fixed seed, so every run serves the same candles (2024 is in the
# past: no clock pinning needed). BACKFILL_CRASH_SEED overrides the seed of
# the kill delays; BACKFILL_CRASH_KILLS the number of kill attempts.
. "$(dirname "$0")/common.bash"

SEED=${BACKFILL_CRASH_SEED:-20240101}
KILLS=${BACKFILL_CRASH_KILLS:-8}
MIN_KILLS=5
FROM=1704067200        # 2024-01-01T00:00:00Z
N=20000                # 1m candles per symbol
TO=$((FROM + N * 60))  # 2024-01-14T21:20:00Z
WINDOWS=42             # 21 windows of 1000 minutes per symbol (the first one cut at FROM)
RANDOM=$SEED
echo "# seed $SEED: $KILLS kill attempts, 2 symbols x $N candles from $FROM to $TO"

backfill_config "$WORK/bf.lua" warning

# check.lua: prints "ok - ..." / "not ok - ..." lines (counted below) and
# "# ..." notes. MODE=partial checks what a killed run left; MODE=final
# the finished table, against CLEAN's when given. It runs with the specs'
# helpers (support.klines: figures and checksums as backfill_spec takes them).
cat >"$WORK/check.lua" <<'LUA'
local store = require "sluice.store"
local klines = require "support.klines"
local db = assert(store.open(os.getenv("DB")))
local mode, label = os.getenv("MODE"), os.getenv("LABEL") or ""
local FROM, TO, N = tonumber(os.getenv("FROM")), tonumber(os.getenv("TO")), tonumber(os.getenv("N"))
local WINDOWS = tonumber(os.getenv("WINDOWS"))
local SYMBOLS = { "BTCUSDT", "ETHUSDT" }

local function check(name, cond, detail)
  print((cond and "ok - " or "not ok - ") .. label .. name
    .. ((cond or detail == nil) and "" or (" (" .. tostring(detail) .. ")")))
end
local function one(sql, ...)
  local rows = db:query(sql, ...)
  return rows and rows[1] or {}
end
local function exists(name)
  return one("SELECT COUNT(*) AS n FROM sqlite_master WHERE name = ?", name).n == 1
end

local has_klines, has_cov = exists("klines"), exists("sluice_backfill")
local total = has_klines and one("SELECT COUNT(*) AS n, COUNT(DISTINCT raw_symbol || '/' || interval || '/' || open_time) AS d FROM klines") or { n = 0, d = 0 }
local cov = has_cov and one("SELECT COUNT(*) AS n, COALESCE(SUM(rows), 0) AS rows FROM sluice_backfill WHERE status = 'done'") or { n = 0, rows = 0 }
local failed = has_cov and one("SELECT COUNT(*) AS n, MIN(error) AS e FROM sluice_backfill WHERE status <> 'done'") or { n = 0 }
print(string.format("# %s%d candles stored, %d of %d windows done (%d rows), %d not done",
  label, total.n, cov.n, WINDOWS, cov.rows, failed.n))

check("no candle stored twice", total.n == total.d, total.n .. " rows, " .. tostring(total.d) .. " distinct")
check("no window recorded failed", failed.n == 0, failed.e)
-- every done window holds exactly the candles of its span, and nothing
-- lies outside the done windows
local bad, detail = 0, nil
if has_cov then
  for _, w in ipairs(db:query("SELECT partition, window_start, window_end, rows FROM sluice_backfill"
      .. " WHERE status = 'done'") or {}) do
    local lo = math.max(w.window_start, FROM)
    local want = (w.window_end - lo) / 60
    local got = one("SELECT COUNT(*) AS n FROM klines WHERE raw_symbol = ? AND interval = '1m'"
      .. " AND open_time >= ? AND open_time < ?", w.partition, lo * 1000, w.window_end * 1000).n
    if got ~= want or w.rows ~= want then
      bad = bad + 1
      detail = detail or string.format("%s %d..%d: %d rows stored, %d recorded, %d expected",
        w.partition, lo, w.window_end, got, w.rows, want)
    end
  end
end
check("every done window holds exactly its candles", bad == 0, detail)
check("every stored candle belongs to a done window", total.n == cov.rows,
  total.n .. " stored, " .. cov.rows .. " in done windows")

if mode == "final" then
  check("all " .. WINDOWS .. " windows done", cov.n == WINDOWS, cov.n)
  check("2 x " .. N .. " candles", total.n == 2 * N, total.n)
  local outside = one("SELECT COUNT(*) AS n FROM klines WHERE open_time < ? OR open_time >= ?"
    .. " OR interval <> '1m' OR raw_symbol NOT IN ('BTCUSDT', 'ETHUSDT')", FROM * 1000, TO * 1000).n
  check("no row outside the range", outside == 0, outside)
  local clean = os.getenv("CLEAN") and assert(store.open(os.getenv("CLEAN")))
  for _, sym in ipairs(SYMBOLS) do
    local f = klines.figures(db, sym)
    check(sym .. ": " .. N .. " candles, none twice", f.n == N and f.d == N, f.n .. "/" .. tostring(f.d))
    check(sym .. ": first candle at the start", f.lo == FROM * 1000, f.lo)
    check(sym .. ": last candle one minute before the end", f.hi == (TO - 60) * 1000, f.hi)
    check(sym .. ": no gap", f.n and f.hi and (f.hi - f.lo + 60000 == f.n * 60000))
    if clean then
      local a, b = klines.checksum(db, sym), klines.checksum(clean, sym)
      print("# " .. sym .. " checksum " .. a)
      check(sym .. ": same checksums as a clean one-shot backfill", a == b, a .. " vs " .. b)
    end
  end
  if clean then clean:close() end
end
db:close()
LUA

# run_check MODE LABEL [CLEAN]: counts the checker's ok / not ok lines.
run_check() {
  local line
  while IFS= read -r line; do
    case "$line" in
      "ok - "*) ok "${line#ok - }" ;;
      "not ok - "*) not_ok "${line#not ok - }" ;;
      *) echo "$line" ;;
    esac
  done < <(env DB="$WORK/crash.db" MODE="$1" LABEL="$2" CLEAN="${3:-}" FROM=$FROM TO=$TO N=$N \
    WINDOWS=$WINDOWS timeout 60 "$SLUICE" run --lua-path "$SPEC_LUA" "$WORK/check.lua" 2>&1 ||
    echo "not ok - $2checker exited $?")
}

backfill() { # backfill DB RATE [args...]: the command, in the foreground
  local db=$1 rate=$2; shift 2
  env DB="$db" RATE="$rate" timeout 120 "$SLUICE" backfill "$WORK/bf.lua" binance_klines \
    --from $FROM --to $TO "$@"
}

# 1. Kill it at seeded random moments, restarting each time. At 20 requests
#    (windows) a second a whole run takes over 2 s, so the kills land
#    mid-job, with windows in flight and commits under way.
kills=0
for attempt in $(seq 1 "$KILLS"); do
  delay_ms=$((50 + RANDOM % 551))
  delay=$(printf "%d.%03d" $((delay_ms / 1000)) $((delay_ms % 1000)))
  env DB="$WORK/crash.db" RATE=20 "$SLUICE" backfill "$WORK/bf.lua" binance_klines \
    --from $FROM --to $TO --parallel 4 >"$WORK/run$attempt.out" 2>&1 &
  pid=$!
  sleep "$delay"
  if kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null  # (no "Killed" job notice)
    code=$?
    kills=$((kills + 1))
    echo "# attempt $attempt: SIGKILL after ${delay}s (exit $code)"
    check "attempt $attempt: the process died of SIGKILL" test "$code" = 137
  else
    wait "$pid"
    code=$?
    echo "# attempt $attempt: the run ended (exit $code) before the kill at ${delay}s"
  fi
  run_check partial "after attempt $attempt: "
done
check "killed at least $MIN_KILLS times mid-job ($kills)" test "$kills" -ge "$MIN_KILLS"

# 2. Run it to completion.
expect_exit "the resumed backfill completes (exit 0)" 0 backfill "$WORK/crash.db" 200 --parallel 4
sed 's/^/    /' "$WORK/out"
contains "it reports no failed window" "$WORK/out" ", 0 failed,"

# 3. A clean one-shot backfill into another database, to compare with.
expect_exit "a clean one-shot backfill completes" 0 backfill "$WORK/clean.db" 200 --parallel 4
contains "the clean backfill fetched every window" "$WORK/out" \
  "binance_klines: done; $WINDOWS of $WINDOWS windows done, 0 failed, 0 skipped; $((2 * N)) rows"

run_check final "final: " "$WORK/clean.db"

# 4. Nothing is left to fetch, and a repeated run fetches nothing.
expect_exit "--plan after the end" 0 backfill "$WORK/crash.db" 200 --plan
contains "the plan is empty" "$WORK/out" "binance_klines: 0 windows to fetch, $WINDOWS already done"
contains "and estimates nothing" "$WORK/out" "estimate: 0 requests, 0 rows"
expect_exit "a repeated backfill" 0 backfill "$WORK/crash.db" 200
contains "fetches nothing" "$WORK/out" \
  "binance_klines: done; 0 of 0 windows done, 0 failed, $WINDOWS skipped; 0 rows, 0 requests"
# Dates on the command line are UTC days: 2024-01-01 .. 2024-01-13 lies
# inside what is stored.
expect_exit "--plan with dates" 0 env DB="$WORK/crash.db" RATE=200 "$SLUICE" backfill "$WORK/bf.lua" \
  binance_klines --from 2024-01-01 --to 2024-01-13 --plan
contains "dates name the same UTC days as epoch seconds" "$WORK/out" "binance_klines: 0 windows to fetch"
run_check final "after the repeated runs: " "$WORK/clean.db"

# 5. The checker itself catches a lost candle (a doctored copy).
cp "$WORK/crash.db" "$WORK/doctored.db"
cat >"$WORK/doctor.lua" <<'LUA'
local db = assert(require("sluice.store").open(os.getenv("DB")))
assert(db:exec("DELETE FROM klines WHERE raw_symbol = 'ETHUSDT' AND open_time = ?", (1704067200 + 5000 * 60) * 1000) == 1)
db:close()
LUA
env DB="$WORK/doctored.db" "$SLUICE" run "$WORK/doctor.lua"
env DB="$WORK/doctored.db" MODE=final LABEL="doctored: " FROM=$FROM TO=$TO N=$N WINDOWS=$WINDOWS \
  "$SLUICE" run --lua-path "$SPEC_LUA" "$WORK/check.lua" >"$WORK/doctored.out" 2>&1
contains "the checker sees a lost candle's window" "$WORK/doctored.out" \
  "not ok - doctored: every done window holds exactly its candles (ETHUSDT 1704360000..1704420000: 999 rows stored, 1000 recorded"
contains "and the gap" "$WORK/doctored.out" "not ok - doctored: ETHUSDT: no gap"

finish
