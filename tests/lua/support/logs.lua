--- support.logs: what a spec logged, from sluice.log's ring of recent
-- entries.
--
--   local logs = require "support.logs"
--   local restore = logs.capture("info")  -- entries at info and above kept, the ring emptied
--   ...
--   logs.logged("reload refused")         -- {entry, ...}, oldest first
--   restore()                             -- the level and ring size as they were
--
-- Where the entries are written (log.output) is the spec's business:
-- specs send them to /dev/null. Nothing here yields.
local log = require "sluice.log"

local _M = {}

--- capture(level [, size]) -> restore: from now on the ring keeps the
-- entries at level and above, up to size (1000) of them, starting empty;
-- restore() puts the level and the ring's size back.
function _M.capture(level, size)
  local saved_level, saved_size = log.level(), log.ring_size()
  log.level(level)
  log.ring_size(0) -- empties the ring
  log.ring_size(size or 1000)
  return function()
    log.level(saved_level)
    log.ring_size(saved_size)
  end
end

--- logged(msg) -> the entries in the ring with message msg, oldest first.
function _M.logged(msg)
  local out = {}
  for _, e in ipairs(log.recent()) do
    if e.msg == msg then out[#out + 1] = e end
  end
  return out
end

return _M
