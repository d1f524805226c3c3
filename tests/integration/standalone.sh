#!/usr/bin/env bash
# standalone.sh -- the binary runs alone: embedded Lua, LuaJIT linked in.
. "$(dirname "$0")/common.bash"

mkdir "$WORK/alone"
cp "$SLUICE" "$WORK/alone/sluice"
cat >"$WORK/alone/main.lua" <<'LUA'
local sluice = require "sluice"
local log = require "sluice.log"
local cjson = require "cjson"
local t = sluice.spawn(function() sluice.sleep(0.01); return cjson.encode({ ok = true }) end)
local _, s = sluice.wait(t)
print("embedded:", s, type(log.info))
LUA
# Run from the empty directory with no Lua path at all: every module must
# come from the executable itself.
expect_exit "copied binary runs" 0 env -C "$WORK/alone" LUA_PATH=';;' LUA_PATH_5_1=';;' ./sluice run main.lua
contains "embedded modules load" "$WORK/out" 'embedded:	{"ok":true}	function'

ldd "$SLUICE" >"$WORK/ldd" 2>&1
if grep -qi luajit "$WORK/ldd"; then not_ok "ldd shows no libluajit"; sed 's/^/    /' "$WORK/ldd"
else ok "ldd shows no libluajit"; fi
if grep -q "not found" "$WORK/ldd"; then not_ok "all shared libraries resolve"; else ok "all shared libraries resolve"; fi

finish
