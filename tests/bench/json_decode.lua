-- json_decode.lua -- sluice.json.decode (exact, yajl) against cjson.decode
-- on recorded responses: the httpResponse bodies of the ccxt fixtures and
-- the mev-relay builder_blocks_received response, each re-encoded to text
-- by json.encode. Prints MB/s of each and the ratio of their times.
--   sluice run tests/bench/json_decode.lua [-- SECONDS_PER_CASE]
local json = require "sluice.json"
local cjson = require "cjson.safe"
local seconds = tonumber((...)) or 0.5
local clock, format = os.clock, string.format

local function read(path)
  local f = assert(io.open(path, "rb"))
  local doc = assert(json.decode(f:read("*a")))
  f:close()
  return doc
end

-- name -> body text
local bodies = {}
for _, ex in ipairs({ "binance", "bitget", "bybit", "gate", "htx" }) do
  local doc = read("tests/fixtures/ccxt/" .. ex .. ".json")
  local parts = {}
  for _, e in ipairs(doc.entries) do
    if e.httpResponse ~= nil then parts[#parts + 1] = assert(json.encode(e.httpResponse)) end
  end
  bodies[#bodies + 1] = { "ccxt " .. ex .. " (" .. #parts .. " responses)", parts }
end
local relay = read("tests/fixtures/mev-relays/builder_blocks_received_slot_6214255.json")
bodies[#bodies + 1] = { "mev-relay builder_blocks_received", { assert(json.encode(relay.response)) } }

-- seconds per pass over parts, and bytes per pass
local function time(decode, parts)
  local bytes = 0
  for _, p in ipairs(parts) do bytes = bytes + #p end
  local passes, t0 = 0, clock()
  repeat
    for i = 1, #parts do
      if decode(parts[i]) == nil then error("decode failed") end
    end
    passes = passes + 1
  until clock() - t0 >= seconds
  return (clock() - t0) / passes, bytes
end

print(format("%-40s %10s %12s %12s %8s", "body", "bytes", "cjson MB/s", "json MB/s", "ratio"))
local total_c, total_j = 0, 0
for _, b in ipairs(bodies) do
  local name, parts = b[1], b[2]
  time(json.decode, parts) -- warm up
  local tc, bytes = time(cjson.decode, parts)
  local tj = time(json.decode, parts)
  total_c, total_j = total_c + tc, total_j + tj
  print(format("%-40s %10d %12.1f %12.1f %8.2f", name, bytes, bytes / tc / 1e6, bytes / tj / 1e6, tj / tc))
end
print(format("%-40s %10s %12s %12s %8.2f", "all (time of json / time of cjson)", "", "", "", total_j / total_c))
print(format("@figure json_decode.time_vs_cjson %.6g ratio", total_j / total_c))
