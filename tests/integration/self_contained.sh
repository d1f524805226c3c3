#!/usr/bin/env bash
# self_contained.sh -- the tests need nothing outside the repository: a copy
# of tests/ in an empty directory (no shared folder beside it) runs the specs
# that read recorded fixtures, and no source or test file names that folder.
. "$(dirname "$0")/common.bash"

mkdir "$WORK/clone"
cp -r tests "$WORK/clone/tests"
for spec in binance_klines_spec mock_binance_spec; do
  expect_exit "$spec passes in a copy with nothing beside it" 0 \
    env -C "$WORK/clone" "$SLUICE" test --lua-path tests/lua "tests/lua/$spec.lua"
done

# Markdown may mention where fixtures came from; code and scripts may not
# depend on it.
# (the pattern is split so that this file does not name the folder itself)
refs=$(grep -rlE '\.\./shar''ed' --exclude='*.md' --exclude=self_contained.sh --exclude-dir=.git \
  --exclude-dir=build . 2>/dev/null || true)
if [ -z "$refs" ]; then ok "no file outside the docs refers to the shared folder"; else
  not_ok "no file outside the docs refers to the shared folder"; echo "$refs" | sed 's/^/    /'; fi

finish
