--- sluice.collector.clock: when the started collectors of the process run.
--
-- An entry is a function and its arguments with a due time (sluice.now()
-- seconds). One task, the clock, parks until the earliest due time in a
-- binary heap of the scheduled entries, then hands each entry that is due
-- to a worker task: an idle one from a pool, or a new one when none is
-- idle. The worker calls fn(entry, a, b) and goes back to the pool; fn
-- schedules the entry again when it wants another run.
--
-- Why not a timer and a task per run, or a task per collector: LuaJIT's
-- one indivisible GC step walks every userdata and re-marks every live
-- coroutine, and 10,000 collectors at 1 s made 20,000-30,000 userdata a
-- second that way, or held 10,000 coroutines (tests/bench/README.md,
-- "Schedule"). Here a run makes no userdata or coroutine, and a collector
-- holds none between its runs: the tasks are the clock and as many
-- workers as runs were ever in flight at once, each ending after IDLE
-- seconds without work, all of them once nothing is scheduled.
--
-- The clock owns its entries (due time, heap index, fn, a, b)
-- and its tasks; sluice.collector.runs is its only user. Nothing here
-- yields but the tasks it starts.
local sluice = require "sluice"
local log = require "sluice.log"

local _M = {}

local IDLE = 30 -- seconds a worker waits for work before it ends

-- An entry's fields (an array: a third of the memory of a table with keys,
-- one per collector): due time, heap index (false when not scheduled), fn,
-- and its arguments.
local DUE, I, FN, A, B = 1, 2, 3, 4, 5

local heap = {}           -- scheduled entries, heap[1] the earliest
local clock               -- the clock's task while one runs
local clock_parked = false
local idle = {}           -- parked workers, the latest last
local workers = 0         -- live workers, idle or not

local floor = math.floor

local function set(i, e)
  heap[i] = e
  e[I] = i
end

local function up(i)
  local e = heap[i]
  while i > 1 do
    local p = floor(i / 2)
    if heap[p][DUE] <= e[DUE] then break end
    set(i, heap[p])
    i = p
  end
  set(i, e)
end

local function down(i)
  local n, e = #heap, heap[i]
  while true do
    local c = 2 * i
    if c > n then break end
    if c < n and heap[c + 1][DUE] < heap[c][DUE] then c = c + 1 end
    if heap[c][DUE] >= e[DUE] then break end
    set(i, heap[c])
    i = c
  end
  set(i, e)
end

-- Takes the scheduled entry e out of the heap; returns it.
local function remove(e)
  local i, n = e[I], #heap
  e[I] = false
  local last = heap[n]
  heap[n] = nil
  if last == e then return e end
  set(i, last)
  up(i)
  down(last[I])
  return e
end

-- One entry's call, in a frame of its own (what it references does not
-- stay on the worker's stack while the worker is parked).
local function serve(e)
  local ok, err = xpcall(e[FN], debug.traceback, e, e[A], e[B])
  if not ok then log.error("scheduled call failed", { error = tostring(err) }) end
end

-- A worker: runs the entries the clock hands it, parked in between.
local function worker(e)
  local me = sluice.current()
  workers = workers + 1
  while e do
    serve(e)
    e = nil
    if sluice.stopping() or not heap[1] then break end -- nothing to wait for
    idle[#idle + 1] = me
    local woken, next_e = sluice.park(IDLE)
    if woken then
      e = next_e
    else
      for k = #idle, 1, -1 do
        if idle[k] == me then table.remove(idle, k) break end
      end
    end
  end
  workers = workers - 1
end

local function dispatch(e)
  while #idle > 0 do
    local w = idle[#idle]
    idle[#idle] = nil
    if sluice.unpark(w, e) then return end
  end
  sluice.spawn(worker, e)
end

-- The clock's task: while anything is scheduled, the due entries to the
-- workers; then it ends, and the idle workers with it.
local function run_clock()
  while heap[1] do
    local wait = heap[1][DUE] - sluice.now()
    if wait > 0 then
      if sluice.stopping() then break end
      -- (no entry in a local while parked: a cancelled one would stay
      -- reachable from this task's stack until it wakes)
      clock_parked = true
      local _, why = sluice.park(wait)
      clock_parked = false
      if why == "shutdown" then break end
    else
      dispatch(remove(heap[1]))
    end
  end
  clock = nil
  if not heap[1] then
    -- nothing scheduled: no task of the clock's outlives that (a worker
    -- unparked without an entry ends)
    local ws = idle
    idle = {}
    for _, w in ipairs(ws) do sluice.unpark(w, nil) end
  end
end

--- entry(fn, a, b) -> an entry, not scheduled: fn(entry, a, b) is called
-- in a worker task each time it comes due.
function _M.entry(fn, a, b)
  return { 0, false, fn, a, b }
end

--- at(e, due): schedules e at due (sluice.now() seconds; now or earlier:
-- at the clock's next turn), moving it if it was scheduled. Does not
-- yield. After shutdown began nothing new runs.
function _M.at(e, due)
  if e[I] then remove(e) end
  e[DUE] = due
  set(#heap + 1, e)
  up(e[I])
  if clock then
    if clock_parked and heap[1] == e then sluice.unpark(clock) end
  elseif not sluice.stopping() then
    clock = sluice.spawn(run_clock)
  end
end

--- cancel(e): e is not scheduled any more (a call in progress goes on).
function _M.cancel(e)
  if not e[I] then return end
  remove(e)
  -- nothing left: the clock ends now rather than at the due time it waits for
  if not heap[1] and clock_parked then sluice.unpark(clock) end
end

--- scheduled(e) -> whether e waits for its due time.
function _M.scheduled(e)
  return e[I] ~= false
end

--- stats() -> {scheduled (entries), workers (live), idle (of those),
-- running (whether the clock's task runs)}.
function _M.stats()
  return { scheduled = #heap, workers = workers, idle = #idle, running = clock ~= nil }
end

return _M
