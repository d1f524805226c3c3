--- collectors.bybit_stream: Bybit v5 trades and order books (spot, linear or
-- inverse: one market an entry) from its public streams
-- (sluice.stream.exchange, sluice.stream.bybit).
--
--   { use = "bybit_stream", symbols = { "BTC/USDT:USDT" }, depth = 20, book_interval = 10 }
return require("sluice.stream.exchange").define(require("sluice.stream.bybit"))
