--- collectors.binance_stream: Binance spot trades and order books from its
-- market streams (sluice.stream.exchange, sluice.stream.binance).
--
--   { use = "binance_stream", symbols = { "BTC/USDT", "ETH/USDT" }, depth = 20, book_interval = 10 }
return require("sluice.stream.exchange").define(require("sluice.stream.binance"))
