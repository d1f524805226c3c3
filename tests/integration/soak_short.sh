#!/usr/bin/env bash
# soak_short.sh -- a 2-minute leak check: tests/bench/soak.sh scaled down
# (SOAK_SHORT_COLLECTORS collectors, default 200, or 50 when the binary is
# the ASan build, i.e. links libasan; 80 s of load with a 20 s fault cycle,
# a reload every 15 s, Redis stopped for 5 s twice, a sample every 2 s).
# After the load the process is reloaded to no collectors; then its task
# count and open fds must be back at the baseline measured before the load
# (fds not counting the idle connections libcurl keeps cached to the mock,
# which are bounded by its cache), the RSS slope over the second half of
# the load below RSS_BOUND KiB/min (12288: 12 MiB/min; the first half is warm-up: the Lua
# heap, SQLite's cache and malloc's arenas growing to their working size;
# not checked in the ASan build, whose quarantine keeps freed memory
# resident), and the JSON log without a warning or error that is not an
# injected fault's.
. "$(dirname "$0")/common.bash"

RSS_BOUND=${SOAK_SHORT_RSS_BOUND:-12288}
asan=0
ldd "$SLUICE" 2>/dev/null | grep -q libasan && asan=1
N=${SOAK_SHORT_COLLECTORS:-$([ $asan = 1 ] && echo 50 || echo 200)}

SOAK_OUT="$WORK/soak" SOAK_SECONDS=80 SOAK_SAMPLE=2 SOAK_RELOAD=15 SOAK_IDLE=8 MOCK_PERIOD=20 \
  SOAK_REDIS_DOWN=5 bash "$(dirname "$0")/../bench/soak.sh" "$SLUICE" 2 "$N" >"$WORK/soak.out" 2>&1
code=$?
sed 's/^/    /' "$WORK/soak.out"
check "soak.sh ran to the end (exit $code)" test "$code" = 0
summary="$WORK/soak/summary.txt"
get() { sed -n "s/^$1=//p" "$summary" 2>/dev/null; }

check "sluice exited 0 on SIGTERM after the soak (got $(get exit_code))" test "$(get exit_code)" = 0
check "every reload applied" test "$(grep -c 'reload .* refused' "$WORK/soak/events.csv")" = 0
check "Redis was stopped and started twice" test "$(grep -c 'redis started' "$WORK/soak/events.csv")" = 2
check "collections succeeded ($(get collections_ok)) and injected faults were logged ($(get injected_lines))" \
  test "$(get collections_ok)" -gt 0 -a "$(get injected_lines)" -gt 0
check "tasks back at the baseline ($(get tasks_base) before, $(get tasks_after) after)" \
  test "$(get task_delta)" = 0
check "fds back at the baseline ($(get fds_base) before, $(get fds_after) after; idle connections to the mock: $(get pooled_base), $(get pooled_after))" \
  test "$(get fd_delta)" = 0
check "no warning or error that is not an injected fault's ($(get unexpected_lines))" \
  test "$(get unexpected_lines)" = 0
slope=$(get rss_slope2_kib_min)
if [ $asan = 1 ]; then
  ok "RSS slope not checked in the ASan build (second half: $slope KiB/min)"
else
  check "RSS slope over the second half of the load ($slope KiB/min) below $RSS_BOUND KiB/min" \
    awk -v s="${slope:-1e9}" -v b="$RSS_BOUND" 'BEGIN { exit !(s < b) }'
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
