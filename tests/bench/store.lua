-- store.lua -- sluice.store upsert throughput and the longest loop stall.
--   sluice run --lua-path tests/lua tests/bench/store.lua [-- PREFILL_ROWS BATCH PATH]
-- Upserts BATCH-row batches of 10 columns (from Lua, with validation) into a
-- fresh file table until it holds PREFILL_ROWS (default 1,000,000), then
-- measures new rows, re-sent identical rows and changed rows against that
-- table. Each upsert is one transaction and blocks the loop while it runs:
-- its duration is the loop stall. Only the upsert calls are timed.
local sluice = require "sluice"
local store = require "sluice.store"
local fx = require "support.store"

local arg1, arg2, arg3 = ...
local prefill = tonumber(arg1) or 1000000
local batch = tonumber(arg2) or 1000
local path = arg3 or fx.tmpdb()
local remove_db = fx.remove_db
remove_db(path)

local db = assert(store.open(path))
db:define{
  name = "klines",
  columns = { symbol = "text", open_time = "integer", open = "real", high = "real", low = "real",
    close = "real", volume = "real", close_time = "integer", quote_volume = "real", trades = "integer" },
  key = { "symbol", "open_time" },
  required = { "close" },
}

local SYMBOLS = { "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT" }
local function make_batch(first, n, bump)
  local rows = {}
  for i = 0, n - 1 do
    local k = first + i
    local price = 100 + (k % 977) * 0.01 + (bump or 0)
    rows[i + 1] = {
      symbol = SYMBOLS[k % 4 + 1], open_time = 1500000000000 + math.floor(k / 4) * 60000,
      open = price, high = price + 1, low = price - 1, close = price + 0.5,
      volume = k * 0.25, close_time = 1500000000000 + math.floor(k / 4) * 60000 + 59999,
      quote_volume = price * k, trades = k % 1000,
    }
  end
  return rows
end

-- Runs batches first..first+count*batch; returns rows/s, max and p99 batch
-- seconds, and the counts summed.
local function run(label, first, nbatches, bump)
  local durations, total = {}, 0
  local sums = { 0, 0, 0, 0 }
  for b = 0, nbatches - 1 do
    local rows = make_batch(first + b * batch, batch, bump)
    local t0 = sluice.now()
    local a, u, c, r = db:upsert("klines", rows)
    local dt = sluice.now() - t0
    assert(a, u)
    sums[1], sums[2], sums[3], sums[4] = sums[1] + a, sums[2] + u, sums[3] + c, sums[4] + r
    durations[#durations + 1] = dt
    total = total + dt
    if b % 50 == 49 then sluice.yield() end -- let the loop breathe, as a collector would
  end
  table.sort(durations)
  local n = nbatches * batch
  print(string.format("%-34s %9d rows  %8.0f rows/s  batch mean %.2f ms  p99 %.2f ms  max %.2f ms"
    .. "  (ins %d upd %d same %d rej %d)",
    label, n, n / total, total / nbatches * 1000, durations[math.max(1, math.floor(#durations * 0.99))] * 1000,
    durations[#durations] * 1000, sums[1], sums[2], sums[3], sums[4]))
end

print(string.format("sluice.store benchmark: %d-row batches of 10 columns, SQLite %s, %s",
  batch, store.sqlite_version, path))
run("fresh table, first 100k", 0, 100000 / batch)
run("filling to " .. prefill, 100000, (prefill - 100000) / batch)
run("new rows into " .. prefill .. "-row table", prefill, 100000 / batch)
run("re-sent identical rows (unchanged)", prefill - 100000, 100000 / batch)
run("changed rows (updated)", prefill - 100000, 100000 / batch, 0.5)
run("random old rows re-sent (unchanged)", 7 * batch, 100000 / batch)
db:close()
local f = io.open(path, "rb")
if f then
  print(string.format("database file: %.1f MiB", f:seek("end") / 2 ^ 20))
  f:close()
end
remove_db(path)
