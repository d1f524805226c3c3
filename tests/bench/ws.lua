-- ws.lua -- WebSocket messages/s received and JSON-decoded by sluice.ws, next
-- to a Python websockets client (Debian's python3-websockets 10.4, the same
-- server) in the same run; CPU seconds per 100,000 messages for both.
--   sluice run --lua-path tests/lua tests/bench/ws.lua [-- MESSAGES SIZE ROUNDS]
-- The server (support/ws_server.py, path /bench) writes MESSAGES (200000)
-- JSON depth updates of about SIZE (1024) bytes as pre-built raw frames as
-- fast as the socket takes them, so the reader is what is measured. Each
-- round runs the Python client, then sluice decoding each message with
-- sluice.json (exact: decimals kept as numerals), then sluice receiving
-- only; the best round of each counts.
local sluice = require "sluice"
local ws = require "sluice.ws"
local json = require "sluice.json"
local peer = require "support.ws_peer"
local arg1, arg2, arg3 = ...
local n = tonumber(arg1) or 200000
local size = tonumber(arg2) or 1024
local rounds = tonumber(arg3) or 3

local srv = peer.start()
local url = srv:url(("/bench?n=%d&size=%d"):format(n, size))

local PY = [[
import asyncio, json, sys, time, websockets
async def main(url, n):
    async with websockets.connect(url, compression=None, max_size=None) as ws:
        t0, c0 = time.perf_counter(), time.process_time()
        got = 0
        while got < n:
            m = await ws.recv()
            json.loads(m)
            got += 1
        print(got, time.perf_counter() - t0, time.process_time() - c0)
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
]]
local pyfile = os.tmpname()
local f = assert(io.open(pyfile, "w"))
f:write(PY)
f:close()

-- Runs the Python client (blocking this process's loop, which has nothing
-- else to do meanwhile) -> messages, seconds, cpu seconds.
local function python_round()
  local p = io.popen(("/usr/bin/python3 %s '%s' %d"):format(pyfile, url, n))
  local out = p:read("*a")
  p:close()
  local got, secs, cpu = out:match("^(%d+) (%S+) (%S+)")
  assert(got, "python client failed: " .. out)
  return tonumber(got), tonumber(secs), tonumber(cpu)
end

local decode = json.decode

local function sluice_round(dec)
  local c = assert(ws.connect(url, { max_message = 1 * 2 ^ 20 }))
  local t0, c0 = sluice.now(), os.clock()
  local got, bytes = 0, 0
  while got < n do
    local m = assert(c:receive(30))
    dec(m)
    got, bytes = got + 1, bytes + #m
  end
  local secs, cpu = sluice.now() - t0, os.clock() - c0
  local st = c:stats()
  c:close()
  return got, secs, cpu, bytes / got, st.stalls
end

local best = {}
local function keep(who, got, secs, cpu)
  local rate = got / secs
  if not best[who] or rate > best[who].rate then
    best[who] = { rate = rate, cpu = cpu / got * 1e5, secs = secs }
  end
end

local avg, stalls
for r = 1, rounds do
  keep("python", python_round())
  local got, secs, cpu
  got, secs, cpu, avg, stalls = sluice_round(decode)
  keep("sluice", got, secs, cpu)
  keep("receive", sluice_round(function() end))
  io.write(("round %d: python %.0f/s, sluice %.0f/s\n"):format(r, best.python.rate, best.sluice.rate))
end
print(("%d messages of %.0f bytes (JSON depth updates), best of %d rounds:"):format(n, avg, rounds))
local LABEL = { sluice = "sluice (receive + sluice.json.decode)", receive = "sluice (receive only)",
  python = "python (recv + json.loads)" }
for _, who in ipairs { "sluice", "receive", "python" } do
  local b = best[who]
  print(("  %-38s %8.0f messages/s  %6.2f CPU s per 100,000 messages"):format(LABEL[who], b.rate, b.cpu))
end
print(("  sluice / python: %.2fx the rate, %.2fx the CPU per message (sluice stalls in the last round: %d)"):format(
  best.sluice.rate / best.python.rate, best.sluice.cpu / best.python.cpu, stalls))
require("support.bench").figure("ws.rate_vs_python", best.sluice.rate / best.python.rate, "ratio")
require("support.bench").figure("ws.cpu_per_message_vs_python", best.sluice.cpu / best.python.cpu, "ratio")
os.remove(pyfile)
srv:stop()
