--- collectors.mev_relays: MEV-Boost relays' delivered payloads from their
-- Data API, each relay behind its own breaker and limiter, merged per slot
-- (sluice.mev).
--
--   { use = "mev_relays", relays = { "flashbots", "ultrasound", "titan" },
--     builder_bids = false, interval = 60 }
return require("sluice.mev").spec()
