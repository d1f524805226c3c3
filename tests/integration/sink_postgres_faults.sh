#!/usr/bin/env bash
# sink_postgres_faults.sh -- the PostgreSQL sink under faults, with exact
# final counts. A collector writes rows every 0.1 s (20 new keys a run and
# 10 hot keys updated every run; int64 extremes, uint256 up to 2^256-1,
# decimals with trailing zeros, doubles) into SQLite and the postgres sink
# forwards them to a private PostgreSQL server started here. Each part ends
# with collection off and the outbox drained, then dumps the local table and
# the sink's (through `sluice sql --sink postgres`) to sorted text with the
# same formatting and compares them line by line:
#  a. PostgreSQL stopped for 30 s mid-run, then restarted: collection goes
#     on meanwhile, the outbox grows and drains; no row lost, none doubled;
#  b. sluice killed with SIGKILL 5 times at random (seeded) moments while
#     forwarding and restarted each time: the same equality;
#  c. the outbox bound reached while PostgreSQL is down: on_full = "stop"
#     fails the collector's runs with the clear error and /health is
#     degraded with it; once PostgreSQL returns everything drains and
#     collection resumes. on_full = "drop_oldest" (new keys only): the
#     dropped counter of /status and /metrics equals the rows missing at the
#     sink, and every row there equals the local one; also with a batch in
#     flight (held by a lock) while rows are dropped (drop_oldest spares
#     the batch being written: its rows reach the sink).
# SINK_FAULTS_SEED overrides the seed of the kill delays, SINK_FAULTS_OUTAGE
# the outage (seconds), SINK_FAULTS_PARTS the parts run ("a b c").
. "$(dirname "$0")/common.bash"

SEED=${SINK_FAULTS_SEED:-19}
RANDOM=$SEED
OUTAGE=${SINK_FAULTS_OUTAGE:-30} # seconds PostgreSQL is down in part a (the issue's figure)
PARTS=${SINK_FAULTS_PARTS:-a b c}
part() { [[ " $PARTS " == *" $1 "* ]]; }
pid=""
lock_pid=""
stop_all() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
  [ -n "$lock_pid" ] && kill "$lock_pid" 2>/dev/null
  shutdown_postgres
  rm -rf "$WORK"
}
trap stop_all EXIT
start_postgres || { finish; exit 1; }
ADMIN_PORT=$(free_port)
echo "# seed $SEED, postgres on 127.0.0.1:$PG_PORT"

# The collector: rows while $FLAG exists, none once it is removed (so the
# outbox can drain with the process still up). TABLE names the table, HOT=0
# leaves the hot keys out (then every row is a new key).
cat >"$WORK/gen.lua" <<'LUA'
local sluice = require "sluice"
local collector = require "sluice.collector"
local TABLE, FLAG = os.getenv("TABLE"), os.getenv("FLAG")
local HOT = os.getenv("HOT") ~= "0"
local MAX_U = "115792089237316195423570985008687907853269984665640564039457584007913129639935"
local seq = 0
return collector.define({
  name = "gen", interval = 0.1, limiter = false, breaker = false, retry = false,
  tables = { [TABLE] = { key = { "id" }, columns = { id = "integer", v = "real", big = "integer",
    u = "uint256", p = "decimal", run = "integer" } } },
  collect = function()
    local f = io.open(FLAG)
    if not f then return { [TABLE] = {} } end
    f:close()
    seq = seq + 1
    local t = math.floor(sluice.time() * 1000)
    local rows = {}
    -- 20 new keys (unique across restarts: the time in ms)
    for i = 11, 30 do
      rows[#rows + 1] = { id = t * 100 + i, v = i / 7, big = 9223372036854775807LL - i,
        u = i == 11 and MAX_U or ("1157920892373161954235709850086879078532699846656405640394575840079131296399"
          .. (i % 10)),
        p = string.format("%d.%02d0", t % 100000, i), run = seq }
    end
    -- 10 hot keys, updated every run
    for i = 1, HOT and 10 or 0 do
      rows[#rows + 1] = { id = i, v = t / 1000 + i / 3, big = -9223372036854775807LL + t,
        u = tostring(t) .. "000000000000000000000000000000", p = "-" .. t .. ".5", run = seq }
    end
    return { [TABLE] = rows }
  end,
})
LUA
cat >"$WORK/beat.lua" <<'LUA'
return require("sluice.collector").define({
  name = "beat", interval = 0.2, limiter = false, breaker = false, retry = false,
  collect = function() return {} end,
})
LUA
cat >"$WORK/sluice.lua" <<LUA
return {
  store = os.getenv("DB"), log = { level = "warning" }, admin = { port = $ADMIN_PORT },
  sinks = { postgres = { url = "$PG_URL", batch = 200, max_age = 0.05,
    max_rows = tonumber(os.getenv("MAX_ROWS") or "1000000"), on_full = os.getenv("ON_FULL") or "stop",
    connect_timeout = 2, timeout = 5, retry = { base_delay = 0.05, max_delay = 0.5 },
    breaker = { timeout = 0.5, max_timeout = 1 } } },
  -- beat stores nothing: it stays healthy while gen fails (then /health is
  -- degraded, not unhealthy)
  collectors = { { file = "gen.lua" }, { file = "beat.lua" } },
}
LUA

# dump_local DB TABLE: the local table as sluice sql prints the sink's
# (its formatting of each value, fields in the order of SELECT_COLS), sorted.
SELECT_COLS="id, big, u, p, v, run"
cat >"$WORK/dump_local.lua" <<'LUA'
local json = require "sluice.json"
local db = assert(require("sluice.store").open(os.getenv("DB")))
local function text(v)
  if v == nil then return "" end
  if type(v) == "number" then return json.number(v) or tostring(v) end
  return json.int64_text(v) or json.numeral_text(v) or tostring(v)
end
local out = {}
for _, r in ipairs(assert(db:query("SELECT " .. os.getenv("COLS") .. " FROM " .. os.getenv("TABLE")))) do
  out[#out + 1] = table.concat({ text(r.id), text(r.big), text(r.u), text(r.p), text(r.v), text(r.run) }, "|")
end
db:close()
io.stdout:write(table.concat(out, "\n"), #out > 0 and "\n" or "")
LUA
dump_local() {
  env DB="$1" TABLE="$2" COLS="$SELECT_COLS" "$SLUICE" run "$WORK/dump_local.lua" --control none | sort
}
# dump_sink TABLE: the sink's table through `sluice sql --sink postgres`.
dump_sink() {
  "$SLUICE" sql "$WORK/sluice.lua" --sink postgres "SELECT $SELECT_COLS FROM $1" | tail -n +2 | sort
}
# same_tables LABEL DB TABLE: the sink's table equals the local one, line
# by line (key, count and every value).
same_tables() {
  dump_local "$2" "$3" >"$WORK/local.txt"
  dump_sink "$3" >"$WORK/sink.txt"
  local nl ns
  nl=$(wc -l <"$WORK/local.txt"); ns=$(wc -l <"$WORK/sink.txt")
  echo "# $1: $nl local rows, $ns rows at the sink"
  check "$1: the local table has rows" test "$nl" -gt 0
  check "$1: the sink has as many rows as the local table ($ns vs $nl)" test "$ns" = "$nl"
  if cmp -s "$WORK/local.txt" "$WORK/sink.txt"; then ok "$1: the sink's table equals the local one, value by value"
  else
    not_ok "$1: the sink's table equals the local one, value by value"
    diff "$WORK/local.txt" "$WORK/sink.txt" | head -n 10 | sed 's/^/    /'
  fi
}

# st EXPR: a value of /status (python expression over d), or of /health (h)
# or /metrics (m: the sample of a series, by its full name).
st() {
  curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/status" |
    python3 -c "import json, sys; d = json.load(sys.stdin); print($1)" 2>/dev/null
}
health() {
  curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/health" |
    python3 -c "import json, sys; h = json.load(sys.stdin); print($1)" 2>/dev/null
}
metric() {
  curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v s="$1" '$1 == s { print $2 }'
}
is_healthy() { [ "$(health "h['status']")" = healthy ]; }
is_degraded() { [ "$(health "h['status']")" = degraded ]; }
degraded_for() { health "' '.join(h.get('degraded') or [])" | grep -qF "$1"; }
contains_breaker() { degraded_for "sink 'postgres' is unreachable (breaker open)"; }
sinkv() { st "d['sinks']['postgres']['$1']"; }
genv() { st "d['collectors']['gen']['$1']"; }
# at_least FIELD N: the sink's /status FIELD is >= N.
at_least() { local v; v=$(sinkv "$1"); [ -n "$v" ] && [ "${v%.*}" -ge "$2" ]; }
at_most() { local v; v=$(sinkv "$1"); [ -n "$v" ] && [ "${v%.*}" -le "$2" ]; }
runs() { genv collections_completed; }
more_runs() { local r; r=$(runs); [ -n "$r" ] && [ "$r" -ge "$1" ]; }

# start_sluice DB TABLE [ENV...]: sluice collecting into TABLE of DB; $pid.
start_sluice() {
  local db=$1 table=$2; shift 2
  touch "$WORK/flag"
  env DB="$db" TABLE="$table" FLAG="$WORK/flag" "$@" "$SLUICE" run "$WORK/sluice.lua" --control none \
    >>"$WORK/sluice.out" 2>&1 &
  pid=$!
  wait_until 30 st "d['service']" >/dev/null
}
# quiesce LABEL: collection off (the flag removed, then two runs that
# started after it), the outbox drained (depth 0 for 60 s at most).
quiesce() {
  rm -f "$WORK/flag"
  local r; r=$(runs)
  check "$1: two runs without rows after collection was turned off" wait_until 20 more_runs $(( ${r:-0} + 2 ))
  check "$1: the outbox drains (depth $(sinkv depth))" wait_until 60 at_most depth 0
}
stop_sluice() {
  kill -TERM "$pid"
  check "$1: sluice stops on SIGTERM" ended_within "$pid" 20
  check "$1: and exits 0 ($code)" test "$code" = 0
  pid=""
}

# --- a. PostgreSQL down for 30 s ----------------------------------------------
if part a; then
start_sluice "$WORK/a.db" ticks_a
check "a: rows reach PostgreSQL" wait_until 30 at_least forwarded 500
stop_postgres
down_at=$EPOCHREALTIME
echo "# a: postgres stopped"
f0=$(sinkv forwarded); c0=$(genv data_points_collected)
check "a: the sink's writes fail while it is down" wait_until 20 at_least errors 1
check "a: the outbox grows while it is down" wait_until 20 at_least depth 1000
check "a: /health is degraded while the sink is unreachable" wait_until 20 is_degraded
check "a: /health names the sink's open breaker" wait_until 20 contains_breaker
# the outage lasts OUTAGE seconds (its length is the scenario, not a wait
# for something to happen)
sleep "$(awk -v a="$down_at" -v b="$EPOCHREALTIME" -v o=$OUTAGE 'BEGIN { d = o - (b - a); if (d < 0) d = 0; print d }')"
f1=$(sinkv forwarded); c1=$(genv data_points_collected)
check "a: collection went on during the outage ($c0 -> $c1 rows)" test "$c1" -ge $((c0 + 3000))
check "a: nothing was forwarded during the outage ($f0 -> $f1)" test "$f1" -le $((f0 + 200))
check "a: postgres restarts" restart_postgres
echo "# a: postgres restarted after $(awk -v a="$down_at" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
check "a: the outbox drains while collection goes on (depth <= 300)" wait_until 60 at_most depth 300
check "a: /health is healthy again" wait_until 20 is_healthy
quiesce a
check "a: no dead letters" test "$(sinkv dead_letters)" = 0
stop_sluice a
same_tables a "$WORK/a.db" ticks_a
hot=$(pg_sql "SELECT count(*), min(run) > 1 FROM ticks_a WHERE id <= 10")
check "a: the hot keys are one row each at the sink, updated after the first run ($hot)" test "$hot" = "10|t"
echo "# a: ${SECONDS}s so far"
fi

# --- b. sluice killed 5 times while forwarding --------------------------------
if part b; then
kills=0
for attempt in 1 2 3 4 5; do
  start_sluice "$WORK/b.db" ticks_b
  f0=$(sinkv forwarded) # (the counter is kept in the store across restarts)
  check "b$attempt: forwarding" wait_until 30 at_least forwarded $(( ${f0:-0} + 1 ))
  delay_ms=$((200 + RANDOM % 1000))
  delay=$(printf "%d.%03d" $((delay_ms / 1000)) $((delay_ms % 1000)))
  sleep "$delay" # the random moment of the kill
  kill -KILL "$pid"
  wait "$pid" 2>/dev/null
  code=$?
  pid=""
  echo "# b$attempt: SIGKILL ${delay}s after forwarding began (exit $code)"
  [ "$code" = 137 ] && kills=$((kills + 1))
done
check "b: killed 5 times by SIGKILL ($kills)" test "$kills" = 5
start_sluice "$WORK/b.db" ticks_b
quiesce b
stop_sluice b
same_tables b "$WORK/b.db" ticks_b
echo "# b: ${SECONDS}s so far"
fi

# --- c. the outbox bound reached while PostgreSQL is down ---------------------
if part c; then
# on_full = "stop"
start_sluice "$WORK/c.db" ticks_c MAX_ROWS=500 ON_FULL=stop
check "c-stop: rows reach PostgreSQL" wait_until 30 at_least forwarded 60
stop_postgres
echo "# c-stop: postgres stopped"
full_error() { st "d['collectors']['gen'].get('last_error', '')" | grep -qF "sink 'postgres': outbox full ("; }
check "c-stop: the collector's runs fail with 'outbox full'" wait_until 20 full_error
full_health() { degraded_for "sink 'postgres': outbox full ("; }
check "c-stop: /health is degraded with the reason" wait_until 20 full_health
check "c-stop: /health status degraded ($(health "h['status']"))" test "$(health "h['status']")" = degraded
check "c-stop: the outbox is at most at its bound ($(sinkv depth))" at_most depth 500
check "c-stop: /status shows it full" test "$(sinkv full)" = True
n0=$(genv data_points_collected)
failures() { metric 'sluice_collection_requests_total{collector="gen",status="error"}'; }
more_failures() { local v; v=$(failures); [ -n "$v" ] && [ "${v%.*}" -ge "$1" ]; }
e0=$(failures)
check "c-stop: runs go on failing" wait_until 20 more_failures $(( ${e0%.*} + 3 ))
n1=$(genv data_points_collected)
check "c-stop: nothing is collected while full ($n0 -> $n1)" test "$n1" = "$n0"
check "c-stop: postgres restarts" restart_postgres
collecting() { local v; v=$(genv data_points_collected); [ -n "$v" ] && [ "$v" -ge $((n1 + 300)) ]; }
check "c-stop: collection resumes once the outbox has room" wait_until 60 collecting
check "c-stop: /health is healthy again" wait_until 20 is_healthy
quiesce c-stop
stop_sluice c-stop
same_tables c-stop "$WORK/c.db" ticks_c
echo "# c-stop: ${SECONDS}s so far"

# on_full = "drop_oldest", new keys only: what is dropped is missing
start_sluice "$WORK/d.db" ticks_d MAX_ROWS=500 ON_FULL=drop_oldest HOT=0
check "c-drop: rows reach PostgreSQL" wait_until 30 at_least forwarded 60
stop_postgres
echo "# c-drop: postgres stopped"
check "c-drop: the oldest rows are dropped while it is down" wait_until 20 at_least dropped 400
check "c-drop: the outbox stays within its bound" at_most depth 500
check "c-drop: /health does not report the outbox full (nothing stops)" \
  test -z "$(health "' '.join(h.get('degraded') or [])" | grep -F 'outbox full')"
check "c-drop: postgres restarts" restart_postgres
quiesce c-drop
dropped=$(sinkv dropped)
mdropped=$(metric 'sluice_outbox_dropped_rows_total{sink="postgres"}')
dump_local "$WORK/d.db" ticks_d >"$WORK/local.txt"
dump_sink ticks_d >"$WORK/sink.txt"
nl=$(wc -l <"$WORK/local.txt"); ns=$(wc -l <"$WORK/sink.txt")
echo "# c-drop: $nl local rows, $ns at the sink, dropped $dropped (/metrics $mdropped)"
check "c-drop: /status's dropped equals the rows missing at the sink ($dropped = $nl - $ns)" \
  test "$dropped" = $((nl - ns))
check "c-drop: /metrics's dropped equals it too ($mdropped)" test "$mdropped" = "$dropped"
check "c-drop: every row at the sink equals the local one" test -z "$(comm -13 "$WORK/local.txt" "$WORK/sink.txt")"

# The same while a batch is in flight: a transaction holding the sink's
# table locked for 4 s keeps the forwarder's write waiting (PostgreSQL up,
# the statement blocked) while collection fills the outbox and the oldest
# rows are dropped, those of the batch in flight first; then the write goes
# through. A row counted dropped must not be at the sink.
touch "$WORK/flag"
f0=$(sinkv forwarded)
check "c-drop-inflight: forwarding again" wait_until 20 at_least forwarded $((f0 + 200))
d0=$(sinkv dropped)
cat >"$WORK/lock.sql" <<SQL
BEGIN;
LOCK TABLE ticks_d IN ACCESS EXCLUSIVE MODE;
\\! touch $WORK/locked
SELECT pg_sleep(4);
COMMIT;
SQL
"$PG_BIN/psql" -X -q -At -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -f "$WORK/lock.sql" \
  >"$WORK/lock.out" 2>&1 &
lock_pid=$!
check "c-drop-inflight: the table is locked" wait_until 10 test -e "$WORK/locked"
check "c-drop-inflight: rows are dropped while the write waits" wait_until 10 at_least dropped $((d0 + 300))
check "c-drop-inflight: the lock ends" ended_within "$lock_pid" 20
lock_pid=""
quiesce c-drop-inflight
dropped=$(sinkv dropped)
mdropped=$(metric 'sluice_outbox_dropped_rows_total{sink="postgres"}')
dump_local "$WORK/d.db" ticks_d >"$WORK/local.txt"
dump_sink ticks_d >"$WORK/sink.txt"
nl=$(wc -l <"$WORK/local.txt"); ns=$(wc -l <"$WORK/sink.txt")
echo "# c-drop-inflight: $nl local rows, $ns at the sink, dropped $dropped (/metrics $mdropped)"
# drop_oldest spared the batch in flight (it once deleted and counted
# those rows although the write delivered them: 8200 dropped for 8120
# missing in one run)
check "c-drop-inflight: /status's dropped equals the rows missing at the sink ($dropped = $nl - $ns)" \
  test "$dropped" = $((nl - ns))
check "c-drop-inflight: /metrics's dropped equals it too ($mdropped)" test "$mdropped" = "$dropped"
check "c-drop-inflight: every row at the sink equals the local one" \
  test -z "$(comm -13 "$WORK/local.txt" "$WORK/sink.txt")"
stop_sluice c-drop
echo "# c-drop: ${SECONDS}s in all"
fi

finish
