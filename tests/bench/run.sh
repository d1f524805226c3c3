#!/usr/bin/env bash
# run.sh -- runtime benchmarks; prints figures, asserts nothing.
#   tests/bench/run.sh [path/to/sluice]
# Uses /usr/bin/time (package `time`) for peak RSS and hyperfine (package
# `hyperfine`) for start-up time when they are installed. EXCHANGES_SECONDS
# (default 30) is how long exchanges.lua measures.
set -euo pipefail
cd "$(dirname "$0")/../.."
SLUICE=${1:-build/sluice}

echo "== idle RSS: sluice run on a script that only sleeps 2 s"
if [ -x /usr/bin/time ]; then
  /usr/bin/time -v "$SLUICE" run tests/bench/idle.lua -- 2 2>&1 |
    awk -F': ' '/Maximum resident set size/ { printf "max RSS: %.1f MiB\n", $2 / 1024 }'
else
  echo "(install the 'time' package for /usr/bin/time -v)"
fi

echo "== tasks: 1,000,000 trivial spawns; 10,000 concurrent 100 ms sleeps"
if [ -x /usr/bin/time ]; then
  /usr/bin/time -f "max RSS: %M KiB" "$SLUICE" run tests/bench/tasks.lua 2>&1
else
  "$SLUICE" run tests/bench/tasks.lua
fi

echo "== exchange collectors: 5 exchanges x 20 symbols, tickers and order books every 1 s, against their mocks"
"$SLUICE" run --lua-path tests/lua tests/bench/exchanges.lua -- "${EXCHANGES_SECONDS:-30}"

if command -v hyperfine >/dev/null; then
  echo "== start-up: sluice run on an empty script"
  empty=$(mktemp --suffix=.lua)
  hyperfine -N --warmup 5 --runs 50 "$SLUICE run $empty" 2>/dev/null | sed -n '2,3p'
  rm -f "$empty"
fi
