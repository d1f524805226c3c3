--- collectors.htx: HTX (Huobi) spot, USDT-margined and coin-margined swaps
-- -- tickers, funding, order books, klines and funding history into the
-- unified tables (sluice.exchange; the adapter is sluice.exchange.htx).
--
--   { use = "htx", symbols = { "BTC/USDT", "BTC/USDT:USDT", "BTC/USD:BTC" } }
return require("sluice.exchange").define(require("sluice.exchange.htx"))
