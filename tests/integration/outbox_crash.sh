#!/usr/bin/env bash
# outbox_crash.sh -- the durable outbox under SIGKILL: a collector writes
# rows (new keys every run, and hot keys updated every run, with int64 and
# uint256 values) into SQLite and a sink forwards them over HTTP to a
# target, a second sluice process that upserts what it gets by key into a
# store of its own and counts every row delivered. sluice is killed with
# SIGKILL 5 times at random moments (seeded, logged) while forwarding and
# restarted each time; then collection is turned off and the outbox
# drained. At the end every row is delivered at least once and the target
# holds, by key, exactly the local table: the same count, the same values.
# OUTBOX_CRASH_SEED overrides the seed of the kill delays.
. "$(dirname "$0")/common.bash"

SEED=${OUTBOX_CRASH_SEED:-19}
KILLS=5
RANDOM=$SEED
PORT=$(free_port)
echo "# seed $SEED, target on 127.0.0.1:$PORT"

# The target: POST /rows {table, rows} upserts them into its store (the
# same definition as the collector's) and counts them.
cat >"$WORK/target.lua" <<'LUA'
local server = require "sluice.server"
local store = require "sluice.store"
local json = require "sluice.json"
local db = assert(store.open(os.getenv("TARGET_DB")))
assert(db:define({ name = "ticks", key = { "id" },
  columns = { id = "integer", v = "real", big = "integer", u = "uint256", run = "integer" } }))
assert(db:exec("CREATE TABLE IF NOT EXISTS deliveries (n INTEGER NOT NULL)"))
local srv = assert(server.listen({ host = "127.0.0.1", port = tonumber(os.getenv("PORT")) }))
srv:route("POST", "/rows", function(req)
  local body = assert(json.decode(req.body))
  local ins, err = db:upsert(body.table, body.rows)
  if not ins then return 500, err end
  assert(db:exec("INSERT INTO deliveries (n) VALUES (?)", #body.rows))
  return 200, "ok"
end)
print("target ready")
io.stdout:flush()
LUA

# The collector's configuration: the http_test sink kind (registered here)
# posts each batch to the target.
cat >"$WORK/gen.lua" <<'LUA'
local sluice = require "sluice"
local collector = require "sluice.collector"
local seq = 0
return collector.define({
  name = "gen", interval = 0.05, limiter = false, breaker = false, retry = false,
  tables = { ticks = { key = { "id" },
    columns = { id = "integer", v = "real", big = "integer", u = "uint256", run = "integer" } } },
  collect = function()
    seq = seq + 1
    local t = math.floor(sluice.time() * 1000)
    local rows = {}
    -- 50 new keys (unique across restarts: the time in ms), 10 hot keys updated each run
    for i = 1, 50 do
      rows[#rows + 1] = { id = t * 100 + i, v = i / 7, big = 9223372036854775807LL - i,
        u = "1157920892373161954235709850086879078532699846656405640394575840079131296399" .. (i % 10), run = seq }
    end
    for i = 1, 10 do
      rows[#rows + 1] = { id = i, v = t / 1000 + i / 3, big = -9223372036854775807LL + t, u = tostring(t), run = seq }
    end
    return rows
  end,
})
LUA
cat >"$WORK/sluice.lua" <<'LUA'
local http = require "sluice.http"
require("sluice.outbox").register_kind("http_test", function(_, settings)
  return {
    ensure = function() return true end,
    write = function(_, tname, rows)
      local res, err, kind = http.post(settings.url, { json = { table = tname, rows = rows }, timeout = 5 })
      if not res then return nil, err, kind end
      if res.status ~= 200 then return nil, "HTTP " .. res.status .. ": " .. res.body, "http" end
      return true
    end,
  }
end)
return {
  store = os.getenv("DB"), log = { level = "warning" },
  sinks = { target = { kind = "http_test", url = "http://127.0.0.1:" .. os.getenv("PORT") .. "/rows",
    batch = 100, max_age = 0.05, retry = { base_delay = 0.05, max_delay = 0.5 } } },
  collectors = { { file = "gen.lua", enabled = os.getenv("COLLECT") ~= "0" } },
}
LUA

# check.lua: prints "ok - ..." lines and "# ..." notes. MODE=partial: what
# a killed run left; MODE=final: the outbox drained and the target equal
# to the local table.
cat >"$WORK/check.lua" <<'LUA'
local store = require "sluice.store"
local json = require "sluice.json"
local db = assert(store.open(os.getenv("DB")))
local target = assert(store.open(os.getenv("TARGET_DB")))
local label = os.getenv("LABEL") or ""
local function check(name, cond, detail)
  print((cond and "ok - " or "not ok - ") .. label .. name
    .. ((cond or detail == nil) and "" or (" (" .. tostring(detail) .. ")")))
end
local function one(d, sql) return assert(d:query(sql))[1] end
local exists = one(db, "SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'ticks'").n == 1
local stored = exists and one(db, "SELECT COUNT(*) AS n FROM ticks").n or 0
local queued = exists and one(db, "SELECT COALESCE(SUM(hi - lo + 1), 0) AS n FROM sluice_outbox").n or 0
local depth = exists and (db:query("SELECT depth FROM sluice_outbox_sinks WHERE sink = 'target'")[1] or {}).depth or 0
local got = one(target, "SELECT COUNT(*) AS n FROM ticks").n
local delivered = one(target, "SELECT COALESCE(SUM(n), 0) AS n FROM deliveries").n
print(string.format("# %s%d rows stored, %d queued, %d keys at the target, %d rows delivered",
  label, stored, queued, got, delivered))
check("the outbox's depth counter equals its rows", depth == queued, depth .. " vs " .. queued)
if os.getenv("MODE") == "final" then
  check("the outbox is drained", queued == 0, queued)
  check("the target has as many keys as the local table", got == stored, got .. " vs " .. stored)
  check("every row was delivered at least once", delivered >= stored, delivered .. " vs " .. stored)
  local diff, first = 0, nil
  local theirs = {}
  for _, r in ipairs(target:select("ticks")) do theirs[json.encode(r.id)] = r end
  for _, r in ipairs(db:select("ticks")) do
    local t = theirs[json.encode(r.id)]
    if not t or json.encode(t) ~= json.encode(r) then
      diff = diff + 1
      first = first or (json.encode(r) .. " vs " .. tostring(t and json.encode(t)))
    end
  end
  check("by key, the target holds exactly the local rows' values", diff == 0, first)
  local hot = one(db, "SELECT COUNT(*) AS n, MIN(run) AS lo FROM ticks WHERE id <= 10")
  check("the hot keys were updated after the first run", hot.n == 10 and hot.lo > 1, hot.lo)
end
db:close()
target:close()
LUA

run_check() { # run_check MODE LABEL
  local line
  while IFS= read -r line; do
    case "$line" in
      "ok - "*) ok "${line#ok - }" ;;
      "not ok - "*) not_ok "${line#not ok - }" ;;
      *) echo "$line" ;;
    esac
  done < <(env DB="$WORK/local.db" TARGET_DB="$WORK/target.db" MODE="$1" LABEL="$2" \
    timeout 60 "$SLUICE" run "$WORK/check.lua" 2>&1 || echo "not ok - $2checker exited $?")
}

env TARGET_DB="$WORK/target.db" PORT=$PORT "$SLUICE" run "$WORK/target.lua" --control none \
  >"$WORK/target.out" 2>&1 &
target_pid=$!
stop_target() { kill -TERM "$target_pid" 2>/dev/null; wait "$target_pid" 2>/dev/null; }
trap 'stop_target; rm -rf "$WORK"' EXIT
check "the target starts" wait_for_text "$WORK/target.out" "target ready" 10

# 1. Kill sluice at seeded random moments while it collects and forwards.
kills=0
for attempt in $(seq 1 $KILLS); do
  delay_ms=$((300 + RANDOM % 1200))
  delay=$(printf "%d.%03d" $((delay_ms / 1000)) $((delay_ms % 1000)))
  env DB="$WORK/local.db" PORT=$PORT "$SLUICE" run "$WORK/sluice.lua" --control none \
    >"$WORK/run$attempt.out" 2>&1 &
  pid=$!
  sleep "$delay"
  if kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null
    code=$?
    kills=$((kills + 1))
    echo "# attempt $attempt: SIGKILL after ${delay}s (exit $code)"
    check "attempt $attempt: the process died of SIGKILL" test "$code" = 137
  else
    wait "$pid"
    echo "# attempt $attempt: the run ended (exit $?) before the kill"
    sed 's/^/    /' "$WORK/run$attempt.out"
  fi
  run_check partial "after attempt $attempt: "
done
check "killed $KILLS times while forwarding ($kills)" test "$kills" = $KILLS

# 2. Collection off: the forwarder drains what the killed runs queued.
env DB="$WORK/local.db" PORT=$PORT COLLECT=0 "$SLUICE" run "$WORK/sluice.lua" --control none \
  >"$WORK/drain.out" 2>&1 &
pid=$!
cat >"$WORK/depth.lua" <<'LUA'
local db = assert(require("sluice.store").open(os.getenv("DB")))
print(db:query("SELECT COALESCE(SUM(hi - lo + 1), 0) AS n FROM sluice_outbox")[1].n)
db:close()
LUA
drained() { [ "$(env DB="$WORK/local.db" "$SLUICE" run "$WORK/depth.lua" --control none 2>/dev/null)" = 0 ]; }
check "the outbox drains after the restart" wait_until 30 drained
kill -TERM "$pid"
check "sluice stops on SIGTERM" ended_within "$pid" 10
check "and exits 0 ($code)" test "$code" = 0
run_check final "final: "

finish
