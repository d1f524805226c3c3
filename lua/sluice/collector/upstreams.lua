--- sluice.collector.upstreams: one limiter and one breaker per upstream,
-- shared by the collectors that name it.
--
--   collectors = {
--     { file = "binance_tickers.lua", upstream = "binance" },
--     { file = "binance_books.lua",   upstream = "binance" },
--   }
--
-- An exchange counts its quota per IP across all its endpoints, and an
-- outage or an IP ban hits every endpoint: collectors with the same
-- `upstream` use one limiter and one breaker, both named after the
-- upstream (what /status, /metrics, breakers() and limiters() list, once).
-- Their settings are the collectors' own `limiter` and `breaker` options,
-- which must then be the same for every collector of the upstream (none,
-- on all, is the same too: the defaults); a difference is a load error
-- naming both collectors and the setting. `limiter = { shared = true }`
-- (a quota shared with other processes through Redis) works as for one
-- collector: the Redis key is gcra:{upstream}.
--
-- A registry belongs to one build of a configuration (sluice.app makes
-- one per start and per reload and passes it to collector.new as
-- context.upstreams); it owns the shared objects it made and the names it
-- has given out, and lets go of them with the instances that use them. A
-- reload builds a new registry and carry_over(old) gives its objects the
-- state of the old registry's objects of the same names, as a reload does
-- for a collector's own. A collector built without a registry has nothing
-- to share with: its limiter and breaker are its own, named after the
-- upstream. Nothing here yields.
local options = require "sluice.options"

local _M = {}
local Registry = {}
local mt = { __index = Registry }

--- new() -> an empty registry.
function _M.new()
  return setmetatable({ upstreams_ = {}, names_ = {} }, mt)
end

-- nil and true mean the defaults, as {} does.
local function normal(v)
  if v == nil or v == true then return {} end
  return v
end

-- The first difference between settings a and b, as "rate: 20 vs 10",
-- or nil when they are the same.
local function difference(a, b, path)
  if type(a) ~= "table" or type(b) ~= "table" then
    if a == b then return nil end
    return path .. ": " .. options.value(a) .. " vs " .. options.value(b)
  end
  local keys = {}
  for k in pairs(a) do keys[k] = true end
  for k in pairs(b) do keys[k] = true end
  local sorted = {}
  for k in pairs(keys) do sorted[#sorted + 1] = k end
  table.sort(sorted, function(x, y) return tostring(x) < tostring(y) end)
  for _, k in ipairs(sorted) do
    local d = difference(a[k], b[k], path .. "." .. tostring(k))
    if d then return d end
  end
  return nil
end

local function name_clash(self, name, owner)
  local had = self.names_[name]
  if had and had ~= owner then
    error("the name '" .. name .. "' is both " .. had .. " and " .. owner
      .. ": breakers and limiters are listed by name (rename one)", 3)
  end
  self.names_[name] = owner
end

--- registry:claim(name, collector_name): a collector's own breaker or
-- limiter is called name; raises when an upstream (or another collector)
-- has it.
function Registry:claim(name, collector_name)
  name_clash(self, name, "collector '" .. collector_name .. "'")
end

--- registry:take(cfg, make_breaker, make_limiter) -> breaker | nil,
-- limiter | nil, fresh {breaker = bool, limiter = bool}: the shared
-- objects of cfg.upstream for collector cfg.name, made at the first
-- collector naming it with make_breaker(opts) / make_limiter(opts) (opts:
-- the collector's settings, named after the upstream); fresh says which
-- were made by this call. Raises when cfg's settings differ from those of
-- the first collector of the upstream.
function Registry:take(cfg, make_breaker, make_limiter)
  local name = cfg.upstream
  local b, l = normal(cfg.breaker), normal(cfg.limiter)
  for what, v in pairs({ breaker = b, limiter = l }) do
    if type(v) == "table" and v.name ~= nil and v.name ~= name then
      error("collector '" .. cfg.name .. "': " .. what .. ".name: the " .. what .. " of upstream '"
        .. name .. "' is named after it (remove name = " .. options.value(v.name) .. ")", 3)
    end
  end
  local up = self.upstreams_[name]
  if not up then
    name_clash(self, name, "upstream '" .. name .. "'")
    up = { first = cfg.name, breaker_opts = b, limiter_opts = l }
    if b ~= false then
      local o = options.merge(b, { name = name })
      up.breaker = make_breaker(o)
    end
    if l ~= false then
      local o = options.merge(l, { name = name })
      up.limiter = make_limiter(o)
    end
    self.upstreams_[name] = up
    return up.breaker, up.limiter, { breaker = true, limiter = true }
  end
  for what, v in pairs({ breaker = b, limiter = l }) do
    local d = difference(up[what .. "_opts"], v, what)
    if d then
      error("collectors '" .. up.first .. "' and '" .. cfg.name .. "' share upstream '" .. name
        .. "' but set its " .. what .. " differently (" .. d
        .. "): give both the same " .. what .. " settings", 3)
    end
  end
  return up.breaker, up.limiter, { breaker = false, limiter = false }
end

--- registry:names() -> the upstreams' names, sorted.
function Registry:names()
  local out = {}
  for name in pairs(self.upstreams_) do out[#out + 1] = name end
  table.sort(out)
  return out
end

--- registry:get(name) -> breaker | nil, limiter | nil of upstream name.
function Registry:get(name)
  local up = self.upstreams_[name]
  if not up then return nil end
  return up.breaker, up.limiter
end

--- registry:carry_over(old): each upstream's breaker and limiter take the
-- state of old's of the same name (a reload).
function Registry:carry_over(old)
  for name, up in pairs(self.upstreams_) do
    local was = old.upstreams_[name]
    if was then
      if up.breaker and was.breaker then up.breaker:restore(was.breaker:snapshot()) end
      if up.limiter and was.limiter then up.limiter:restore(was.limiter:snapshot()) end
    end
  end
end

--- upstreams.is(v) -> whether v is a registry made by new().
function _M.is(v)
  return getmetatable(v) == mt
end

return _M
