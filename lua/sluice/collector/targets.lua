--- sluice.collector.targets: a collector's targets -- a breaker and a
-- limiter per service it reads (sluice.collector, "targets"), named
-- "<collector>.<target>".
--
-- make() builds them for collector.new, which keeps what it returns in the
-- instance; save(c) writes their state to the instance's store at stop.
-- It reads the instance (store, log, targets(), target()) and writes
-- nothing on it; it owns no state. Nothing here yields.
local options = require "sluice.options"
local persist = require "sluice.collector.persist"

local _M = {}

local merge = options.merge

-- The targets of a collector (its targets option: a list of names, or
-- function(self) returning one): name -> {breaker, limiter}, made from the
-- collector's breaker and limiter settings and named
-- "<collector>.<target>", their saved state restored; and the names in
-- the order given.
function _M.make(self, cfg, context, new_breaker, new_limiter)
  local list = cfg.targets
  if type(list) == "function" then list = list(self) end
  if type(list) ~= "table" or list[1] == nil then
    error("collector '" .. cfg.name .. "': targets must be a non-empty list of names, got "
      .. options.value(list), 3)
  end
  local byname, names = {}, {}
  for i, t in ipairs(list) do
    if type(t) ~= "string" or not t:match("^[%w_%-]+$") then
      error("collector '" .. cfg.name .. "': targets[" .. i .. "] must be a name (letters, digits, _, -), got "
        .. options.value(t), 3)
    end
    if byname[t] then error("collector '" .. cfg.name .. "': targets name '" .. t .. "' twice", 3) end
    local name = cfg.name .. "." .. t
    if context.upstreams then context.upstreams:claim(name, cfg.name) end
    local g = {}
    if cfg.breaker ~= false then
      g.breaker = new_breaker(merge(type(cfg.breaker) == "table" and cfg.breaker or {}, { name = name }))
    end
    if cfg.limiter ~= false then
      g.limiter = new_limiter(merge(type(cfg.limiter) == "table" and cfg.limiter or {}, { name = name }))
    end
    persist.restore({ store = self.store, breaker = g.breaker, limiter = g.limiter, log = self.log })
    byname[t], names[i] = g, t
  end
  return byname, names
end

--- save(c): writes the state of c's targets' breakers and limiters to its store.
function _M.save(c)
  for _, t in ipairs(c:targets() or {}) do
    local b, l = c:target(t)
    persist.save({ store = c.store, breaker = b, limiter = l })
  end
end

return _M
