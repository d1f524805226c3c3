#!/usr/bin/env bash
# fleet_postgres.sh -- a fleet writing into one PostgreSQL: three sluice
# instances (each with its own SQLite store) share six collectors through
# Redis leases (lease_ttl 2 s), all with the postgres sink pointing at one
# server, all collectors writing into one table. The holder of the most
# leases is killed with SIGKILL mid-run; its leases expire and the others
# take its collectors over. At the end the shared table holds every
# expected row exactly once with exactly the expected values.
#
# The collectors are deterministic, so the expected rows are computable:
# collector wK, run at time t, emits the 1 s windows w from max(W0, t - 12)
# to t (a lookback, like a klines collector re-reading its last candles),
# five rows per window, keyed (src, w, i), with values that are functions of
# the key only (int64 near 2^63, a uint256 up to 2^256-1, a decimal). The
# table is then, for every collector, every window from W0 to the last one
# it reached, five rows each: the lookback (12 s) covers the takeover (at
# most 4/3 of the TTL) and the rows the killed instance queued but never
# forwarded, which its successor emits again.
. "$(dirname "$0")/common.bash"

TTL=2
N=6 # collectors w1..w6
declare -A pid admin
stop_all() {
  local p
  for p in "${pid[@]}"; do kill -9 "$p" 2>/dev/null; done
  stop_redis
  shutdown_postgres
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap stop_all EXIT
start_redis || { finish; exit 1; }
start_postgres || { finish; exit 1; }
echo "# redis on $REDIS_PORT, postgres on $PG_PORT"

cat >"$WORK/w.lua" <<'LUA'
local sluice = require "sluice"
local collector = require "sluice.collector"
local MAX_U = "115792089237316195423570985008687907853269984665640564039457584007913129639935"
local W0, K = tonumber(os.getenv("W0")), 12
local FLAG = os.getenv("FLAG")
return collector.define({
  name = "w", interval = 0.5, limiter = false, breaker = false, retry = false,
  options = { k = 0 },
  tables = { fleet = { key = { "src", "w", "i" }, columns = { src = "text", w = "integer", i = "integer",
    big = "integer", u = "uint256", p = "decimal" } } },
  collect = function(self)
    local f = io.open(FLAG)
    if not f then return { fleet = {} } end
    f:close()
    local k = self.options.k
    local now = math.floor(sluice.time())
    local rows = {}
    for w = math.max(W0, now - K), now do
      for i = 0, 4 do
        rows[#rows + 1] = { src = "w" .. k, w = w, i = i, big = 9223372036854775807LL - w * 10 - i,
          u = i == 0 and MAX_U or ("1157920892373161954235709850086879078532699846656405640394575840079131296399" .. i),
          p = string.format("%d.%d0", w, k * 10 + i) }
      end
    end
    return { fleet = rows }
  end,
})
LUA
W0=$(( ${EPOCHREALTIME%.*} + 1 ))
cat >"$WORK/node.lua" <<LUA
-- the collectors listed in \$SET (all when it is missing)
local f = io.open(os.getenv("SET"))
local set = f and f:read("*a") or "$(seq -s ' ' 1 $N)"
if f then f:close() end
local entries = {}
for k in set:gmatch("%d+") do entries[#entries + 1] = { file = "w.lua", name = "w" .. k, k = tonumber(k) } end
return {
  store = os.getenv("DB"), log = { level = "warning" },
  admin = { port = tonumber(os.getenv("ADMIN_PORT")) },
  redis = "redis://127.0.0.1:$REDIS_PORT/0", lease_ttl = $TTL,
  sinks = { postgres = { url = "$PG_URL", batch = 500, max_age = 0.1, connect_timeout = 2, timeout = 5,
    retry = { base_delay = 0.05, max_delay = 0.5 } } },
  collectors = entries,
}
LUA

# runs INST: "name collections_completed" for each collector of INST.
runs() {
  curl -s --max-time 5 "http://127.0.0.1:${admin[$1]}/status" | python3 -c '
import json, sys
d = json.load(sys.stdin)
for n, c in sorted(d["collectors"].items()): print(n, c.get("collections_completed", 0))' 2>/dev/null
}
sinkv() {
  curl -s --max-time 5 "http://127.0.0.1:${admin[$1]}/status" |
    python3 -c "import json, sys; print(json.load(sys.stdin)['sinks']['postgres']['$2'])" 2>/dev/null
}
up() { [ -n "$(sinkv "$1" depth)" ]; }
# start INST: an instance with its own store and admin port.
start() {
  admin[$1]=$(free_port)
  env DB="$WORK/$1.db" ADMIN_PORT="${admin[$1]}" W0="$W0" FLAG="$WORK/flag" SET="$WORK/set_$1" \
    "$SLUICE" run "$WORK/node.lua" --control none >"$WORK/$1.out" 2>&1 &
  pid[$1]=$!
}
# snapshot FILE: "collector runs instance" for every live instance.
snapshot() {
  local i
  for i in "${live[@]}"; do runs "$i" | sed "s/\$/ $i/"; done >"$1"
}
# grown BY: every collector's runs grew by BY or more in some live instance
# since $WORK/before; $WORK/holders: "collector instance" where it grew.
grown() {
  snapshot "$WORK/after"
  awk -v by="$1" 'FNR == NR { n[$1 " " $3] = $2; next } $2 >= n[$1 " " $3] + by { print $1, $3 }' \
    "$WORK/before" "$WORK/after" | sort >"$WORK/holders"
  [ "$(awk '{ print $1 }' "$WORK/holders" | sort -u | wc -l)" = $N ]
}
# each_held_once: every collector runs (twice) in exactly one live instance
# over a while.
each_held_once() {
  snapshot "$WORK/before"
  wait_until 10 grown 2 && [ "$(wc -l <"$WORK/holders")" = $N ]
}
pg_count() { pg_sql "SELECT count(*) FROM fleet" 2>/dev/null; }
# every collector has rows at windows >= $1 in PostgreSQL
all_reached() {
  [ "$(pg_sql "SELECT count(DISTINCT src) FROM fleet WHERE w >= $1" 2>/dev/null)" = $N ]
}

# The split: each instance starts with two of the collectors (and takes
# their leases), then every instance is given all six and reloads (a
# holder keeps its leases over a reload; the others stand by): the same
# configuration everywhere, the collectors split 2/2/2 by the leases.
touch "$WORK/flag"
echo "1 2" >"$WORK/set_a"; echo "3 4" >"$WORK/set_b"; echo "5 6" >"$WORK/set_c"
for i in a b c; do start $i; done
live=(a b c)
for i in a b c; do check "instance $i is up" wait_until 30 up $i; done
check "each instance runs its two collectors" wait_until 20 each_held_once
for i in a b c; do seq -s ' ' 1 $N >"$WORK/set_$i"; kill -HUP "${pid[$i]}"; done
all_listed() { [ "$(runs "$1" | wc -l)" = $N ]; }
for i in a b c; do check "$i reloads with all $N collectors" wait_until 20 all_listed $i; done
check "every collector is held by exactly one instance" wait_until 20 each_held_once
sed 's/^/#   /' "$WORK/holders"
# (each holder keeps its leases over its reload, says the README; a lease
# of a collector without a run in flight is seen to pass to another
# instance sometimes, so only the split itself is checked here)
split=$(awk '{ print $2 }' "$WORK/holders" | tr -d '\n')
check "the leases split them between the three instances ($split)" \
  test "$(awk '{ print $2 }' "$WORK/holders" | sort -u | wc -l)" = 3
check "every collector's rows reach PostgreSQL" wait_until 30 all_reached "$W0"

# The victim: the instance holding the most leases, killed while it runs.
victim=$(awk '{ print $2 }' "$WORK/holders" | sort | uniq -c | sort -rn | awk 'NR == 1 { print $2 }')
held=$(awk -v v="$victim" '$2 == v { print $1 }' "$WORK/holders" | tr '\n' ' ')
echo "# killing $victim (holding $held)"
killed_at=${EPOCHREALTIME%.*}
kill -9 "${pid[$victim]}"
wait "${pid[$victim]}" 2>/dev/null
code=$?
check "$victim died of SIGKILL ($code)" test "$code" = 137
unset "pid[$victim]"
live=()
for i in a b c; do [ "$i" != "$victim" ] && live+=("$i"); done
check "the others take its collectors over: each held once again" wait_until 20 each_held_once
sed 's/^/#   /' "$WORK/holders"
check "every collector's rows go on reaching PostgreSQL after the kill" \
  wait_until 30 all_reached $((killed_at + 3))

# Collection off, the survivors' outboxes drained, then stopped.
rm -f "$WORK/flag"
stop_at=${EPOCHREALTIME%.*}
drained() { [ "$(sinkv "$1" depth)" = 0 ]; }
# a run that began before the flag went may still queue rows: wait for two
# more runs of every collector, then for the outboxes to drain
snapshot "$WORK/before"
check "every collector runs twice more after collection was turned off" wait_until 20 grown 2
for i in "${live[@]}"; do
  check "$i's outbox drains" wait_until 30 drained "$i"
  check "$i has no dead letters ($(sinkv "$i" dead_letters))" test "$(sinkv "$i" dead_letters)" = 0
  kill -TERM "${pid[$i]}"
  check "$i stops on SIGTERM" ended_within "${pid[$i]}" 20
  check "$i exits 0 ($code)" test "$code" = 0
  unset "pid[$i]"
done

# The expected table, computed: every window from W0 to the last each
# collector reached (at least up to when collection was turned off).
pg_sql "SELECT src, w, i, big, u, p FROM fleet" | sort >"$WORK/got"
pg_sql "SELECT src, max(w) FROM fleet GROUP BY src ORDER BY src" >"$WORK/last"
sed 's/^/#   last window: /' "$WORK/last"
check "every collector wrote rows ($(wc -l <"$WORK/last"))" test "$(wc -l <"$WORK/last")" = $N
late=$(awk -F'|' -v s="$stop_at" '$2 < s - 2' "$WORK/last" | wc -l)
check "every collector collected until collection was turned off ($late late)" test "$late" = 0
MAX_U=115792089237316195423570985008687907853269984665640564039457584007913129639935
while IFS='|' read -r src last; do
  k=${src#w}
  for ((w = W0; w <= last; w++)); do
    for i in 0 1 2 3 4; do
      if [ $i = 0 ]; then u=$MAX_U; else u=1157920892373161954235709850086879078532699846656405640394575840079131296399$i; fi
      printf '%s|%d|%d|%d|%s|%d.%d0\n' "$src" $w $i $((9223372036854775807 - w * 10 - i)) "$u" $w $((k * 10 + i))
    done
  done
done <"$WORK/last" | sort >"$WORK/want"
echo "# $(wc -l <"$WORK/want") rows expected, $(wc -l <"$WORK/got") in PostgreSQL"
missing=$(comm -23 "$WORK/want" "$WORK/got" | wc -l)
extra=$(comm -13 "$WORK/want" "$WORK/got" | wc -l)
check "no expected row is missing ($missing)" test "$missing" = 0
check "no row differs from the expected ones ($extra)" test "$extra" = 0
check "PostgreSQL holds exactly the expected rows, once each" cmp -s "$WORK/want" "$WORK/got"
if [ "$missing" != 0 ] || [ "$extra" != 0 ]; then
  diff "$WORK/want" "$WORK/got" | head -n 10 | sed 's/^/    /'
fi
# dead letters of every instance (the killed one's too), from its store
cat >"$WORK/dead.lua" <<'LUA'
local db = assert(require("sluice.store").open(os.getenv("DB")))
local rows = db:query("SELECT COUNT(*) AS n, MIN(error) AS e FROM sluice_dead_letters")
print(rows[1].n .. (rows[1].e and (" " .. rows[1].e) or ""))
db:close()
LUA
# Two instances creating the shared table at once (their first batches)
# once made one CREATE TABLE IF NOT EXISTS fail with 23505, reported as
# refused data: a batch dead-lettered (tests/lua/sink_postgres_race_spec.lua).
for i in a b c; do
  dead=$(env DB="$WORK/$i.db" "$SLUICE" run "$WORK/dead.lua" --control none 2>&1)
  check "$i dead-lettered nothing ($dead)" test "$dead" = 0
done

finish
