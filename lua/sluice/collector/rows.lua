--- sluice.collector.rows: the store path of a collector's rows.
--
-- store(c, result, sinks, what [, within]) is the one way rows that a
-- collector's collect or backfill returned reach the store and the sinks
-- (collector:store_rows; the collector's runs and backfill windows use it):
--  - result is nil (nothing), a list of rows, which goes to the collector's
--    one table (an error when it declares several, or none; an empty list
--    is nothing then), or {table_name = rows}, each a table it declares;
--  - each table's rows are validated and upserted (store:upsert_accepted,
--    one transaction per table); a sink with an enqueue method (a route of
--    sluice.outbox) gets enqueue(table_name, accepted, stored, layout)
--    INSIDE that transaction (stored, layout: the store's view of the
--    values it wrote, see db:upsert_accepted), so the rows are queued for it if and only if
--    they are committed, and when it raises (an outbox full with on_full = "stop")
--    the table's rows are not stored and the error says why; the rows
--    accepted then go to every sink's publish(table_name, rows) after
--    their commit, in commit order; a publish that fails says so itself
--    and never fails the rows' storing;
--  - with within(count), all the upserts (their enqueues with them) and
--    within run in one transaction, committed together or not at all (a
--    backfill window's rows, its outbox rows and its coverage record), and
--    publish gets the rows after that commit.
-- It returns the rows stored (inserted, updated or unchanged: rejects are
-- not counted), or, without a store, the rows given; it raises on a
-- result it cannot store and when the store fails (what, "collect" or
-- "backfill", names the function in those errors). It reads the instance
-- c (config.tables, store, log) and writes nothing on it; it owns no
-- state. store() yields when a sink's publish does (call it in a task).
local log = require "sluice.log"

local _M = {}

-- result -> {table_name = rows}. Raises on a shape the collector cannot
-- store.
local function by_table(c, result, what)
  if result == nil then return {} end
  if type(result) ~= "table" then
    error(what .. " must return a table of rows (or {table = rows}), got " .. type(result))
  end
  local tables = c.config.tables or {}
  if result[1] ~= nil or next(result) == nil then
    local only = next(tables)
    if not only or next(tables, only) ~= nil then
      if next(result) == nil then return {} end
      error(what .. " returned a list of rows but the collector declares "
        .. (only and "several tables" or "no table") .. "; return {table_name = rows}")
    end
    return { [only] = result }
  end
  return result
end

local function check_declared(c, tname, what)
  if not (c.config.tables or {})[tname] then
    error(what .. " returned rows for undeclared table '" .. tostring(tname) .. "'", 0)
  end
end

-- The function queueing a table's accepted rows for the sinks that queue
-- (enqueue) inside the upsert's transaction, or nil when none does.
local function enqueuer(sinks, tname)
  local queued
  for _, sink in ipairs(sinks) do
    if sink.enqueue then
      queued = queued or {}
      queued[#queued + 1] = sink
    end
  end
  if not queued then return nil end
  return function(accepted, stored, layout)
    for _, sink in ipairs(queued) do sink:enqueue(tname, accepted, stored, layout) end
  end
end

-- Upserts rows into the declared table tname -> rows stored, the rows
-- accepted. Raises on failure.
local function upsert(c, tname, list, what, sinks)
  check_declared(c, tname, what)
  -- an enqueue raising (an outbox full) raises from here as it is
  local ins, upd, same, rej, accepted = c.store:upsert_accepted(tname, list, enqueuer(sinks, tname))
  if not ins then
    error("storing rows in '" .. tname .. "' failed: " .. tostring(upd), 0)
  end
  if log.enabled("debug") then -- c.log is made on first use (sluice.collector)
    c.log.debug("stored", { table = tname, inserted = ins, updated = upd,
      unchanged = same, rejected = rej })
  end
  return ins + upd + same, accepted -- what was stored; rejects are not data points
end

local function publish(sinks, tname, accepted)
  for _, sink in ipairs(sinks) do
    sink:publish(tname, accepted)
  end
end

--- store(c, result, sinks, what [, within]) -> count (see above).
function _M.store(c, result, sinks, what, within)
  local per_table = by_table(c, result, what)
  local count = 0
  if not c.store then
    for tname, list in pairs(per_table) do
      check_declared(c, tname, what)
      count = count + #list
    end
    return count
  end
  if not within then
    for tname, list in pairs(per_table) do
      local n, accepted = upsert(c, tname, list, what, sinks)
      count = count + n
      publish(sinks, tname, accepted)
    end
    return count
  end
  local committed = {}
  local ok, err = c.store:transaction(function()
    for tname, list in pairs(per_table) do
      local n, accepted = upsert(c, tname, list, what, sinks)
      count = count + n
      committed[#committed + 1] = { tname, accepted }
    end
    within(count)
    return true
  end)
  if not ok then error("storing rows failed: " .. tostring(err), 0) end
  -- after the commit: a sink may yield, and a transaction cannot
  for _, t in ipairs(committed) do publish(sinks, t[1], t[2]) end
  return count
end

return _M
