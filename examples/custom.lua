-- custom.lua -- runs examples/ticker_collector.lua against sluice's mock
-- Binance (in this process), for 6 seconds.
--   sluice run examples/custom.lua
local sluice = require "sluice"
local mock = require("sluice.mock.binance").start({})
sluice.on_shutdown(function() mock:stop() end)
sluice.after(6, function(premature)
  local app = require("sluice.app").current
  for _, r in ipairs(app.store:query("SELECT symbol, COUNT(*) AS n, MAX(price) AS last FROM prices GROUP BY symbol")) do
    print(string.format("%-8s %d prices, last %.2f", r.symbol, r.n, r.last))
  end
  if not premature then sluice.shutdown() end
end)
return {
  store = os.getenv("SLUICE_EXAMPLE_DB") or "custom.db",
  collectors = { { file = "ticker_collector.lua", base_url = mock.url, interval = 2 } },
}
