--- sluice.outbox.redis_stream: the redis_stream sink kind (config
-- sinks.redis_stream = {stream = "sluice:{table}", maxlen = 1e6}): the
-- outbox's batches appended to Redis Streams by sluice.shared.stream.
--
-- new(name, settings, ctx) -> sink | nil, err: needs the configuration's
-- Redis (ctx.shared, the sluice.shared object). ensure has nothing to
-- create; write appends the batch in one pipeline and, with Redis away,
-- fails with kind "unavailable" (the outbox keeps the rows and retries).
-- A stream entry cannot be upserted: a batch sent again after a crash
-- appends its rows again (consumers deduplicate by the table's key).
-- It owns nothing but its options.
local options = require "sluice.options"

local _M = {}

local SETTINGS = { stream = "string", maxlen = { finite = true, min = 1 } }

function _M.new(_, settings, ctx)
  local where, _, text = options.problem(settings, SETTINGS)
  if where then return nil, where .. ": " .. text end
  if not ctx.shared then return nil, "a redis_stream sink needs redis = \"redis://...\"" end
  return ctx.shared:stream_sink(settings)
end

return _M
