--- sluice: tasks and timers on the event loop.
-- Every piece of Lua work runs in a task (a coroutine the loop resumes when
-- what it waits for is ready). The functions that wait (sleep, wait and, in
-- other modules, HTTP, limiter waits) must be called from a task.
local core = require "sluice._task"

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

local every_options = { jitter = true }

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
    for k in pairs(opts) do
      if not every_options[k] then
        error("sluice.every: unknown option '" .. tostring(k) .. "'", 2)
      end
    end
    if opts.jitter ~= nil then
      if type(opts.jitter) ~= "number" or opts.jitter < 0 or opts.jitter >= 1 then
        error("sluice.every: option 'jitter' must be a number in [0, 1)", 2)
      end
      jitter = opts.jitter
    end
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

local budget_options = { cpu = true, wall = true, label = true }

local function check_limit(opts, k)
  local v = opts[k]
  if v == nil or v == false then return 0 end
  if type(v) ~= "number" or not (v > 0 and v < math.huge) then
    error("sluice.budget: option '" .. k .. "' must be a finite number > 0 or false, got "
      .. tostring(v), 3)
  end
  return v
end

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
  for k in pairs(opts) do
    if not budget_options[k] then
      error("sluice.budget: unknown option '" .. tostring(k) .. "'", 2)
    end
  end
  if opts.label ~= nil and type(opts.label) ~= "string" then
    error("sluice.budget: option 'label' must be a string, got " .. type(opts.label), 2)
  end
  local cpu, wall = check_limit(opts, "cpu"), check_limit(opts, "wall")
  require("sluice._budget").attach(task, cpu, wall, opts.label or ("task " .. core.id(task)))
  return task
end

return _M
