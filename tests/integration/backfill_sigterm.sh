#!/usr/bin/env bash
# backfill_sigterm.sh -- SIGTERM during `sluice backfill`: the windows in
# flight end before the store closes (no "database is closed"), the
# process exits 0 and says where it stopped, the store holds only whole
# windows, none recorded failed, and running the command again resumes
# and completes. The exchange is the mock Binance inside the process.
. "$(dirname "$0")/common.bash"

FROM=1704067200        # 2024-01-01T00:00:00Z
N=20000                # 1m candles per symbol
TO=$((FROM + N * 60))
WINDOWS=42             # 21 windows of 1000 minutes per symbol

backfill_config "$WORK/bf.lua" info

cat >"$WORK/count.lua" <<'LUA'
local store = require "sluice.store"
local db = assert(store.open(os.getenv("DB")))
local function one(sql) local r = db:query(sql); return r and r[1] or {} end
local has = one("SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'sluice_backfill'").n == 1
local done = has and one("SELECT COUNT(*) AS n, COALESCE(SUM(rows), 0) AS rows FROM sluice_backfill"
  .. " WHERE status = 'done'") or { n = 0, rows = 0 }
local other = has and one("SELECT COUNT(*) AS n FROM sluice_backfill WHERE status <> 'done'").n or 0
local has_k = one("SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'klines'").n == 1
local stored = has_k and one("SELECT COUNT(*) AS n FROM klines").n or 0
print(string.format("%d %d %d %d", done.n, done.rows, other, stored))
db:close()
LUA
counts() { DB="$WORK/bf.db" "$SLUICE" run "$WORK/count.lua" --control none; }

# 4 windows a second: the job takes ~10 s, so the signal lands mid-job
DB="$WORK/bf.db" RATE=4 "$SLUICE" backfill "$WORK/bf.lua" binance_klines \
  --from $FROM --to $TO --parallel 4 >"$WORK/run1.out" 2>&1 &
pid=$!
two_done() {
  local done_n
  read -r done_n _ _ _ < <(counts 2>/dev/null || echo "0 0 0 0")
  [ "${done_n:-0}" -ge 2 ]
}
check "some windows were done before the signal" wait_until 10 two_done
kill -TERM "$pid"
wait "$pid"
code=$?
check "SIGTERM: exit 0 (got $code)" test "$code" = 0
sed 's/^/    /' "$WORK/run1.out" | grep -v '"msg":"backfill progress"' | tail -8
if grep -q "database is closed" "$WORK/run1.out"; then
  not_ok "no 'database is closed'"; else ok "no 'database is closed'"; fi
contains "the summary says it was stopped" "$WORK/run1.out" "binance_klines: cancelled;"
contains "and where to resume" "$WORK/run1.out" "run the same command again to resume (done windows are skipped)"
contains "the log says it too" "$WORK/run1.out" '"msg":"backfill stopped by shutdown; running it again resumes"'
read -r done1 rows1 other1 stored1 < <(counts)
echo "# after SIGTERM: $done1 windows done ($rows1 rows), $other1 not done, $stored1 candles stored"
check "windows done before the end ($done1 < $WINDOWS)" test "$done1" -lt "$WINDOWS"
check "no window recorded failed ($other1)" test "$other1" = 0
check "only the done windows' candles are stored ($stored1 = $rows1)" test "$stored1" = "$rows1"
summary=$(grep -F "windows done, 0 failed" "$WORK/run1.out")
check "the summary counts the stored windows" grep -qF "; $done1 of $WINDOWS windows done, 0 failed" <<<"$summary"
next=$(grep -o "next window: [A-Z]* from [0-9TZ:-]* ([0-9]*)" "$WORK/run1.out")
check "the summary names the next window ($next)" test -n "$next"

# Running it again resumes: the done windows are skipped, the rest fetched.
expect_exit "the re-run completes (exit 0)" 0 env DB="$WORK/bf.db" RATE=200 \
  "$SLUICE" backfill "$WORK/bf.lua" binance_klines --from $FROM --to $TO --parallel 4
contains "it skips the windows done before" "$WORK/out" \
  "binance_klines: done; $((WINDOWS - done1)) of $((WINDOWS - done1)) windows done, 0 failed, $done1 skipped"
read -r done2 rows2 other2 stored2 < <(counts)
check "all windows done ($done2), every candle once ($stored2)" \
  test "$done2" = "$WINDOWS" -a "$stored2" = $((2 * N)) -a "$rows2" = $((2 * N)) -a "$other2" = 0
finish
