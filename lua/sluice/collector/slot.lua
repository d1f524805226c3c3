--- sluice.collector.slot: one run in flight.
--
-- A collector's runs go through a slot: busy while a run is in flight,
-- with the task running it and when it started; tasks that want a run
-- meanwhile wait for that one to end and get its results. A reload hands
-- the slot of the replaced instance to the new one (collector's adopt), so
-- a collector has one run in flight across the swap too. A run killed from
-- outside (it cannot release the slot) is noticed by the waiters' periodic
-- check. The slot owns its fields; wait() yields (call it in a task), the
-- other calls do not.
local sluice = require "sluice"

local _M = {}
local Slot = {}
local mt = { __index = Slot }

local CHECK = 1 -- seconds between a waiter's checks of a killed run

-- The waiters of a slot nobody waits on: shared, never written (a first
-- waiter gives the slot a list of its own, a release drops it), so that an
-- idle slot and a run nobody joins allocate no list.
local NONE = setmetatable({}, { __newindex = function() error("slot: NONE is read-only", 2) end })

--- new() -> a free slot.
function _M.new()
  return setmetatable({ busy_ = false, task_ = nil, started_ = nil, waiters_ = NONE }, mt)
end

--- slot:busy() -> whether a run is in flight.
function Slot:busy()
  return self.busy_
end

--- slot:take(): the calling task's run is in flight from now.
function Slot:take()
  self.busy_, self.task_, self.started_ = true, sluice.current(), sluice.now()
end

--- slot:started() -> when the run in flight started (sluice.now()), or nil.
function Slot:started()
  return self.busy_ and self.started_ or nil
end

--- slot:held_by(task) -> whether the run in flight is task's.
function Slot:held_by(task)
  return self.busy_ and self.task_ == task
end

--- slot:waiting() -> how many tasks wait for the run in flight.
function Slot:waiting()
  return #self.waiters_
end

--- slot:dead() -> whether the run in flight's task ended without
-- releasing the slot (killed).
function Slot:dead()
  local st = self.task_ and sluice.status(self.task_)
  return st == "done" or st == "failed" or st == "killed"
end

--- slot:release(...): the run ended with results ...; its waiters get
-- them.
function Slot:release(...)
  self.busy_, self.task_, self.started_ = false, nil, nil
  local waiters = self.waiters_
  if waiters == NONE then return end
  self.waiters_ = NONE
  for _, t in ipairs(waiters) do sluice.unpark(t, ...) end
end

--- slot:wait() -> true, the run's results... | false, why. Parks the
-- calling task until the run in flight ends (true alone when none was, or
-- when this waiter found it killed); false, "shutdown" at shutdown, and
-- false outside a task.
function Slot:wait()
  local me = sluice.current()
  if not me then return false, "a run is already in progress" end
  while self.busy_ do
    if self.waiters_ == NONE then self.waiters_ = {} end
    self.waiters_[#self.waiters_ + 1] = me
    local res = { sluice.park(CHECK) }
    if res[1] then return unpack(res) end
    for i, t in ipairs(self.waiters_) do
      if t == me then table.remove(self.waiters_, i) break end
    end
    if res[2] == "shutdown" then return false, "shutdown" end
    if self.busy_ and self:dead() then self:release(false, "the run in progress was killed") end
  end
  return true
end

return _M
