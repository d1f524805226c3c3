--- sluice: tasks and timers on the event loop, and the clocks.
-- Every piece of Lua work runs in a task (a coroutine the loop resumes when
-- what it waits for is ready). The functions that wait (sleep, wait, park
-- and, in other modules, HTTP, limiter waits) must be called from a task.
-- This module owns no state of its own (the task runtime is sluice._task's).
local core = require "sluice._task"
local options = require "sluice.options"

local _M = {
  _VERSION = core.version,
  spawn = core.spawn,       -- spawn(fn, ...) -> task
  wait = core.wait,         -- wait(task) -> true, results... | false, err
  kill = core.kill,         -- kill(task [, reason]) -> true if it was live
  sleep = core.sleep,       -- sleep(s) -> true | false, "shutdown"
  yield = core.yield,       -- let other ready tasks run
  park = core.park,         -- park([timeout]) -> true, ... | false, "timeout" | false, "shutdown"
  unpark = core.unpark,     -- unpark(task, ...) -> true if it was parked (it gets true, ...)
  after = core.after,       -- after(s, fn, ...) -> timer; fn(premature, ...)
  now = core.now,           -- monotonic seconds
  time = core.time,         -- wall clock, epoch seconds
  status = core.status,     -- status(task) -> "ready"|"running"|"waiting"|"done"|"failed"|"killed"
  id = core.id,             -- id(task) -> number
  current = core.current,   -- the running task, or nil
  on_shutdown = core.on_shutdown,
  on_reload = core.on_reload,
  tasks = core.tasks,       -- {running, waiting, ready, created, failed, killed}
  shutdown = core.shutdown, -- shutdown([exit_code]): begin graceful shutdown
  stopping = core.stopping, -- true once shutdown has begun
  shutdown_timeout = core.shutdown_timeout, -- get or set, in seconds
  environ = core.environ,   -- { NAME = value } for the whole environment
}

local EVERY_OPTIONS = { jitter = { type = "number", min = 0, lt = 1 } }

--- every(period, fn [, opts]) -> timer
-- Runs fn(premature) as a task every `period` seconds. A run never overlaps
-- the previous one: a run that overruns its period delays the next tick.
-- opts.jitter (0 <= j < 1) stretches or shrinks each period by up to j of it.
function _M.every(period, fn, opts)
  local jitter = 0
  if opts ~= nil then
    if type(opts) ~= "table" then
      error("sluice.every: bad argument #3 'opts' (table expected, got "
        .. type(opts) .. ")", 2)
    end
    options.check("sluice.every", opts, EVERY_OPTIONS)
    jitter = opts.jitter or 0
  end
  if type(period) ~= "number" or not (period > 0) or period == math.huge then
    error("sluice.every: bad argument #1 'period' (finite number > 0 expected, got "
      .. tostring(period) .. ")", 2)
  end
  if type(fn) ~= "function" then
    error("sluice.every: bad argument #2 'fn' (function expected, got "
      .. type(fn) .. ")", 2)
  end
  return core.every(period, fn, jitter)
end

-- A budget limit: a finite number > 0, or false (or nil) for none.
local LIMIT = {
  type = "number|boolean", gt = 0, finite = true, what = "a finite number > 0 or false",
  check = function(v) return v ~= true end,
}
local BUDGET_OPTIONS = { cpu = LIMIT, wall = LIMIT, label = "string" }
-- The spec, for modules whose options hold budget limits (a collector's
-- run_budget), so that they take and word them as budget() does.
_M.BUDGET_LIMIT = LIMIT

--- budget(task, { cpu = s, wall = s, label = "what" }) -> task
-- Caps a task that has not started or is waiting: at most `cpu` seconds of
-- CPU time over all its resumes, and an end `wall` seconds from now (false
-- or nil: no such limit). A task over budget ends with the error "<label>
-- exceeded its CPU budget of 5 s" (or "... its wall-clock deadline of
-- 60 s"), which no pcall inside it can catch; a waiting one is killed and
-- its operation cancelled. Code that may spin must not be JIT-compiled
-- (jit.off(fn, true)): compiled loops never look at the watchdog.
function _M.budget(task, opts)
  if type(opts) ~= "table" then
    error("sluice.budget: bad argument #2 'opts' (table expected, got " .. type(opts) .. ")", 2)
  end
  options.check("sluice.budget", opts, BUDGET_OPTIONS)
  local cpu, wall = opts.cpu or 0, opts.wall or 0
  require("sluice._budget").attach(task, cpu, wall, opts.label or ("task " .. core.id(task)))
  return task
end

-- Epoch seconds that os.date can spell: years 0000 to 9999.
local ISO_MIN, ISO_MAX = -62167219200, 253402300800

--- iso8601(epoch) -> the time as every JSON document of sluice spells it:
-- ISO 8601 in UTC with a Z, "2026-12-05T06:50:09Z" for a whole second,
-- else with 6 fraction digits, "2026-12-05T06:50:09.123456Z" (rounded to
-- the nearest microsecond; exact to it until 2255, as doubles go). epoch is wall-clock seconds (sluice.time());
-- anything but a number in years 0000 to 9999 is misuse (a caller with an
-- optional time writes `t and sluice.iso8601(t)`).
function _M.iso8601(epoch)
  if type(epoch) ~= "number" or not (epoch >= ISO_MIN and epoch < ISO_MAX) then
    error("sluice.iso8601: bad argument #1 (epoch seconds in years 0000 to 9999 expected, got "
      .. (type(epoch) == "number" and tostring(epoch) or type(epoch)) .. ")", 2)
  end
  local us = math.floor(epoch * 1e6 + 0.5)
  local secs = math.floor(us / 1e6)
  local frac = us - secs * 1e6
  if frac == 0 then return os.date("!%Y-%m-%dT%H:%M:%SZ", secs) end
  return os.date("!%Y-%m-%dT%H:%M:%S", secs) .. string.format(".%06dZ", frac)
end

return _M
