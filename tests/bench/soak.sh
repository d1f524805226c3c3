#!/usr/bin/env bash
# soak.sh -- a long run under faults, sampled from outside; prints figures,
# asserts nothing (tests/integration/soak_short.sh is the 2-minute check).
#   tests/bench/soak.sh [sluice] [MINUTES] [COLLECTORS]   (build/sluice 30 500)
#
# One `sluice run` with COLLECTORS copies of tests/bench/soak/collector.lua
# (one GET a second each, a 1 s timeout, a breaker and a limiter each, one
# row upserted per run) against tests/bench/soak/mock.lua in a second
# sluice process, whose fault cycle (MOCK_PERIOD, 60 s) injects a 5xx
# storm, 429s with Retry-After, requests held past the timeout and
# connections reset. The configuration names a private redis-server
# (leases, shared breaker state), which is stopped for 10 s and started
# again twice, at a third and two thirds of the load. The configuration
# is reloaded (POST /reload) every SOAK_RELOAD seconds (60), alternating two
# variants (one disables every 20th collector and slows every 10th), so
# collectors stop, start and are replaced. Before the load and after it the
# process idles SOAK_IDLE seconds (30) with no collectors (reloaded to an
# empty list): the baseline the fd and task counts must come back to.
#
# Every SOAK_SAMPLE seconds (10) it samples from outside the process: RSS
# (/proc/PID/status), open fds (/proc/PID/fd), live tasks and successful
# collections (the control socket, `sluice repl SOCKET -e`), error lines in
# the JSON log, the SQLite file and its WAL. Output, in
# SOAK_OUT (default build/soak-<date>): samples.csv, events.csv, soak.svg
# (one panel per series, drawn by tests/bench/soak/report.lua),
# sluice.log (JSON), summary.txt (key=value), and the figures on stdout
# (@figure soak.* lines): RSS slope (least squares, KiB/min) over the load
# and its second half, fd and task deltas against the baseline, and the
# log's warnings and errors that are not injected faults (listed).
#
# SOAK_SECONDS overrides MINUTES (seconds of load); the short variant sets
# it and the intervals smaller. SOAK_CENSUS=1 also takes a census of the
# Lua heap (soak/census.lua) at the end of the baseline and once settled,
# and writes census_baseline.txt, census_settled.txt and their diff
# (census_diff.txt): what the Lua heap holds after the load, by path.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
SLUICE=$(readlink -f "${1:-build/sluice}")
MINUTES=${2:-30}
N=${3:-500}
LOAD=${SOAK_SECONDS:-$((MINUTES * 60))}
SAMPLE=${SOAK_SAMPLE:-10}
RELOAD=${SOAK_RELOAD:-60}
IDLE=${SOAK_IDLE:-30}
PERIOD=${MOCK_PERIOD:-60}
REDIS_DOWN=${SOAK_REDIS_DOWN:-10}
OUT=${SOAK_OUT:-$ROOT/build/soak-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")
W=$(mktemp -d)
rm -f "$OUT"/samples.csv "$OUT"/events.csv "$OUT"/sluice.log "$OUT"/summary.txt "$OUT"/soak.svg

sluice_pid= mock_pid= sampler_pid=
cleanup() {
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null
  [ -n "$sluice_pid" ] && kill "$sluice_pid" 2>/dev/null && wait "$sluice_pid" 2>/dev/null
  [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null && wait "$mock_pid" 2>/dev/null
  redis-cli -p "${REDIS_PORT:-0}" shutdown nosave >/dev/null 2>&1
  rm -rf "$W"
}
trap cleanup EXIT

now() { local t=${EPOCHREALTIME/./}; echo $(( (t - T0) / 1000000 )); }
event() { echo "$(now),$1" >>"$OUT/events.csv"; echo "[$(now) s] $1"; }
# wait_until SECONDS COMMAND...: the command succeeds within SECONDS
wait_until() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -lt $deadline ] || return 1; sleep 0.1; done
}

free_port() {
  cat >"$W/port.lua" <<'LUA'
local srv = assert(require("sluice.server").listen({ port = 0 }))
print(srv.port)
srv:close()
LUA
  "$SLUICE" run "$W/port.lua" --control none
}

REDIS_PORT=$(free_port)
start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$W/redis.pid" --dir "$W" --logfile "$W/redis.log"
  wait_until 10 sh -c "[ \"\$(redis-cli -p $REDIS_PORT ping 2>/dev/null)\" = PONG ]"
}
start_redis

MOCK_FILE="$W/mock.url" MOCK_PERIOD=$PERIOD "$SLUICE" run tests/bench/soak/mock.lua --control none \
  >"$OUT/mock.log" 2>&1 &
mock_pid=$!
wait_until 20 test -s "$W/mock.url"
MOCK_URL=$(cat "$W/mock.url")
ADMIN_PORT=$(free_port)

# config GEN: 0 no collectors; 1 all N; 2 every 20th disabled, every 10th at 2 s
config() {
  cat >"$W/soak.lua.tmp" <<LUA
local GEN, N = $1, $N
local collectors = {}
if GEN > 0 then
  for i = 1, N do
    collectors[i] = { file = "$ROOT/tests/bench/soak/collector.lua", name = string.format("c%04d", i),
      base_url = "$MOCK_URL", enabled = not (GEN == 2 and i % 20 == 0),
      interval = (GEN == 2 and i % 10 == 1) and 2 or 1 }
  end
end
return {
  store = "$W/soak.db",
  log = { level = "warning", format = "json" },
  admin = { port = $ADMIN_PORT, insecure_loopback_mutations = true },
  redis = "redis://127.0.0.1:$REDIS_PORT/0",
  shutdown_timeout = 10,
  collectors = collectors,
}
LUA
  mv "$W/soak.lua.tmp" "$W/soak.lua"
}
reload() {
  config "$1"
  local code t0=${EPOCHREALTIME/./} took
  code=$(curl -s -o "$W/reload.out" -w '%{http_code}' --max-time 60 -X POST \
    -H 'Content-Type: application/json' -d '{}' "http://127.0.0.1:$ADMIN_PORT/reload")
  took=$(( (${EPOCHREALTIME/./} - t0) / 1000 ))
  if [ "$code" = 200 ]; then event "reload $1 took $took ms"; else
    event "reload $1 refused $code"; cat "$W/reload.out"; fi
}

config 0
T0=${EPOCHREALTIME/./}
echo "t,event" >"$OUT/events.csv"
"$SLUICE" run "$W/soak.lua" --control "$W/ctl.sock" --log-format json >"$OUT/sluice.log" 2>&1 &
sluice_pid=$!
wait_until 20 curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/health"
event "start $N collectors, load ${LOAD}s, mock $MOCK_URL, redis $REDIS_PORT"

# one sample: t,rss_kib,fds,tasks,collections_ok,log_errors,db_kib,wal_kib,lua_kib,c_kib,c_free_kib.
# Live tasks and successful collections (summed over collectors()) come from
# the control socket: GET /metrics is 1.2 MB with 500 collectors and takes
# 0.5-5 s to render on a loaded 2-core machine, which would weigh on what is
# measured. lua_kib: the Lua heap (collectgarbage "count"), to tell a
# growing RSS in Lua from one in C. log_errors: error lines in the JSON log so far. A field that
# could not be read is left empty.
# c_kib, c_free_kib: glibc malloc's bytes in use and free in its arenas
# (mallinfo2 through LuaJIT's FFI; LuaJIT's own heap is not malloc's), to
# tell a C leak (in use grows) from fragmentation (free grows).
TASKS_EXPR='local t = require("sluice").tasks() local ok = 0
for _, c in pairs(collectors()) do ok = ok + (c.collections or 0) end
local ffi = require("ffi")
pcall(ffi.cdef, "struct soak_mi2 { size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost; }; struct soak_mi2 mallinfo2(void);")
local m = ffi.C.mallinfo2()
return t.running .. " " .. ok .. " " .. math.floor(collectgarbage("count")) .. " " .. math.floor(tonumber(m.uordblks + m.hblkhd) / 1024) .. " " .. math.floor(tonumber(m.fordblks) / 1024)'
sample() {
  local rss fds tasks ok lua cu cf err db wal
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$sluice_pid/status" 2>/dev/null) || return 0
  fds=$(ls "/proc/$sluice_pid/fd" 2>/dev/null | wc -l)
  read -r tasks ok lua cu cf < <(timeout 8 "$SLUICE" repl "$W/ctl.sock" -e "$TASKS_EXPR" 2>/dev/null | tr -d '"'; echo)
  err=$(grep -c '"level":"error"' "$OUT/sluice.log" || true)
  db=$(( $(stat -c %s "$W/soak.db" 2>/dev/null || echo 0) / 1024 ))
  wal=$(( $(stat -c %s "$W/soak.db-wal" 2>/dev/null || echo 0) / 1024 ))
  echo "$(now),$rss,$fds,${tasks:-},${ok:-},$err,$db,$wal,${lua:-},${cu:-},${cf:-}" >>"$OUT/samples.csv"
}
# dump_fds FILE: what the fds are (sockets with their peers), for a delta's
# why; its last lines "fds N" and "mock_connections N" count them and the
# TCP connections to the mock (idle ones libcurl keeps in its cache)
dump_fds() {
  { ls -l "/proc/$sluice_pid/fd"; ss -tanp 2>/dev/null | grep "pid=$sluice_pid,"
    ss -xap 2>/dev/null | grep "pid=$sluice_pid,"
    echo "fds $(ls "/proc/$sluice_pid/fd" | wc -l)"
    echo "mock_connections $(ss -tanp 2>/dev/null | grep "pid=$sluice_pid," | grep -c " ${MOCK_URL#http://}\b")"
  } >"$1" 2>&1 || true
}
echo "t,rss_kib,fds,tasks,collections_ok,log_errors,db_kib,wal_kib,lua_kib,c_kib,c_free_kib" >"$OUT/samples.csv"
(
  next=0
  while kill -0 "$sluice_pid" 2>/dev/null; do
    sample
    next=$((next + SAMPLE))
    while [ "$(now)" -lt $next ]; do sleep 0.2; done
  done
) &
sampler_pid=$!

# one request from the idle process, so that what the HTTP client makes once
# (libcurl's multi handle and its wake-up socketpair) is in the baseline;
# the connection it leaves in libcurl's cache is counted as the mock's
"$SLUICE" repl "$W/ctl.sock" -e "require('sluice.http').get('$MOCK_URL/stats').status" >/dev/null
sleep "$IDLE"
dump_fds "$OUT/fds_baseline.txt"
census() {
  [ -n "${SOAK_CENSUS:-}" ] || return 0
  timeout 120 "$SLUICE" repl "$W/ctl.sock" -e \
    "return dofile('$ROOT/tests/bench/soak/census.lua').write('$OUT/census_$1.txt', true)" || true
}
census baseline
event "baseline end"
load_start=$(now)
reload 1
gen=1
redis1=$((load_start + LOAD / 3)) redis2=$((load_start + 2 * LOAD / 3))
next_reload=$((load_start + RELOAD))
redis_up_at=0
while [ "$(now)" -lt $((load_start + LOAD)) ]; do
  t=$(now)
  if [ "$t" -ge "$next_reload" ]; then
    gen=$((3 - gen)); reload $gen
    next_reload=$((next_reload + RELOAD))
  fi
  if [ "$t" -ge "$redis1" ] || [ "$t" -ge "$redis2" ]; then
    [ "$t" -ge "$redis1" ] && redis1=$((1 << 60)) || redis2=$((1 << 60))
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    event "redis stopped"
    redis_up_at=$(($(now) + REDIS_DOWN))
  fi
  if [ "$redis_up_at" -gt 0 ] && [ "$t" -ge "$redis_up_at" ]; then
    start_redis
    event "redis started"
    redis_up_at=0
  fi
  sleep 0.5
done
event "load end"
load_end=$(now)
reload 0
sleep "$IDLE"
# a last sample at the end of the idle tail, then stop
kill "$sampler_pid" 2>/dev/null; wait "$sampler_pid" 2>/dev/null || true
sampler_pid=
sample
# then what is garbage and free memory, not a leak, is given back: two full
# Lua collections and malloc_trim(0) (glibc returns its arenas' free pages).
# The sample after it (event "settled") is the floor to compare with the
# baseline: what stays above it is held, by Lua (lua_kib) or by C (c_kib).
SETTLE_EXPR='collectgarbage() collectgarbage()
local ffi = require("ffi")
pcall(ffi.cdef, "int malloc_trim(size_t pad);")
ffi.C.malloc_trim(0)
return "ok"'
timeout 30 "$SLUICE" repl "$W/ctl.sock" -e "$SETTLE_EXPR" >/dev/null 2>&1 || true
event "settled"
sample
dump_fds "$OUT/fds_after.txt"
census settled
if [ -n "${SOAK_CENSUS:-}" ]; then
  "$SLUICE" run tests/bench/soak/census.lua --control none -- \
    "$OUT/census_baseline.txt" "$OUT/census_settled.txt" 80 >"$OUT/census_diff.txt" 2>&1 || true
fi
# What of the settled Lua heap is compiled code: LuaJIT's traces (their IR,
# snapshots and machine-code maps) are GC objects, counted in the heap and
# kept until flushed, however much data is live. Flushed last, so that
# nothing above is changed by it; event "jit N traces K KiB".
JIT_EXPR='local tu = require("jit.util") local n = 0
for i = 1, 65535 do if tu.traceinfo(i) then n = n + 1 end end
collectgarbage() collectgarbage() -- (the census above leaves garbage)
local before = collectgarbage("count")
jit.flush() collectgarbage() collectgarbage()
return n .. " traces " .. math.floor(before - collectgarbage("count")) .. " KiB"'
jit=$(timeout 30 "$SLUICE" repl "$W/ctl.sock" -e "$JIT_EXPR" 2>/dev/null | tr -d '"') || true
[ -n "$jit" ] && event "jit $jit"
curl -s --max-time 10 "$MOCK_URL/stats" >"$OUT/mock_stats.json" || true
kill -TERM "$sluice_pid"
# shutdown_timeout is 10 s: past 30 it is stuck, and killed (exit 137)
wait_until 30 sh -c "! kill -0 $sluice_pid 2>/dev/null" || { event "sluice still running 30 s after SIGTERM"; kill -KILL "$sluice_pid"; }
code=0; wait "$sluice_pid" || code=$?
sluice_pid=
event "sluice exited $code"

"$SLUICE" run --lua-path tests/lua tests/bench/soak/report.lua --control none -- "$OUT" "$load_start" "$load_end" "$N" "$code"
