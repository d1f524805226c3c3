#!/usr/bin/env bash
# gcra_processes.sh -- a shared GCRA quota through a real redis-server:
# three sluice processes hammering one key at 100 req/s (burst 1) for 10 s
# admit within +-5% of 1,000 requests in total, and each is throttled.
#   tests/bench/gcra_processes.sh build/sluice
# Run by hand, not by ctest: the band is sensitive to timer lateness (see
# the header of lua/sluice/gcra.lua), until waiters queue locally first.
. "$(dirname "$0")/../integration/common.bash"

if ! command -v redis-server >/dev/null; then
  not_ok "redis-server available (apt-get install redis-server)"; finish; exit 1
fi

cat >"$WORK/port.lua" <<'LUA'
local srv = assert(require("sluice.server").listen({ port = 0 }))
print(srv.port)
srv:close()
LUA
REDIS_PORT=$("$SLUICE" run "$WORK/port.lua" --control none)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --daemonize yes --pidfile "$WORK/redis.pid" --dir "$WORK" --logfile "$WORK/redis.log"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1; wait 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
check "redis-server is up on $REDIS_PORT" redis-cli -p "$REDIS_PORT" ping

# Each process waits for the common START (wall clock), then runs TASKS
# tasks calling g:wait() until START + SECONDS, and prints its admissions.
cat >"$WORK/hammer.lua" <<'LUA'
local sluice = require "sluice"
local gcra = require "sluice.gcra"
local start, seconds = tonumber(os.getenv("START")), tonumber(os.getenv("SECONDS_RUN"))
local tasks = tonumber(os.getenv("TASKS"))
local g = gcra.new { redis = os.getenv("REDIS_URL"), name = "shared", rate = 100, burst = 1, max_wait = 5 }
local stop = start + seconds
sluice.sleep(math.max(0, start - sluice.time()))
local admitted, errors = 0, {}
local ts = {}
for i = 1, tasks do
  ts[i] = sluice.spawn(function()
    while sluice.time() < stop do
      local w, err = g:wait()
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
print("admitted", admitted)
g.client:close()
LUA

START=$(($(date +%s) + 2))
for i in 1 2 3; do
  START=$START SECONDS_RUN=10 TASKS=8 REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
    timeout 20 "$SLUICE" run "$WORK/hammer.lua" --control none --log-format json >"$WORK/p$i.out" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do wait "${pids[$i]}"; done
pids=()

total=0
for i in 1 2 3; do
  n=$(awk '$1 == "admitted" { print $2 }' "$WORK/p$i.out")
  echo "# process $i admitted ${n:-none}"
  check "process $i admitted something and was throttled (${n:-none})" test "${n:-0}" -gt 0 -a "${n:-0}" -lt 800
  check "process $i saw no errors" sh -c "! grep -q '^error' '$WORK/p$i.out'" || sed 's/^/    /' "$WORK/p$i.out"
  total=$((total + ${n:-0}))
done
echo "# total admitted $total (want 1000 +-5%)"
check "the three processes admitted $total in all, within 5% of 1000" test "$total" -ge 950 -a "$total" -le 1050

finish
