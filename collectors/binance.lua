--- collectors.binance: Binance spot, USDⓈ-M (linear) and COIN-M (inverse)
-- perpetuals in the unified exchange tables (sluice.exchange.binance).
--
--   { use = "binance", symbols = { "BTC/USDT", "BTC/USDT:USDT", "BTC/USD:BTC" },
--     datasets = { order_book = { interval = 1 } }, depth = 50, candle = "1m" }
return require("sluice.exchange").define(require("sluice.exchange.binance"))
