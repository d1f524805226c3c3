-- ticker_collector.lua -- a custom collector in one short file.
--
-- It polls a Binance-compatible /api/v3/ticker/price for a few symbols and
-- stores one row per symbol and poll. Everything else (rate limiting, the
-- circuit breaker, retries, statistics, health, storage) is the framework's.
-- See examples/custom.lua for a configuration that runs it.
local collector = require "sluice.collector"
local sluice = require "sluice"

return collector.define({
  name = "tickers",
  base_url = "https://api.binance.com",
  interval = 5,
  limiter = { rate = 5 },
  retry = { strategy = "exponential_jitter", max_attempts = 3 },
  options = { symbols = { "BTCUSDT", "ETHUSDT" } },
  tables = {
    prices = {
      columns = { symbol = "text", at = "integer", price = "real" },
      key = { "symbol", "at" },
      validate = function(row) return row.price > 0, "price must be positive" end,
    },
  },
  collect = function(self)
    local rows = {}
    local at = math.floor(sluice.time())
    for _, symbol in ipairs(self.options.symbols) do
      local ticker = assert(self:get("/api/v3/ticker/price", { query = { symbol = symbol } }))
      rows[#rows + 1] = { symbol = ticker.symbol, at = at, price = tonumber(ticker.price) }
    end
    return rows -- one table declared, so a plain list of rows is enough
  end,
})
