--- collectors.bitget: Bitget tickers, funding, order books and klines in the
-- unified tables (sluice.exchange; the adapter is sluice.exchange.bitget).
--
--   { use = "bitget", symbols = { "BTC/USDT", "BTC/USDT:USDT", "BTC/USD:BTC" },
--     datasets = { order_book = { interval = 1 } }, depth = 50, candle = "1m" }
return require("sluice.exchange").define(require("sluice.exchange.bitget"))
