--- soak/collector.lua -- the collector the soak runs 500 times: one GET of
-- the mock's /item/<name> a run, one row upserted by name (so the table
-- stays one row per collector and the file's size flat). A 1 s timeout
-- (the mock holds some requests 3 s), one retry, a breaker and a limiter
-- of its own each.
local collector = require "sluice.collector"
local sluice = require "sluice"

return collector.define({
  name = "soak",
  base_url = "http://127.0.0.1:9",
  interval = 1,
  jitter = 0.5,
  timeout = 1,
  limiter = { rate = 5 },
  breaker = { failure_threshold = 5, timeout = 5 },
  retry = { strategy = "exponential_jitter", max_attempts = 2 },
  tables = {
    soak_items = {
      columns = { id = "text", at = "integer", seq = "integer", value = "real" },
      key = { "id" },
    },
  },
  collect = function(self)
    local item = assert(self:get("/item/" .. self.name))
    return { { id = self.name, at = math.floor(sluice.time()), seq = item.seq, value = item.value } }
  end,
})
