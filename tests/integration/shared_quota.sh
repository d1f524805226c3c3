#!/usr/bin/env bash
# shared_quota.sh -- a shared quota through a real redis-server: three
# sluice processes hammering one shared limiter (limiter.new{shared = url})
# at 100 req/s, burst 1, for 10 s admit within +-5% of 1,000 requests in
# total, each process is throttled, and each admission costs one EVALSHA;
# then 3 x 100 waiters (a queue 3 s deep, past the 1 s reservation horizon)
# for 5 s: still the rate in aggregate, and a few EVALSHAs per admission
# (one poller per process), not one per waiter and slot.
. "$(dirname "$0")/common.bash"

start_redis || { finish; exit 1; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; stop_redis; wait 2>/dev/null; rm -rf "$WORK"' EXIT

# Each process waits for the common START (wall clock), then runs TASKS
# tasks calling lim:wait() until START + SECONDS, and prints its admissions
# (those that went before the end) and what its limiter says of them.
cat >"$WORK/hammer.lua" <<'LUA'
local sluice = require "sluice"
local limiter = require "sluice.limiter"
local start, seconds = tonumber(os.getenv("START")), tonumber(os.getenv("SECONDS_RUN"))
local tasks = tonumber(os.getenv("TASKS"))
local lim = limiter.new { name = os.getenv("NAME"), rate = 100, max_rate = 100, burst = 1,
  max_wait = tonumber(os.getenv("MAX_WAIT")), shared = os.getenv("REDIS_URL") }
local stop = start + seconds
sluice.sleep(math.max(0, start - sluice.time()))
local admitted, errors = 0, {}
local ts = {}
for i = 1, tasks do
  ts[i] = sluice.spawn(function()
    while sluice.time() < stop do
      local w, err = lim:wait("/api")
      if w then
        if sluice.time() <= stop then admitted = admitted + 1 end
      else
        errors[err] = (errors[err] or 0) + 1
      end
    end
  end)
end
for i = 1, tasks do sluice.wait(ts[i]) end
for err, n in pairs(errors) do print("error", err, n) end
local sh = lim:stats().shared
print("admitted", admitted)
print("shared", sh.state, sh.admitted, sh.errors)
lim:close()
LUA

evalsha() { redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\).*/\1/p'; }
# run SECONDS TASKS NAME MAX_WAIT: the three processes from a common start
run() {
  local i start=$(($(date +%s) + 2))
  for i in 1 2 3; do
    START=$start SECONDS_RUN=$1 TASKS=$2 NAME=$3 MAX_WAIT=$4 REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
      timeout 30 "$SLUICE" run "$WORK/hammer.lua" --control none --log-format json >"$WORK/p$i.out" 2>&1 &
    pids+=($!)
  done
  for i in 0 1 2; do wait "${pids[$i]}"; done
  pids=()
  total=0 shared_total=0
  for i in 1 2 3; do
    n=$(awk '$1 == "admitted" { print $2 }' "$WORK/p$i.out")
    s=$(awk '$1 == "shared" { print $3 }' "$WORK/p$i.out")
    echo "# process $i admitted ${n:-none}"
    check "process $i admitted something and was throttled (${n:-none})" \
      test "${n:-0}" -gt 0 -a "${n:-0}" -lt $(($1 * 80))
    contains "process $i shared its quota all along" "$WORK/p$i.out" "shared	shared"
    shared_total=$((shared_total + ${s:-0}))
    total=$((total + ${n:-0}))
  done
}

# 1. 3 x 8 waiters, 10 s
run 10 8 shared 5
for i in 1 2 3; do
  check "process $i saw no errors" sh -c "! grep -q '^error' '$WORK/p$i.out'" || sed 's/^/    /' "$WORK/p$i.out"
done
echo "# total admitted $total (want 1000 +-5%)"
check "the three processes admitted $total in all, within 5% of 1000" test "$total" -ge 950 -a "$total" -le 1050
calls=$(evalsha)
echo "# $calls EVALSHA for $shared_total shared admissions"
check "one EVALSHA per admission (3 x 8 waiters left at the end may time out: $calls for $shared_total)" \
  test "$calls" -ge "$shared_total" -a "$calls" -le $((shared_total + 3 * 8))

# 2. 3 x 100 waiters, 5 s: the queue is deeper than the horizon
before=$calls
run 5 100 deep 30
echo "# total admitted $total (want 500 +-5%)"
check "3 x 100 waiters admitted $total in all, within 5% of 500" test "$total" -ge 475 -a "$total" -le 525
calls=$(($(evalsha) - before))
echo "# $calls EVALSHA for $shared_total shared admissions"
check "a few EVALSHAs per admission with a deep queue ($calls for $shared_total)" \
  test "$calls" -ge "$shared_total" -a "$calls" -le $((shared_total * 6))

finish
