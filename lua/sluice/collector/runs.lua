--- sluice.collector.runs: a collector's runs and their schedule.
--
-- What sluice.collector does to run a collection: the run units (below),
-- one run of a unit in its run slot under the run budget, with its
-- statistics and its log lines (run), the run guard around it (guarded),
-- every dataset at once (run_all), and the schedule of a started unit
-- (schedule: an entry of sluice.collector.clock per started unit).
--
-- A run unit is what has a schedule, a run slot and run statistics: the
-- instance itself for a collector with collect, or each of its datasets
-- (a table of this module's, in self.units_). Its fields: dataset (the
-- name; nil for the instance), collect_fn_, table_, interval, jitter_,
-- first_delay_, run_budget, enabled, disabled_reason (disable_dataset's),
-- log, slot_, stats_ (a dataset's run counters; the instance's are its
-- totals), and its schedule: next_due_,
-- due_ (the latest scheduled run's due time), first_due_, phase_ (start's
-- phase option), entry_ (its clock entry), started_mono_.
--
-- It works on the instance and units sluice.collector made and owns: it
-- reads their configuration and writes the run state listed above and the
-- counters in stats_; sluice.collector is its only user.
local sluice = require "sluice"
local log = require "sluice.log"
local spec_mod = require "sluice.collector.spec"
local slot = require "sluice.collector.slot"
local rows = require "sluice.collector.rows"
local budget = require "sluice._budget"
local clock = require "sluice.collector.clock"

local _M = {}

-- The run counters of a dataset (report.lua lists them).
local function run_stats()
  return { data_points_collected = 0, total_runtime = 0, collections_completed = 0,
    collections_failed = 0, collections_skipped = 0, consecutive_failures = 0 }
end

-- The units of a collector built from cfg.datasets, by name and sorted by
-- name.
local function dataset_units(self, cfg)
  local byname, list = {}, {}
  for dname, ds in pairs(cfg.datasets) do
    local interval = ds.interval or cfg.interval or 60
    local u = {
      dataset = dname, collect_fn_ = ds.collect, table_ = ds.table, interval = interval,
      jitter_ = ds.jitter or cfg.jitter, first_delay_ = ds.first_delay or 0,
      run_budget = spec_mod.run_budget(cfg, interval, dname, ds), enabled = ds.enabled ~= false,
      log = self.log.with({ dataset = dname }),
      -- one run in flight per dataset, and its counters: shared with the
      -- instances that replace this one at a reload (adopt)
      slot_ = slot.new(), stats_ = run_stats(),
    }
    byname[dname] = u
    list[#list + 1] = u
  end
  table.sort(list, function(a, b) return a.dataset < b.dataset end)
  return byname, list
end

-- collect under the unit's run budget, in a budget region of the calling
-- task (sluice._budget: no task, coroutine or userdata per run), or, when
-- that task cannot take one (it has a budget of its own, or this is not
-- its own coroutine), in a task of its own, waited for; a run over budget
-- fails with the budget's error. Returns what xpcall does.
local function collect_within_budget(self, u)
  local rb = u.run_budget
  if not rb then
    return xpcall(u.collect_fn_, debug.traceback, self)
  end
  if budget.enter(rb.cpu or 0, rb.wall or 0, rb.label) then
    local ok, result = xpcall(u.collect_fn_, debug.traceback, self)
    local over = budget.leave()
    if over then return false, over end
    return ok, result
  end
  local run = sluice.budget(sluice.spawn(xpcall, u.collect_fn_, debug.traceback, self), rb)
  local done, ok, result = sluice.wait(run)
  if not done then return false, ok end
  return ok, result
end

-- k += n in a unit's counters and in the collector's totals.
local function add(st, total, k, n)
  st[k] = st[k] + n
  if total ~= st then total[k] = total[k] + n end
end

-- One collection of unit u, in its run slot (a run without the run guard).
local function run(self, u)
  local g = u.slot_
  if g:busy() then
    local ok, a, b = g:wait()
    if ok then return a, b, "joined" end
    return false, a
  end
  g:take()
  local st, total = u.stats_, self.stats_
  local t0 = sluice.now()
  st.last_collection = sluice.time()
  total.last_collection = st.last_collection
  self.in_flight = (self.in_flight or 0) + 1
  local refusals = self.refusals_
  local ok, result = collect_within_budget(self, u)
  local count
  if ok then
    -- a dataset's list of rows goes to the table it names
    if u.table_ and type(result) == "table" and result[1] ~= nil then result = { [u.table_] = result } end
    ok, count = pcall(rows.store, self, result, self.sinks_,
      u.dataset and ("collect of dataset '" .. u.dataset .. "'") or "collect")
    if not ok then result = count end
  end
  self.in_flight = self.in_flight - 1
  add(st, total, "total_runtime", sluice.now() - t0)
  if ok then
    st.last_success = sluice.time()
    total.last_success = st.last_success
    add(st, total, "collections_completed", 1)
    add(st, total, "data_points_collected", count)
    st.consecutive_failures = 0
    if log.enabled("info") then
      -- the module's logger with the instance's fields: no logger of its own
      log.info("collection done", { collector = self.name, dataset = u.dataset, rows = count,
        seconds = sluice.now() - t0 })
    end
    g:release(true, count)
    return true, count
  end
  local msg = tostring(result)
  if self.refusals_ > refusals and self.breaker and self.breaker:state() == "open" then
    -- The run failed because the open breaker refused its requests (the
    -- assert(self:get(...)) idiom): a skipped run, not a new failure. One
    -- warning per opening (for all the datasets), no traceback, so the log
    -- stays readable.
    add(st, total, "collections_skipped", 1)
    local opened = self.breaker:status().last_state_change
    if self.skip_warned_ ~= opened then
      self.skip_warned_ = opened
      local open_until = self.breaker:metrics().open_until
      u.log.warning("collection skipped: circuit breaker open", {
        breaker = self.breaker:name(), next_attempt = open_until and sluice.iso8601(open_until),
        error = msg:match("^[^\n]*") })
    end
    g:release(false, "skipped: circuit breaker " .. self.breaker:name() .. " is open")
    return false, "skipped: circuit breaker " .. self.breaker:name() .. " is open"
  end
  st.last_error = msg:match("^[^\n]*")
  st.last_error_time = sluice.time()
  if total ~= st then
    total.last_error = "dataset " .. u.dataset .. ": " .. st.last_error
    total.last_error_time = st.last_error_time
  end
  add(st, total, "collections_failed", 1)
  st.consecutive_failures = st.consecutive_failures + 1
  u.log.error("collection failed", { error = st.last_error, traceback = msg })
  g:release(false, st.last_error)
  return false, st.last_error
end

-- A run of unit u under the run guard (run_once's, per unit).
local function guarded(self, u)
  local guard = self.run_guard_
  if not guard then return run(self, u) end
  local a, b, c
  if guard.enter(self) == true then
    a, b, c = run(self, u)
  else
    -- the guard says no run here (another instance holds this collector's
    -- lease): standing by is not being overdue (health)
    u.stats_.standby_at = sluice.now()
    a, b = true, 0
  end
  guard.leave(self)
  return a, b, c
end

-- A run of every enabled dataset at once, each in a task of its own,
-- waited for: true, the rows of all | false, "dataset d: err; ...", and
-- "joined" when every one joined a run in flight.
local function run_all(self)
  local runs = {}
  for _, u in ipairs(self.units_) do
    if u.enabled then runs[#runs + 1] = { u, sluice.spawn(guarded, self, u) } end
  end
  local ok, count, errs, joined = true, 0, {}, #runs > 0
  for _, r in ipairs(runs) do
    local done, a, b, c = sluice.wait(r[2])
    if not done then a, b = false, tostring(a) end
    if a then
      count = count + (b or 0)
    else
      ok = false
      errs[#errs + 1] = "dataset " .. r[1].dataset .. ": " .. tostring(b)
    end
    if c ~= "joined" then joined = false end
  end
  if ok then return true, count, joined and "joined" or nil end
  return false, table.concat(errs, "; "), joined and "joined" or nil
end

-- Seconds from wall-clock time wall + d until unit u's next phase instant
-- (a wall-clock time t with t mod interval = its phase), plus d.
local function phase_wait(u, wall, d)
  return d + (u.phase_ - (wall + d)) % u.interval
end

local function next_period(u)
  local j = u.jitter_ or 0
  if j <= 0 then return u.interval end
  return u.interval * (1 + j * (2 * math.random() - 1))
end

-- Whether the clock entry e is still unit u's schedule: a stop(), a
-- disable_dataset() or a newer start() (which gives u another entry)
-- ends it.
local function scheduled(self, u, e)
  return self.running and u.enabled and u.entry_ == e
end

-- The run of unit u now due, in a worker of the clock (entry e), and the
-- next one scheduled. A run still in flight (a manual one, or the
-- replaced instance's after a reload) is waited for, never overlapped; a
-- run that overran its period delays the next one to its end, and missed
-- periods are not replayed.
local function fire(e, self, u)
  if not scheduled(self, u, e) then return end
  local due = u.next_due_
  u.due_ = due -- due(): the due time of this run
  -- the next run's due time is set before running, so that an instance
  -- taking over at a reload continues this schedule
  u.next_due_ = due + next_period(u)
  while u.slot_:busy() do
    if not u.slot_:wait() or not scheduled(self, u, e) then return end
  end
  local me = sluice.current()
  local ok, err = xpcall(guarded, debug.traceback, self, u)
  if not ok then
    -- a fault of the framework's, not of collect (whose errors are the
    -- run's): logged, the slot freed, the schedule goes on
    u.log.error("scheduled run failed", { error = tostring(err) })
    if u.slot_:held_by(me) then u.slot_:release(false, tostring(err):match("^[^\n]*")) end
  end
  if not scheduled(self, u, e) then return end -- stop(), disable_dataset()
  local now = sluice.now()
  if u.next_due_ < now then
    -- overran: the next run starts now, or with a phase at its next instant
    u.next_due_ = now
    if u.phase_ then u.next_due_ = now + phase_wait(u, sluice.time(), 0) end
  end
  clock.at(e, u.next_due_)
end

-- Unit u's schedule, its first run delay seconds from now.
local function schedule(self, u, delay)
  if u.entry_ then clock.cancel(u.entry_) end
  u.next_due_ = sluice.now() + delay
  u.first_due_ = u.next_due_
  u.entry_ = clock.entry(fire, self, u)
  clock.at(u.entry_, u.next_due_)
end

-- Unit u's schedule ends (stop(), disable_dataset()); a run in flight
-- finishes.
local function unschedule(u)
  if u.entry_ then clock.cancel(u.entry_) end
end

_M.dataset_units = dataset_units
_M.guarded = guarded
_M.run_all = run_all
_M.phase_wait = phase_wait
_M.schedule = schedule
_M.unschedule = unschedule
return _M
