#!/usr/bin/env bash
# leases.sh -- collector leases, checked from the rows' origin: three sluice
# processes run the same collector against one mock exchange, which logs
# every request with its arrival and reply times and the instance that sent
# it. Over ~20 s the lease holder is reloaded (it keeps the lease), killed
# with -9 twice (a killed instance comes back and must stand by), frozen
# with SIGSTOP past the TTL and then resumed (it must not collect again),
# and stopped with SIGTERM while a run is in flight (the others must wait
# for that run). From the mock's log:
# the owner changes only after the previous owner stopped, never while its
# request is in flight, and within the TTL plus one renewal period; and each
# instance stored exactly the rows of its own requests.
. "$(dirname "$0")/common.bash"


TTL=2            # lease_ttl; renewals every TTL/3
INTERVAL=0.3     # collection interval
SLOW=1.5         # the mock's delay for a "slow" instance's requests
SLACK=0.5        # scheduling slack on a busy 2-core machine
RENEW=$(awk -v t=$TTL 'BEGIN { print t / 3 }')
now() { date +%s.%N; }

start_redis || { finish; exit 1; }
MOCK_PORT=$(free_port)
declare -A pid
mock_pid=""
stop_all() {
  local p
  for p in "${pid[@]}" $mock_pid; do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
  stop_redis
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap stop_all EXIT

# The one exchange: the mock Binance, its handler wrapped to log, per
# request, "arrival reply instance status serverTime" (instance from the
# X-Instance header), and to delay the requests of an instance whose
# $WORK/slow_<instance> file exists (making $WORK/inflight_<instance> when
# such a request arrives).
cat >"$WORK/mock.lua" <<LUA
local sluice = require "sluice"
local m = require("sluice.mock.binance").start({ port = $MOCK_PORT })
local logf = assert(io.open("$WORK/requests", "a"))
local handle = m._handle
m._handle = function(self, req)
  local who = req.headers["x-instance"] or "-"
  local t0 = sluice.time()
  local slow = io.open("$WORK/slow_" .. who)
  if slow then
    slow:close()
    assert(io.open("$WORK/inflight_" .. who, "w")):close()
    sluice.sleep($SLOW)
  end
  local status, body, headers = handle(self, req)
  local ms = type(body) == "string" and body:match('"serverTime":(%d+)') or "-"
  logf:write(string.format("%.6f %.6f %s %s %s\n", t0, sluice.time(), who, tostring(status), ms))
  logf:flush()
  return status, body, headers
end
sluice.on_shutdown(function() m:stop() logf:close() end)
LUA

# The collector: one GET /api/v3/time per run, stored as one row tagged
# with the instance; serverTime is the mock's clock when it answered, so a
# row names the request it came from.
cat >"$WORK/probe.lua" <<'LUA'
local collector = require "sluice.collector"
return collector.define({
  name = "probe", base_url = "http://127.0.0.1:1", interval = 60,
  retry = { max_attempts = 1 },
  options = { instance = "-" },
  tables = { probes = { columns = { server_ms = "integer", instance = "text" },
    key = { "server_ms", "instance" } } },
  collect = function(self)
    local data, err = self:get("/api/v3/time")
    if not data then error(err, 0) end
    return { probes = { { server_ms = data.serverTime, instance = self.options.instance } } }
  end,
})
LUA
cat >"$WORK/node.lua" <<LUA
return {
  store = os.getenv("DB"),
  redis = "redis://127.0.0.1:$REDIS_PORT/0",
  lease_ttl = $TTL,
  collectors = { { file = "probe.lua", name = "probe", base_url = "http://127.0.0.1:$MOCK_PORT",
    interval = $INTERVAL, instance = os.getenv("INST"),
    headers = { ["X-Instance"] = os.getenv("INST") } } },
}
LUA

"$SLUICE" run "$WORK/mock.lua" --control none --log-format json >"$WORK/mock.out" 2>&1 &
mock_pid=$!
wait_until 5 curl -s --max-time 1 -o /dev/null "http://127.0.0.1:$MOCK_PORT/api/v3/ping"
: >"$WORK/requests"
: >"$WORK/ends"

# start INST DB: a sluice instance collecting as INST into DB.
start() {
  INST=$1 DB="$WORK/$2.db" "$SLUICE" run "$WORK/node.lua" --control none --log-format json \
    >"$WORK/$1.out" 2>&1 &
  pid[$1]=$!
}
# The holder, as the exchange sees it: who sent the latest request.
holder() { tail -n 1 "$WORK/requests" | awk '{ print $3 }'; }
# ended KIND INST: INST stopped holding now (kill, stop or term).
ended() { echo "$(now) $1 $2" >>"$WORK/ends"; }
# wait_takeover INST: until someone other than INST sends a request (<= 8 s).
other_than() { h=$(holder); [ -n "$h" ] && [ "$h" != "$1" ]; }
wait_takeover() { wait_until 8 other_than "$1"; }

start a a
wait_until 5 sh -c "test -s '$WORK/requests'"
check "the first instance collects (holder '$(holder)')" test "$(holder)" = a
# (the sleeps between the steps below pace the scenario: each holder
# collects for a while; the checks after the end look at all of it)
start b b; sleep 0.3
start c c; sleep 2
check "the others stand by while a holds the lease (holder '$(holder)')" test "$(holder)" = a
contains "b logged that it stands by" "$WORK/b.out" "another instance holds the collector lease: standing by"

# 0. a reload of the holder keeps the lease where it is (an owner change
# here has no end to pair with, and fails the checks below).
kill -HUP "${pid[a]}"
check "a reloaded its configuration" wait_for_text "$WORK/a.out" "configuration reloaded"
check "a still holds the lease after the reload (holder '$(holder)')" test "$(holder)" = a

# 1. kill -9 the holder; a comes back (same store) and must stand by.
kill -9 "${pid[a]}"; ended kill a
wait "${pid[a]}" 2>/dev/null
check "someone takes over from a" wait_takeover a
sleep 1.5
start a2 a
sleep 1.5

# 2. kill -9 the new holder.
h2=$(holder)
kill -9 "${pid[$h2]}"; ended kill "$h2"
wait "${pid[$h2]}" 2>/dev/null
check "someone takes over from $h2" wait_takeover "$h2"
sleep 1.5

# 3. freeze the holder past the TTL: another takes over; once resumed, the
# frozen one finds its lease gone and must not collect again.
h3=$(holder)
kill -STOP "${pid[$h3]}"; ended stop "$h3"
check "someone takes over from the frozen $h3" wait_takeover "$h3"
sleep 1
kill -CONT "${pid[$h3]}"
sleep "$TTL"
check "the resumed $h3 is alive" kill -0 "${pid[$h3]}"

# 4. SIGTERM the holder while its request is in flight (the mock delays
# it): the lease must not pass before that run ends.
h4=$(holder)
touch "$WORK/slow_$h4"
check "a request of $h4 is in flight" wait_until 5 test -e "$WORK/inflight_$h4"
kill -TERM "${pid[$h4]}"; ended term "$h4"
wait "${pid[$h4]}"
check "$h4 exits 0 after SIGTERM" test $? -eq 0
rm -f "$WORK/slow_$h4"
check "someone takes over from $h4" wait_takeover "$h4"
sleep 1

# Stop the standbys first (a standby stopped after the holder could take
# over in between), then the holder, then the mock.
last=$(holder)
for n in "${!pid[@]}"; do
  [ "$n" != "$last" ] && kill -0 "${pid[$n]}" 2>/dev/null && { kill -TERM "${pid[$n]}"; wait "${pid[$n]}"; }
done
kill -TERM "${pid[$last]}"; wait "${pid[$last]}"
check "the last holder $last exits 0" test $? -eq 0
kill -TERM "$mock_pid"; wait "$mock_pid"
mock_pid=""

# --- the exchange's view ---------------------------------------------------
sort -n -k1,1 "$WORK/requests" >"$WORK/sorted"
n=$(wc -l <"$WORK/sorted")
check "the exchange saw a steady stream of requests ($n)" test "$n" -ge 40
check "every request was answered 200" test "$(awk '$4 != 200' "$WORK/sorted" | wc -l)" -eq 0

# Owner changes, in time order, against the recorded ends: a change from X
# must follow an end of X that came after X's last request, start after
# that request was answered, and (kill, stop) come when the old lease
# expired: not before TTL - TTL/3 (X renewed at most TTL/3 before its end),
# not after TTL + TTL/3 (+ slack). After a SIGTERM the lease is released
# when the run in flight ends: taken within one renewal period of it.
awk -v ttl=$TTL -v renew="$RENEW" -v slack=$SLACK '
  function pass(m) { print "PASS " m }
  function fail(m) { print "FAIL " m }
  FNR == NR { ne++; et[ne] = $1; ek[ne] = $2; ei[ne] = $3; next }
  prev != "" && $3 != prev {
    ns++
    k = 0
    for (j = 1; j <= ne && !k; j++)
      if (!used[j] && ei[j] == prev && et[j] >= last_arr && et[j] <= $1) k = j
    if (!k) {
      fail(sprintf("owner change %d (%s -> %s at %.3f) while %s was running", ns, prev, $3, $1, prev))
    } else {
      used[k] = 1
      what = sprintf("owner change %d: %s -> %s after %s", ns, prev, $3, ek[k])
      if ($1 < last_done)
        fail(sprintf("%s: overlap, %s asked at %.3f while %s waited for its reply until %.3f", what, $3, $1, prev, last_done))
      else pass(sprintf("%s: no overlap (%.3f s between the last reply and the next request)", what, $1 - last_done))
      if (ek[k] == "term") {
        d = $1 - last_done
        if (d <= renew + slack) pass(sprintf("%s: the lease passed %.2f s after the in-flight run ended", what, d))
        else fail(sprintf("%s: the lease passed %.2f s after the in-flight run ended (> %.2f)", what, d, renew + slack))
      } else {
        d = $1 - et[k]
        lo = ttl - renew - 0.1; hi = ttl + renew + slack
        if (d >= lo && d <= hi) pass(sprintf("%s: took over %.2f s after (in [%.2f, %.2f])", what, d, lo, hi))
        else fail(sprintf("%s: took over %.2f s after (not in [%.2f, %.2f])", what, d, lo, hi))
      }
    }
  }
  { prev = $3; last_arr = $1; last_done = $2 }
  END { if (ns != ne) fail(sprintf("%d owner changes for %d ends of the holder", ns, ne))
        else pass(sprintf("%d owner changes, one per end of the holder", ns)) }
' "$WORK/ends" "$WORK/sorted" >"$WORK/verdicts"
while read -r v msg; do
  if [ "$v" = PASS ]; then ok "$msg"; else not_ok "$msg"; fi
done <"$WORK/verdicts"
check "the exchange's log was judged" test -s "$WORK/verdicts"
if grep -q '^FAIL' "$WORK/verdicts"; then
  echo "    ends (time kind instance):"; sed 's/^/    /' "$WORK/ends"
  echo "    requests (arrival reply instance status serverTime):"; sed 's/^/    /' "$WORK/sorted"
fi

# --- each instance's store --------------------------------------------------
# Its rows are exactly its own requests' replies; a reply that reached an
# instance killed before it could store it is the only one allowed missing.
cat >"$WORK/stored.lua" <<'LUA'
local db = assert(require("sluice.store").open(os.getenv("DB")))
for _, r in ipairs(assert(db:query("SELECT server_ms FROM probes WHERE instance = ?", os.getenv("INST")))) do
  print(string.format("%d", r.server_ms))
end
db:close()
LUA
for inst in a b c a2; do
  DB=$WORK/${inst%2}.db INST=$inst "$SLUICE" run "$WORK/stored.lua" --control none | sort >"$WORK/stored_$inst"
  awk -v i="$inst" '$3 == i { print $5 }' "$WORK/sorted" | sort >"$WORK/asked_$inst"
  extra=$(comm -23 "$WORK/stored_$inst" "$WORK/asked_$inst" | wc -l)
  missing=$(comm -13 "$WORK/stored_$inst" "$WORK/asked_$inst" | wc -l)
  allowed=0
  grep -q " kill $inst\$" "$WORK/ends" && allowed=1
  check "$inst stored only rows of its own requests ($(wc -l <"$WORK/stored_$inst") rows, $extra not its own)" \
    test "$extra" -eq 0
  check "$inst stored every reply it received ($missing missing, $allowed allowed)" test "$missing" -le "$allowed"
done

finish
