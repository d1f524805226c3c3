--- sluice.backfill.plan: which windows a backfill fetches, and at what cost.
--
-- plan(opts) (sluice.backfill.plan) aligns the range [from, to), in the
-- collector's backfill_unit (sluice.backfill.unit: seconds, or blocks,
-- slots, integers), to the collector's backfill_step, per partition
-- (those the collector declares, or those asked for; "*" when it declares
-- none), and keeps the windows
-- not covered in the store's coverage table (sluice_backfill, created
-- here): missing, extended by a later `to`, with rows missing inside them
-- (expect), or all of them (force) or the last lookback seconds; with a
-- sluice.shared object, the windows another instance has marked done go
-- to plan.elsewhere. It estimates requests, rows and time at the limiter's
-- rate. It reads the collector (spec, config, options, store, limiter,
-- partitions()) and owns no state. plan() yields when it asks Redis for
-- done marks (with shared state): call it in a task then.
local sluice = require "sluice"
local shared = require "sluice.shared"
local claims = require "sluice.backfill.claims"
local spec_mod = require "sluice.collector.spec"
local units = require "sluice.backfill.unit"

local _M = {}

local COVERAGE = [[
CREATE TABLE IF NOT EXISTS sluice_backfill (
  collector TEXT NOT NULL, partition TEXT NOT NULL,
  window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,
  covered_from INTEGER NOT NULL,
  status TEXT NOT NULL, rows INTEGER NOT NULL DEFAULT 0, error TEXT,
  updated_at REAL NOT NULL,
  PRIMARY KEY (collector, partition, window_start)) WITHOUT ROWID]]

--- ensure_schema(db): the coverage table sluice_backfill exists in db.
function _M.ensure_schema(db)
  assert(db:exec(COVERAGE))
end

local function resolve(v, c)
  if type(v) == "function" then return v(c) end
  return v
end

--- parse_time(v, what) -> epoch seconds of v: a number as it is, or a
-- date like 2024-01-31[T12:00:00][Z] read as UTC; raises naming what.
_M.parse_time = units.parse_time

-- The partitions a plan covers: those asked for, else those the collector
-- declares, else one, "*" (backfill then gets nil).
local function partitions(c, only)
  return only or c:partitions() or { "*" }
end

--- shared_of(opts, c) -> the sluice.shared object claims go through, or nil:
-- opts.shared (false: none), by default the one c is attached to.
function _M.shared_of(opts, c)
  local sh = opts.shared
  if sh == false then return nil end
  if sh == nil then return shared.owner(c) end
  if not shared.is_shared(sh) then
    error("sluice.backfill: 'shared' must be a sluice.shared object or false", 3)
  end
  return sh
end

-- Whether done mark doc covers win, made at or after since.
local function covers(doc, win, since)
  return doc.state == "done" and type(doc.from) == "number" and type(doc.to) == "number"
    and type(doc.at) == "number" and doc.from <= win.from and doc.to >= win.to and doc.at >= since
end

-- Moves the planned windows another instance has marked done to
-- plan.elsewhere (missing and extended windows only: the others want
-- marks newer than the job). Redis unreachable: nothing moves (claims
-- decide later).
local function plan_elsewhere(plan, sh)
  local c = plan.collector
  local keys = {}
  for _, win in ipairs(plan.windows) do
    win.claim_key = claims.key(c.name, win.partition, win.key)
    win.any_mark = win.reason == "missing" or win.reason == "extended"
    if win.any_mark then keys[#keys + 1] = win.claim_key end
  end
  if #keys == 0 then return end
  local states = claims.states(sh, keys)
  if not states then return end
  local keep = {}
  for _, win in ipairs(plan.windows) do
    local doc = states[win.claim_key]
    if doc and win.any_mark and covers(doc, win, 0) then
      plan.elsewhere[#plan.elsewhere + 1] = { partition = win.partition, from = win.from, to = win.to,
        key = win.key, reason = "elsewhere", by = doc.by, rows = doc.rows, claim_key = win.claim_key }
    else
      keep[#keep + 1] = win
    end
  end
  plan.windows = keep
end

-- Rows present per window for row-level gap detection: one query per
-- partition, grouped by window.
-- (expect.column is expect.time_column's other name, for integer units)
local function present_counts(c, exp, tname, part, first, from, stop, step)
  local scale = exp.unit == "ms" and 1000 or 1
  local col = exp.column or exp.time_column
  local sql = { "SELECT CAST((", col, " / ", scale, " - ?) / ? AS INTEGER) AS w, COUNT(DISTINCT ",
    col, ") AS n FROM ", tname, " WHERE ", col, " >= ? AND ", col, " < ?" }
  local params = { first, step, from * scale, stop * scale }
  if exp.partition and part ~= "*" then
    sql[#sql + 1] = " AND " .. exp.partition .. " = ?"
    params[#params + 1] = part
  end
  for name, val in pairs(exp.where or {}) do
    sql[#sql + 1] = " AND " .. name .. " = ?"
    params[#params + 1] = val
  end
  sql[#sql + 1] = " GROUP BY w"
  -- a failing count is the plan's failure: read as "no rows" it would
  -- refetch every window, every run
  local rows, err = c.store:query(table.concat(sql), unpack(params))
  if not rows then
    error("sluice.backfill: collector '" .. c.name .. "': gap detection in table " .. tname .. " failed: "
      .. tostring(err), 0)
  end
  local out = {}
  for _, r in ipairs(rows) do out[math.floor(r.w)] = r.n end
  return out
end

-- The range's end when none is given: backfill_to (a value or a
-- function(self) returning one, e.g. the chain's head + 1), else now for
-- seconds; an integer unit has no "now".
local function default_to(c, unit)
  local to = resolve(c.config.backfill_to, c)
  if to ~= nil then return units.parse(to, unit, "backfill_to", 4) end
  if not units.is_integer(unit) then return math.floor(sluice.time()) end
  error("sluice.backfill: collector '" .. c.name .. "' backfills by " .. unit .. ": 'to' is required"
    .. " (or declare backfill_to)", 3)
end

local function default_from(c, unit)
  local from = resolve(c.config.backfill_from, c)
  if from ~= nil then return units.parse(from, unit, "backfill_from", 4) end
  if not units.is_integer(unit) then
    from = c.config.beginning_date or c.options.beginning_date
    if from ~= nil then return units.parse(from, unit, "from", 4) end
  end
  error("sluice.backfill: collector '" .. c.name .. "' has no start: 'from' is required (or declare "
    .. (units.is_integer(unit) and "backfill_from" or "backfill_from or beginning_date") .. ")", 3)
end

--- plan(opts) -> { windows = {{partition, from, to, reason}, ...},
--   skipped, elsewhere = {{partition, from, to, reason = "elsewhere", by,
--   rows}, ...}, estimate = {windows, requests, rows, seconds, rate} }
-- With shared state, windows another instance has marked done are in
-- elsewhere, not in windows (nor in the estimate).
function _M.plan(opts)
  if type(opts) ~= "table" or type(opts.collector) ~= "table" then
    error("sluice.backfill.plan: bad argument #1 (table with a collector expected)", 2)
  end
  local c = opts.collector
  if not c.spec.backfill then
    error("sluice.backfill: collector '" .. c.name .. "' has no backfill function", 2)
  end
  if not c.store then
    error("sluice.backfill: collector '" .. c.name .. "' has no store", 2)
  end
  _M.ensure_schema(c.store)
  local unit = units.of(c)
  local integer = units.is_integer(unit)
  local step, what = units.step(resolve(c.config.backfill_step, c) or (not integer and 86400 or nil), unit)
  if not step then
    error("sluice.backfill: collector '" .. c.name .. "': backfill_step must be " .. what, 2)
  end
  local from = opts.from ~= nil and units.parse(opts.from, unit, "from") or default_from(c, unit)
  local to = opts.to ~= nil and units.parse(opts.to, unit, "to") or default_to(c, unit)
  if not (to > from) then
    error("sluice.backfill: 'to' must be after 'from'", 2)
  end
  local exp = resolve(c.spec.expect, c)
  local exp_table
  if exp then
    local err
    exp_table, err = spec_mod.expect_table(exp, c.config.tables)
    if not exp_table then error("sluice.backfill: collector '" .. c.name .. "': expect " .. err, 2) end
  end
  -- windows are aligned to the step, so runs with different bounds share
  -- their windows (and so their coverage)
  local first = units.align(from, step)
  local lookback_from = opts.lookback and (to - opts.lookback) or math.huge
  local sh = _M.shared_of(opts, c)
  local plan = { collector = c, windows = {}, skipped = 0, elsewhere = {}, from = from, to = to,
    step = step, unit = unit, shared = sh }
  for _, part in ipairs(partitions(c, opts.partitions or opts.symbols)) do
    local done = {}
    for _, r in ipairs(c.store:query(
      "SELECT window_start, window_end, covered_from, status FROM sluice_backfill"
      .. " WHERE collector = ? AND partition = ? AND window_start >= ? AND window_start < ?",
      c.name, part, first, to) or {}) do
      -- (the store returns 2^53 as an int64_t: keys and bounds as numbers)
      if r.status == "done" then
        done[tonumber(r.window_start)] = { from = tonumber(r.covered_from), to = tonumber(r.window_end) }
      end
    end
    local present = exp and present_counts(c, exp, exp_table, part, first, from, to, step) or nil
    local w = first
    while w < to do
      local wstart, wend = math.max(w, from), math.min(w + step, to)
      local reason
      if opts.force then
        reason = "force"
      elseif wend > lookback_from then
        reason = "lookback"
      elseif not done[w] or done[w].to < wend or done[w].from > wstart then
        reason = done[w] and "extended" or "missing"
      elseif present then
        local want = units.ceil_div(wend, exp.every) - units.ceil_div(wstart, exp.every)
        if (present[(w - first) / step] or 0) < want then reason = "gap" end
      end
      if reason then
        plan.windows[#plan.windows + 1] = { partition = part, from = wstart, to = wend, key = w, reason = reason }
      else
        plan.skipped = plan.skipped + 1
      end
      w = w + step
    end
  end
  if sh then plan_elsewhere(plan, sh) end
  local rate = c.limiter and c.limiter:rate() or nil
  local per_window = resolve(c.spec.backfill_requests, c) or 1
  local requests = #plan.windows * per_window
  local rows = 0
  if exp then
    for _, win in ipairs(plan.windows) do
      rows = rows + units.ceil_div(win.to, exp.every) - units.ceil_div(win.from, exp.every)
    end
  end
  plan.estimate = { windows = #plan.windows, requests = requests, rows = exp and rows or nil,
    rate = rate, seconds = rate and requests / rate or nil }
  return plan
end

return _M
