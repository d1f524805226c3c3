--- support.wait: waiting, bounded, for a condition in a spec (never a
-- sleep long enough "for it to have happened").
--
--   local wait_for = require("support.wait").wait_for
--   local st = wait_for("the first run", function() return c:stats().collections_completed == 1 end)
--   if within(2, function() return sub:info().subscribed == 1 end) then ... end
--
-- Both poll cond() every `step` seconds (0.01) from a task; cond() may
-- yield (a Redis call, an HTTP request).
local sluice = require "sluice"

local _M = {}

--- within(limit, cond [, step]) -> cond()'s first truthy value, or false
-- when limit seconds pass first.
function _M.within(limit, cond, step)
  local deadline = sluice.now() + limit
  while true do
    local v = cond()
    if v then return v end
    if sluice.now() > deadline then return false end
    sluice.sleep(step or 0.01)
  end
end

--- wait_for(what, cond [, limit [, step]]) -> cond()'s first truthy value;
-- raises "timed out waiting for <what> (<limit> s)", blaming the caller,
-- when limit seconds (10) pass first.
function _M.wait_for(what, cond, limit, step)
  limit = limit or 10
  local v = _M.within(limit, cond, step)
  if not v then error(("timed out waiting for %s (%g s)"):format(what, limit), 2) end
  return v
end

return _M
