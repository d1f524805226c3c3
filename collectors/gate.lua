--- collectors.gate: Gate (gate.io) spot, USDT-settled and BTC-settled
-- perpetuals -- tickers, funding, order books, klines and their backfill --
-- in the unified tables (sluice.exchange, adapter sluice.exchange.gate).
--
--   { use = "gate", symbols = { "BTC/USDT", "BTC/USDT:USDT", "BTC/USD:BTC" } }
return require("sluice.exchange").define(require("sluice.exchange.gate"))
