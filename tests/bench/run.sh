#!/usr/bin/env bash
# run.sh -- runs the benchmarks and writes every figure to a JSON file;
# asserts nothing.
#   tests/bench/run.sh [path/to/sluice] [OUT.json]     (build/sluice, build/bench-<date>.json)
# Each benchmark prints what a person reads and, for every figure, a line
# `@figure <name> <value> [unit]` (tests/lua/support/bench.lua); this
# script shows the output and collects those lines into
#   {"figures": {"<name>": {"value": <number>, "unit": "<unit>"}, ...},
#    "commit": "<git HEAD, -dirty when the tree has changes>",
#    "date": "<UTC, ISO 8601>", "machine": "<uname -srm, CPUs, model>"}
# one figure a line (tests/bench/compare.sh OLD.json NEW.json reads it).
# BENCH="tasks http ..." picks benchmarks by name (default: the list in
# DEFAULT below; "all" adds the ones that need PostgreSQL, ClickHouse,
# anvil, python3-websockets or redis-benchmark). A benchmark whose file is
# missing is skipped with a note; one that fails is noted and the rest run.
# Uses /usr/bin/time (package `time`) for peak RSS and hyperfine for
# start-up time when installed. EXCHANGES_SECONDS (default 30) is how long
# exchanges.lua measures.
set -uo pipefail
cd "$(dirname "$0")/../.."
SLUICE=$(readlink -f "${1:-build/sluice}")
OUT=${2:-build/bench-$(date -u +%Y%m%d-%H%M%S).json}
LOG=$(mktemp)
trap 'rm -f "$LOG" "$LOG".*' EXIT
LUA=("$SLUICE" run --control none --lua-path tests/lua)

DEFAULT="idle tasks startup json_decode budget breaker exchanges collectors app http h2 store store_stall limiter_scale"
ALL="$DEFAULT backfill redis gcra outbox ws book sink_postgres sink_clickhouse evm_backfill"
BENCH=${BENCH:-$DEFAULT}
[ "$BENCH" = all ] && BENCH=$ALL

notes=()
# bench NAME FILE COMMAND...: runs it (skipped when FILE is missing),
# output to the terminal and the log
bench() {
  local name=$1 file=$2; shift 2
  case " $BENCH " in *" $name "*) ;; *) return 0 ;; esac
  if [ ! -e "$file" ]; then
    echo "== $name: skipped, $file is missing"
    notes+=("$name: skipped ($file missing)")
    return 0
  fi
  echo "== $name: ${*/#$SLUICE/sluice}"
  "$@" 2>&1 | tee -a "$LOG"
  local code=${PIPESTATUS[0]}
  if [ "$code" != 0 ]; then
    echo "== $name: FAILED (exit $code)"
    notes+=("$name: failed (exit $code)")
  fi
}

idle() {
  [ -x /usr/bin/time ] || { echo "(install the 'time' package for /usr/bin/time -v)"; return 0; }
  /usr/bin/time -v "$SLUICE" run --control none tests/bench/idle.lua -- 2 2>&1 |
    awk -F': ' '/Maximum resident set size/ { printf "max RSS: %.1f MiB\n@figure idle.rss %.4g MiB\n", $2 / 1024, $2 / 1024 }'
}
tasks() {
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "max RSS: %M KiB" -o "$LOG.rss" "${LUA[@]}" tests/bench/tasks.lua
    cat "$LOG.rss"
    awk '{ printf "@figure tasks.peak_rss %.4g MiB\n", $3 / 1024 }' "$LOG.rss"
  else
    "${LUA[@]}" tests/bench/tasks.lua
  fi
}
startup() {
  command -v hyperfine >/dev/null || { echo "(install hyperfine for the start-up time)"; return 0; }
  local empty
  empty=$(mktemp --suffix=.lua)
  hyperfine -N --warmup 5 --runs 50 --export-json "$LOG.hf" "$SLUICE run --control none $empty" 2>/dev/null | sed -n '2,3p'
  rm -f "$empty"
  grep -o '"mean": *[0-9.e+-]*' "$LOG.hf" | head -1 | awk '{ printf "@figure startup.mean %.4g ms\n", $2 * 1000 }'
}

echo "== sluice benchmarks: $SLUICE"
bench idle tests/bench/idle.lua idle
bench tasks tests/bench/tasks.lua tasks
bench startup tests/bench/idle.lua startup
bench json_decode tests/bench/json_decode.lua "${LUA[@]}" tests/bench/json_decode.lua
bench budget tests/bench/budget.lua "${LUA[@]}" tests/bench/budget.lua
bench breaker tests/bench/breaker.lua "${LUA[@]}" tests/bench/breaker.lua
bench exchanges tests/bench/exchanges.lua "${LUA[@]}" tests/bench/exchanges.lua -- "${EXCHANGES_SECONDS:-30}"
bench collectors tests/bench/collectors.lua "${LUA[@]}" tests/bench/collectors.lua -- 1000 20
bench app tests/bench/app_collectors.sh bash tests/bench/app_collectors.sh "$SLUICE" 1000 40
bench http tests/bench/http/run.sh bash tests/bench/http/run.sh "$SLUICE" 64 10
bench h2 tests/bench/http/h2.sh bash tests/bench/http/h2.sh "$SLUICE" 64 10
bench store tests/bench/store.lua "${LUA[@]}" tests/bench/store.lua
bench store_stall tests/bench/store_stall.lua "${LUA[@]}" tests/bench/store_stall.lua
bench limiter_scale tests/bench/limiter/scale.lua "${LUA[@]}" tests/bench/limiter/scale.lua
bench backfill tests/bench/backfill.lua "${LUA[@]}" tests/bench/backfill.lua
bench redis tests/bench/redis.lua "${LUA[@]}" tests/bench/redis.lua
bench gcra tests/bench/gcra.lua "${LUA[@]}" tests/bench/gcra.lua
bench outbox tests/bench/outbox.lua "${LUA[@]}" tests/bench/outbox.lua
bench ws tests/bench/ws.lua "${LUA[@]}" tests/bench/ws.lua
bench book tests/bench/book.lua "${LUA[@]}" tests/bench/book.lua
bench sink_postgres tests/bench/sink_postgres.lua "${LUA[@]}" tests/bench/sink_postgres.lua
bench sink_clickhouse tests/bench/sink_clickhouse.lua "${LUA[@]}" tests/bench/sink_clickhouse.lua
bench evm_backfill tests/bench/evm_backfill.sh bash tests/bench/evm_backfill.sh "$SLUICE"

commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit-dirty"
model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null)
machine="$(uname -srm), $(nproc) CPUs${model:+, $model}"
mkdir -p "$(dirname "$OUT")"
# the @figure lines -> JSON (a name seen twice keeps its last value)
awk -v commit="$commit" -v date="$(date -u +%Y-%m-%dT%H:%M:%SZ)" -v machine="$machine" '
  function esc(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); gsub(/\t/, " ", s); return s }
  /^@figure [a-z0-9_.]+ [-+0-9.eE]+( [^ ]+)?$/ {
    if (!($2 in value)) order[++n] = $2
    value[$2] = $3 + 0; unit[$2] = (NF >= 4 ? $4 : "")
  }
  END {
    printf "{\n  \"figures\": {\n"
    for (i = 1; i <= n; i++)
      printf "    \"%s\": {\"value\": %.10g, \"unit\": \"%s\"}%s\n", order[i], value[order[i]],
        esc(unit[order[i]]), (i < n ? "," : "")
    printf "  },\n  \"commit\": \"%s\",\n  \"date\": \"%s\",\n  \"machine\": \"%s\"\n}\n",
      esc(commit), esc(date), esc(machine)
  }' "$LOG" >"$OUT.tmp" && mv "$OUT.tmp" "$OUT"
echo "== $(grep -c '"value"' "$OUT") figures written to $OUT"
for n in "${notes[@]}"; do echo "   note: $n"; done
