--- collectors.bybit: Bybit v5 market data -- tickers, funding, order books
-- and klines of spot, linear (USDT/USDC) and inverse perpetuals, in the
-- unified tables of sluice.exchange (see sluice.exchange.bybit).
--
--   { use = "bybit", symbols = { "BTC/USDT", "BTC/USDT:USDT", "BTC/USD:BTC" },
--     datasets = { order_book = { interval = 1 } }, depth = 50, candle = "1m" }
return require("sluice.exchange").define(require("sluice.exchange.bybit"))
