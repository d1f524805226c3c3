#!/usr/bin/env bash
# cli.sh -- the sluice command line: help, version, exit codes, --lua-path.
. "$(dirname "$0")/common.bash"

expect_exit "--help exits 0" 0 "$SLUICE" --help
contains "--help lists run" "$WORK/out" "run FILE.lua"
expect_exit "run --help exits 0" 0 "$SLUICE" run --help
contains "run --help lists --lua-path" "$WORK/out" "--lua-path DIR"
expect_exit "test --help exits 0" 0 "$SLUICE" test --help
expect_exit "help run exits 0" 0 "$SLUICE" help run

expect_exit "version exits 0" 0 "$SLUICE" version
for lib in "sluice 0.1.0" LuaJIT libcurl libevent SQLite hiredis; do
  contains "version names $lib" "$WORK/out" "$lib"
done

expect_exit "no command is a usage error" 2 "$SLUICE"
expect_exit "unknown command is a usage error" 2 "$SLUICE" frobnicate
contains "unknown command says so in one line" "$WORK/out" "sluice: unknown command 'frobnicate'"
check "usage errors are one line" test "$(wc -l <"$WORK/out")" -eq 1
expect_exit "missing file exits 2" 2 "$SLUICE" run "$WORK/nope.lua"
contains "missing file is named" "$WORK/out" "nope.lua: no such file"
echo 'print(1)' >"$WORK/one.lua"
expect_exit "unknown flag exits 2" 2 "$SLUICE" run "$WORK/one.lua" --frob
contains "unknown flag is named" "$WORK/out" "unknown option '--frob'"
expect_exit "bad log level exits 2" 2 "$SLUICE" run "$WORK/one.lua" --log-level loud
expect_exit "flag without value exits 2" 2 "$SLUICE" run "$WORK/one.lua" --log-format
expect_exit "bad --lua-path exits 2" 2 "$SLUICE" run "$WORK/one.lua" --lua-path "$WORK/none"

printf 'local x = \n' >"$WORK/syntax.lua"
expect_exit "a syntax error exits 1" 1 "$SLUICE" run "$WORK/syntax.lua"
contains "the syntax error names file and line" "$WORK/out" "syntax.lua:2:"

echo 'error("config is broken")' >"$WORK/fails.lua"
expect_exit "a failing main task exits 1" 1 "$SLUICE" run "$WORK/fails.lua" --log-format json
contains "the failure is logged with file and line" "$WORK/out" 'fails.lua:1: config is broken'

cat >"$WORK/args.lua" <<'LUA'
local a, b = ...
print(a, b, arg[0]:match("args%.lua$") ~= nil, #arg)
LUA
expect_exit "script args after --" 0 "$SLUICE" run "$WORK/args.lua" -- x y
contains "script gets ... and arg" "$WORK/out" "x	y	true	2"

# --lua-path puts a directory in front of the embedded modules.
mkdir -p "$WORK/override/sluice"
cat >"$WORK/override/sluice/log.lua" <<'LUA'
return { overridden = true }
LUA
echo 'print("overridden:", require("sluice.log").overridden)' >"$WORK/ov.lua"
expect_exit "run with --lua-path" 0 "$SLUICE" run "$WORK/ov.lua" --lua-path "$WORK/override"
contains "a module in --lua-path overrides the embedded one" "$WORK/out" "overridden:	true"
expect_exit "run without --lua-path" 0 "$SLUICE" run "$WORK/ov.lua"
contains "without it the embedded module loads" "$WORK/out" "overridden:	nil"

echo 'require("sluice.log").info("hi", {n = 1})' >"$WORK/log.lua"
expect_exit "json log format" 0 "$SLUICE" run "$WORK/log.lua" --log-format json
contains "json log line" "$WORK/out" '"level":"info","msg":"hi","n":1}'
expect_exit "console log format" 0 "$SLUICE" run "$WORK/log.lua" --log-format=console
contains "console log line" "$WORK/out" "INFO  hi n=1"
expect_exit "log level none" 0 "$SLUICE" run "$WORK/log.lua" --log-level none
check "level none prints nothing" test ! -s "$WORK/out"

finish
