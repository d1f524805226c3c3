--- sluice.collector.persist: a collector's breaker and limiter state in its
-- store.
--
-- An open breaker, a limiter's pause or an exchange's ban outlive a
-- restart: restore(c) takes the state saved in the store (sluice_state)
-- when the instance is built and keeps the breaker's saved on each of its
-- transitions; save(c) writes both when the collector stops. It reads the
-- instance c (store, breaker, limiter, log) and writes nothing on it; it
-- owns no state. Nothing here yields.
local _M = {}

--- restore(c [, fresh]): c's breaker and limiter take their saved state (a state
-- that cannot be restored is logged and ignored); the breaker's
-- transitions are saved from then on. fresh {breaker = bool, limiter =
-- bool} (default both): which of them c made; one shared with collectors
-- built before (sluice.collector.upstreams) was restored by the first.
function _M.restore(c, fresh)
  local db = c.store
  if not db then return end
  if c.limiter and (not fresh or fresh.limiter) then
    local snap = db:load_state("limiter", c.limiter:name())
    if snap then
      local ok, err = pcall(c.limiter.restore, c.limiter, snap)
      if not ok then
        c.log.warning("ignoring saved limiter state", { error = tostring(err) })
      end
    end
  end
  if c.breaker and (not fresh or fresh.breaker) then
    local snap = db:load_state("breaker", c.breaker:name())
    if snap then
      local ok, err = pcall(c.breaker.restore, c.breaker, snap)
      if not ok then
        c.log.warning("ignoring saved breaker state", { error = tostring(err) })
      end
    end
    -- the callback holds the store, not the instance: the breaker's
    -- callback list is weak-keyed, and LuaJIT has no ephemerons, so a
    -- callback reaching its breaker through the instance would keep both
    -- alive for ever after a reload
    c.breaker:on_change(function(cb)
      db:save_state("breaker", cb:name(), cb:snapshot())
    end)
  end
end

--- save(c): writes c's breaker and limiter state to its store.
function _M.save(c)
  local db = c.store
  if not db then return end
  if c.breaker then
    db:save_state("breaker", c.breaker:name(), c.breaker:snapshot())
  end
  if c.limiter then
    db:save_state("limiter", c.limiter:name(), c.limiter:snapshot())
  end
end

return _M
