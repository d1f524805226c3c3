--- support.sink_rows: the rows the sink specs forward (PostgreSQL,
-- ClickHouse, RabbitMQ): one table of ten columns covering every store type
-- a sink maps, with the values that break lossy paths -- 2^256-1, an int64
-- beyond 2^53, decimals with trailing zeros, doubles, JSON holding a big
-- numeral, text with tabs, newlines, quotes, backslashes and backticks.
--
--   local rows = require "support.sink_rows"
--   rows.TRADES            -- the table definition (key id)
--   rows.trade(i [, rev])  -- row i; rev changes the non-key values (updates)
local json = require "sluice.json"

local _M = {}

_M.U256MAX = "115792089237316195423570985008687907853269984665640564039457584007913129639935"

_M.TRADES = {
  name = "trades",
  columns = {
    id = "integer", symbol = "text", price = "decimal", big = "uint256", qty = "real",
    meta = "json", ts = "integer", side = "text", fee = "decimal", seq = "integer",
  },
  key = { "id" },
}

function _M.trade(i, rev)
  rev = rev or 0
  return {
    id = i, symbol = "SYM" .. (i % 97), price = ("%d.%02d"):format(i % 100000, (i + rev) % 100),
    big = i == 1 and _M.U256MAX or tostring(i) .. "000000000000000000000000000000",
    qty = i / 7, meta = { n = i, tag = "t\t" .. rev, big = json.numeral("12345678901234567890.5") },
    ts = 1700000000000 + i, side = i % 2 == 0 and "buy" or "sell\n'\"\\`", fee = "0.000000" .. (i % 10),
    seq = (i == 2) and 9007199254740993LL or rev,
  }
end

return _M
