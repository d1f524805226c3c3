#!/usr/bin/env bash
# shared.sh -- two sluice processes share breaker state through a real
# redis-server: a ban seen by one opens the breaker in the other within a
# second; the shared key has its 24 h TTL; with Redis gone, /health says
# degraded and collection goes on.
. "$(dirname "$0")/common.bash"

start_redis || { finish; exit 1; }
ADMIN_PORT=$(free_port)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; stop_redis; wait 2>/dev/null; rm -rf "$WORK"' EXIT

cat >"$WORK/node.lua" <<LUA
local sluice = require "sluice"
local mock = require("sluice.mock.binance").start({})
sluice.on_shutdown(function() mock:stop() end)
if os.getenv("BAN") then
  mock:inject({ status = 418, retry_after = 600, count = 10 })
  sluice.after(2, function(premature) if not premature then sluice.shutdown() end end)
end
return {
  store = os.getenv("DB"),
  redis = "redis://127.0.0.1:$REDIS_PORT/0",
  admin = os.getenv("ADMIN") and { port = tonumber(os.getenv("ADMIN")) } or nil,
  sinks = os.getenv("ADMIN") and { redis_stream = { stream = "sluice:{table}", maxlen = 1000 } } or nil,
  lease_ttl = 3,
  collectors = { { use = "binance_klines", name = os.getenv("NAME"), base_url = mock.url,
    interval = tonumber(os.getenv("INTERVAL") or "") or (os.getenv("BAN") and 0.5 or 60),
    breaker = { name = "binance_api" }, limit = 2, retry = { max_attempts = 1 } } },
}
LUA

# B: a long-running instance with an admin API and a control socket.
NAME=klines_b DB="$WORK/b.db" ADMIN=$ADMIN_PORT "$SLUICE" run "$WORK/node.lua" --control "$WORK/b.sock" \
  --log-format json >"$WORK/b.out" 2>&1 &
pids+=($!)
wait_until 5 test -S "$WORK/b.sock"
# B's first collection was published to the stream, in commit order.
streamed() { [ "$(redis-cli -p "$REDIS_PORT" xlen sluice:klines)" -gt 0 ] 2>/dev/null; }
wait_until 3 streamed
n=$(redis-cli -p "$REDIS_PORT" xlen sluice:klines)
check "B's rows are in the stream sluice:klines ($n)" test "$n" -ge 2
redis-cli -p "$REDIS_PORT" --no-raw xrange sluice:klines - + | grep -A1 '"open_time"' | grep -v open_time | grep -o '[0-9]\{13\}' >"$WORK/times"
check "stream entries follow commit order (open_time ascending)" sh -c "sort -n '$WORK/times' | cmp -s - '$WORK/times' && test -s '$WORK/times'"

state_b() { "$SLUICE" repl "$WORK/b.sock" -e 'require("sluice.breaker").get("binance_api"):state()' 2>&1; }
check "B starts with a closed breaker" test "$(state_b)" = '"closed"'

# A: gets banned (418), which opens its breaker and shares it.
expect_exit "A runs and is banned" 0 env NAME=klines_a BAN=1 DB="$WORK/a.db" timeout 30 "$SLUICE" run "$WORK/node.lua" \
  --control none --log-format json
contains "A's breaker opened on the ban" "$WORK/out" '"to":"open"'
b_open() { [ "$(state_b)" = '"open"' ]; }
check "B's breaker is open" wait_until 3 b_open
# How long after A's transition B took it, from the two logs' timestamps.
ms_of() { # the first line of FILE containing TEXT: its ts in ms of the day
  grep -F -- "$2" "$1" | head -1 | sed -n 's/.*"ts":"[^T]*T\([0-9]*\):\([0-9]*\):\([0-9.]*\)Z".*/\1 \2 \3/p' |
    awk '{ printf "%d", ($1 * 3600 + $2 * 60 + $3) * 1000 }'
}
a_ms=$(ms_of "$WORK/out" '"to":"open"')
b_ms=$(ms_of "$WORK/b.out" 'breaker state taken from another instance')
lag=$(( ${b_ms:-999999999} - ${a_ms:-0} ))
[ "$lag" -lt -43200000 ] && lag=$((lag + 86400000)) # across midnight
echo "# B took A's open breaker ${lag} ms after A opened it"
check "B's breaker opened within one second of A's (${lag} ms)" test "$lag" -ge 0 -a "$lag" -le 1000
ttl=$(redis-cli -p "$REDIS_PORT" ttl cb_state:binance_api)
check "cb_state:binance_api has a 24 h TTL (ttl $ttl)" test "$ttl" -gt 86000 -a "$ttl" -le 86400
check "A wrote its limiter state at stop (rate_limiter:klines_a)" test "$(redis-cli -p "$REDIS_PORT" exists rate_limiter:klines_a)" = 1

# Leases: C and D run the same collector; one collects, the other stands
# by, and takes over within the lease TTL (3 s here) when the holder dies.
collections() { grep -c '"msg":"collection done"' "$WORK/$1.out"; }
start_cd() {
  NAME=klines_cd INTERVAL=0.3 DB="$WORK/$1.db" "$SLUICE" run "$WORK/node.lua" --control none \
    --log-format json >"$WORK/$1.out" 2>&1 &
  eval "pid_$1=\$!"
  pids+=($!)
}
start_cd c
check "C collects" wait_for_text "$WORK/c.out" '"msg":"collection done"' 10
start_cd d
check "D stands by" wait_for_text "$WORK/d.out" "another instance holds the collector lease: standing by" 10
# while C collects three times more, D's runs (as often) must stand by too
n0=$(collections c)
three_more() { [ "$(collections c)" -ge $((n0 + 3)) ]; }
wait_until 10 three_more
nc=$(collections c); nd=$(collections d)
check "only the lease holder collects (C $nc, D $nd)" test "$nc" -gt 0 -a "$nd" -eq 0
kill -9 "$pid_c"
wait "$pid_c" 2>/dev/null
killed_at=$(date +%s.%N)
took=""
if wait_for_text "$WORK/d.out" '"msg":"collection done"' 6; then
  took=$(awk -v a="$killed_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
fi
check "D takes over within the TTL plus a renewal (took ${took:-never} s)" \
  awk -v t="${took:-99}" 'BEGIN { exit !(t <= 4.5) }'
contains "D logged the takeover" "$WORK/d.out" "collector lease taken over"

# Redis goes away: B keeps going and says so.
redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1
health=""
says_degraded() {
  health=$(curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/health")
  case "$health" in *'"degraded"'*) return 0 ;; esac
  return 1
}
wait_until 6 says_degraded
# (B's breaker is open, taken from A, so B is unhealthy anyway; the
# degraded list says what Redis's absence costs)
case "$health" in *'"degraded":["redis is unreachable'*) ok "/health reports Redis as degraded" ;;
  *) not_ok "/health reports Redis as degraded"; echo "    $health" ;; esac
check "B is still running" kill -0 "${pids[0]}"
"$SLUICE" repl "$WORK/b.sock" -e 'reset("binance_api")' >/dev/null 2>&1
"$SLUICE" repl "$WORK/b.sock" -e 'collect("klines_b")' >"$WORK/collect.out" 2>&1
check "collection goes on without Redis" test $? -eq 0
contains "the collection succeeded" "$WORK/collect.out" "true"
contains "the loss of Redis was logged" "$WORK/b.out" "redis unreachable"

finish
