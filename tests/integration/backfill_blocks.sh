#!/usr/bin/env bash
# backfill_blocks.sh -- `sluice backfill CONFIG evm_blocks --from 19000000
# --to 19010000`: a collector backfilling by block number (backfill_unit =
# "blocks", support.blocks) against a node each process serves itself.
# The CLI plans and prints the range in blocks and refuses a date or a
# missing --to naming the unit; two processes with their own stores share
# the range through a real redis-server, every block window fetched once
# between them and every block stored once in their stores together; then
# one is killed with SIGKILL mid-job and the same command on its store
# resumes: every block there exactly once, no window fetched twice but
# those in flight at the kill.
. "$(dirname "$0")/common.bash"

FROM=19000000
TO=19020000            # 20 windows of 1000 blocks per chain
N=$((TO - FROM))
WINDOWS=40             # 2 chains

start_redis || { finish; exit 1; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; stop_redis; wait 2>/dev/null; rm -rf "$WORK"' EXIT

cat >"$WORK/evm_blocks.lua" <<'LUA'
return require("support.blocks").spec()
LUA
# Each process starts its node and, at shutdown, appends the windows its
# node answered (200) to REQLOG: "chain from to".
cat >"$WORK/bf.lua" <<LUA
local sluice = require "sluice"
local node = require("support.blocks").node()
sluice.on_shutdown(function()
  local f = assert(io.open(os.getenv("REQLOG"), "a"))
  for _, e in ipairs(node.log) do
    if e.status == 200 then f:write(e.chain, " ", string.format("%d %d", e.from, e.to), "\n") end
  end
  f:close()
  node:stop()
end)
local rate = tonumber(os.getenv("RATE"))
return { store = os.getenv("DB"), redis = "redis://127.0.0.1:$REDIS_PORT/0", log = { level = "warning" },
  collectors = { { file = "evm_blocks.lua", base_url = node.url, chains = { "eth", "base" },
    limiter = { rate = rate, max_rate = rate },
    retry = { max_attempts = 3, base_delay = 0.05, max_delay = 0.2 } } } }
LUA

# union.lua: the blocks of the stores DBS together; prints
# "total distinct missing wrong_hash".
cat >"$WORK/union.lua" <<'LUA'
local store = require "sluice.store"
local blocks = require "support.blocks"
local FROM, TO = tonumber(os.getenv("FROM")), tonumber(os.getenv("TO"))
local seen, total, wrong = {}, 0, 0
for path in os.getenv("DBS"):gmatch("%S+") do
  local db = assert(store.open(path))
  for _, r in ipairs(assert(db:query("SELECT chain, number, hash FROM blocks"))) do
    seen[r.chain .. "/" .. string.format("%d", r.number)] = true
    if r.hash ~= blocks.hash(r.chain, r.number) then wrong = wrong + 1 end
    total = total + 1
  end
  db:close()
end
local distinct, missing = 0, 0
for _ in pairs(seen) do distinct = distinct + 1 end
for _, chain in ipairs({ "eth", "base" }) do
  for n = FROM, TO - 1 do
    if not seen[chain .. "/" .. string.format("%d", n)] then missing = missing + 1 end
  end
end
print(total, distinct, missing, wrong)
LUA
union() { env DBS="$*" FROM=$FROM TO=$TO "$SLUICE" run --lua-path "$SPEC_LUA" "$WORK/union.lua" --control none; }

bf() { # bf NAME RATE [args...]: one instance on its own store
  local name=$1 rate=$2; shift 2
  env DB="$WORK/$name.db" REQLOG="$WORK/$name.req" RATE="$rate" timeout 120 "$SLUICE" backfill \
    --lua-path "$SPEC_LUA" "$WORK/bf.lua" evm_blocks "$@"
}
done_of() { sed -n 's/.*; \([0-9]*\) of [0-9]* windows done.*/\1/p' "$WORK/$1.out"; }

# 1. The command line, by blocks.
expect_exit "--plan by blocks" 0 bf p 100 --from $FROM --to $TO --plan
contains "plans every window" "$WORK/out" "evm_blocks: $WINDOWS windows to fetch, 0 already done"
contains "prints the range in blocks" "$WORK/out" "range    blocks $FROM..$TO, windows of 1000 blocks"
expect_exit "a date for a block collector is a usage error" 2 bf p 100 --from 2024-01-01 --to $TO
contains "naming the unit" "$WORK/out" \
  "--from '2024-01-01': collector 'evm_blocks' backfills by blocks: expected an integer from 0 to 2^53, not a date"
expect_exit "a block number past 2^53 is refused" 2 bf p 100 --from $FROM --to 9007199254740993
contains "naming the unit" "$WORK/out" "--to '9007199254740993': collector 'evm_blocks' backfills by blocks"
expect_exit "no --to is a usage error" 2 bf p 100 --from $FROM
contains "saying what to give" "$WORK/out" "collector 'evm_blocks' backfills by blocks: 'to' is required"

# 2. A and B at once on the same range, sharing it through Redis.
bf a 60 --from $FROM --to $TO --parallel 2 >"$WORK/a.out" 2>&1 & pa=$!
bf b 60 --from $FROM --to $TO --parallel 2 >"$WORK/b.out" 2>&1 & pb=$!
wait $pa; ca=$?
wait $pb; cb=$?
check "A exits 0 (exit $ca)" test "$ca" = 0
check "B exits 0 (exit $cb)" test "$cb" = 0
sed 's/^/    /' "$WORK/a.out" "$WORK/b.out"
da=$(done_of a); db=$(done_of b)
check "A and B did every window between them once (A $da, B $db)" test "$((da + db))" = $WINDOWS
check "both took part" test "$da" -gt 0 -a "$db" -gt 0
contains "A reports B's windows as done elsewhere" "$WORK/a.out" \
  "elsewhere: $db windows done by other instances ($((db * 1000)) rows"
cat "$WORK/a.req" "$WORK/b.req" >"$WORK/ab.req"
check "the nodes answered $WINDOWS windows in all ($(wc -l <"$WORK/ab.req"))" test "$(wc -l <"$WORK/ab.req")" = $WINDOWS
check "no window was fetched twice" test "$(sort -u "$WORK/ab.req" | wc -l)" = $WINDOWS
check "each asked for by its exact block bounds" test "$(awk -v f=$FROM \
  '($2 - f) % 1000 != 0 || $3 != $2 + 1000 { bad++ } END { print bad + 0 }' "$WORK/ab.req")" = 0
read -r total distinct missing wrong < <(union "$WORK/a.db" "$WORK/b.db")
check "the stores together hold every block once ($total rows, $distinct distinct, $missing missing, $wrong wrong)" \
  test "$total" = $((2 * N)) -a "$distinct" = $((2 * N)) -a "$missing" = 0 -a "$wrong" = 0
keys=$(redis-cli -p "$REDIS_PORT" --scan --pattern 'backfill:evm_blocks:*' | wc -l)
check "one done mark per window, keyed by block number ($keys)" test "$keys" = $WINDOWS
redis-cli -p "$REDIS_PORT" get "backfill:evm_blocks:base:$((FROM + 19000))" >"$WORK/mark"
contains "the mark covers the window's blocks" "$WORK/mark" "\"from\":$((FROM + 19000))"
contains "to its end" "$WORK/mark" "\"to\":$TO"

# 3. C is killed with SIGKILL mid-job; the same command on its store
#    resumes (a fresh Redis database of marks: C's claims expire, 2 s).
redis-cli -p "$REDIS_PORT" flushall >/dev/null
env DB="$WORK/c.db" REQLOG="$WORK/c.req" RATE=20 "$SLUICE" backfill --lua-path "$SPEC_LUA" "$WORK/bf.lua" \
  evm_blocks --from $FROM --to $TO --parallel 2 --claim-ttl 2 >"$WORK/c.out" 2>&1 &
pc=$!
pids+=($pc)
committed() { # windows C has recorded done
  env DB="$WORK/c.db" "$SLUICE" run "$WORK/count.lua" --control none 2>/dev/null
}
cat >"$WORK/count.lua" <<'LUA'
local db = require("sluice.store").open(os.getenv("DB"))
local r = db and db:query("SELECT COUNT(*) AS n FROM sluice_backfill WHERE status = 'done'")
print(r and r[1].n or 0)
LUA
some_done() { [ "$(committed)" -ge 4 ]; }
wait_until 20 some_done
kill -KILL $pc
wait $pc 2>/dev/null
before=$(committed)
check "C was killed mid-job ($before of $WINDOWS windows committed)" test "$before" -ge 4 -a "$before" -lt $WINDOWS
# (a killed process writes no REQLOG: C's node requests are not counted)
bf c 200 --from $FROM --to $TO --parallel 2 --claim-ttl 2 >"$WORK/c2.out" 2>&1
code=$?
check "the same command resumes and exits 0 (exit $code)" test "$code" = 0
sed 's/^/    /' "$WORK/c2.out"
contains "fetching only what C had not committed" "$WORK/c2.out" \
  "$((WINDOWS - before)) of $((WINDOWS - before)) windows done, 0 failed, $before skipped"
check "the resumed run asked each of those windows once" test "$(sort -u "$WORK/c.req" | wc -l)" = "$(wc -l <"$WORK/c.req")"
read -r total distinct missing wrong < <(union "$WORK/c.db")
check "C's store holds every block exactly once ($total rows, $missing missing)" \
  test "$total" = $((2 * N)) -a "$distinct" = $((2 * N)) -a "$missing" = 0 -a "$wrong" = 0

finish
