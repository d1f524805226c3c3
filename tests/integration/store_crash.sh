#!/usr/bin/env bash
# store_crash.sh -- sluice.store with its background checkpoint thread under
# SIGKILL and SIGTERM. A sluice process upserts 200-row batches (new keys
# 1, 2, 3, ...) every 2 ms and prints "committed N checkpoints C" after each
# commit. It is killed with SIGKILL 3 times, each at a seeded moment after
# the background thread has checkpointed at least once in that run, and
# restarted (it continues from the largest key): after every kill the table
# must hold every row a "committed" line reported, with keys 1..count and no
# gap, and pass PRAGMA integrity_check. Last, SIGTERM: sluice exits 0 and
# leaves no -wal file (the thread's connection was closed before the last
# one, whose close checkpointed and removed the WAL). STORE_CRASH_SEED
# overrides the seed.
. "$(dirname "$0")/common.bash"

SEED=${STORE_CRASH_SEED:-22}
RANDOM=$SEED
DB="$WORK/store.db"
echo "# seed $SEED"

cat >"$WORK/writer.lua" <<'LUA'
local sluice = require "sluice"
local store = require "sluice.store"
local db = assert(store.open(os.getenv("DB")))
assert(db:define({ name = "ticks", key = { "id" }, columns = { id = "integer", pad = "text" } }))
local last = db:query("SELECT COALESCE(MAX(id), 0) AS m FROM ticks")[1].m
local pad = string.rep("p", 500)
sluice.every(0.002, function(premature)
  if premature then return end
  local rows = {}
  for i = 1, 200 do rows[i] = { id = last + i, pad = pad } end
  assert(db:upsert("ticks", rows) == 200)
  last = last + 200
  io.write(string.format("committed %d checkpoints %d\n", last, db:stats().checkpoint.checkpoints))
  io.flush()
end)
LUA

# count.lua: "<count> <max id> <integrity_check>" of the table.
cat >"$WORK/count.lua" <<'LUA'
local store = require "sluice.store"
local db = assert(store.open(os.getenv("DB"), { checkpoint = "inline" }))
local r = db:query("SELECT COUNT(*) AS n, COALESCE(MAX(id), 0) AS m FROM ticks")[1]
print(r.n, r.m, db:query("PRAGMA integrity_check")[1].integrity_check)
db:close()
LUA

# the last "committed" line's N (0 when none)
last_committed() { awk '/^committed/ { n = $2 } END { print n + 0 }' "$1"; }
# a "committed" line at or past $2 rows with checkpoints >= 1 in file $1
checkpointed_past() {
  awk -v want="$2" '/^committed/ && $2 >= want && $4 >= 1 { found = 1 } END { exit !found }' "$1"
}

for round in 1 2 3; do
  before=$(last_committed "$WORK/out.$((round - 1))" 2>/dev/null || echo 0)
  target=$((before + 8000 + RANDOM % 8000))
  DB="$DB" "$SLUICE" run "$WORK/writer.lua" --control none >"$WORK/out.$round" 2>&1 &
  pid=$!
  if wait_until 60 checkpointed_past "$WORK/out.$round" "$target"; then
    kill -9 "$pid"
    wait "$pid" 2>/dev/null
    committed=$(last_committed "$WORK/out.$round")
    read -r count max integrity < <(DB="$DB" "$SLUICE" run "$WORK/count.lua" --control none)
    echo "# round $round: killed at $committed committed rows (target $target); table holds $count, max id $max"
    check "round $round: every committed row survived SIGKILL" [ "$count" -ge "$committed" ]
    check "round $round: keys 1..count, no gap" [ "$count" = "$max" ]
    check "round $round: integrity_check ok" [ "$integrity" = ok ]
  else
    kill -9 "$pid"
    wait "$pid" 2>/dev/null
    not_ok "round $round: no background checkpoint past $target rows within 60 s"
    sed 's/^/    /' "$WORK/out.$round" | tail -5
  fi
done

# SIGTERM: a clean shutdown joins the thread and closes both connections.
DB="$DB" "$SLUICE" run "$WORK/writer.lua" --control none >"$WORK/out.term" 2>&1 &
pid=$!
before=$(last_committed "$WORK/out.3")
if wait_until 60 checkpointed_past "$WORK/out.term" "$((before + 8000))"; then
  kill -TERM "$pid"
  if ended_within "$pid" 20; then
    check "SIGTERM: exit 0" [ "$code" = 0 ]
  else
    kill -9 "$pid"
    not_ok "SIGTERM: still running after 20 s"
  fi
  check "SIGTERM: no -wal file left" [ ! -e "$DB-wal" ]
  committed=$(last_committed "$WORK/out.term")
  read -r count max integrity < <(DB="$DB" "$SLUICE" run "$WORK/count.lua" --control none)
  check "SIGTERM: every committed row stored, no gap" [ "$count" -ge "$committed" -a "$count" = "$max" ]
  grep -q "ERROR\|AddressSanitizer\|LeakSanitizer\|runtime error" "$WORK/out.term" &&
    { not_ok "SIGTERM: errors in the output"; sed 's/^/    /' "$WORK/out.term" | grep -v '^committed' | head -20; }
else
  kill -9 "$pid"
  not_ok "SIGTERM run: no background checkpoint within 60 s"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
