-- sluice.collector.clock: the due entries of every started collector, run
-- by a few worker tasks, with no task, timer or coroutine made per run.
local sluice = require "sluice"
local clock = require "sluice.collector.clock"
local wait_for = require("support.wait").wait_for

-- waits until the clock has nothing scheduled and its tasks have ended
local function settled(base)
  wait_for("the clock's tasks to end", function()
    local st = clock.stats()
    return st.scheduled == 0 and st.workers == 0 and not st.running and sluice.tasks().running == base
  end, 5)
end

describe("sluice.collector.clock", function()
  it("runs entries in the order of their due times, then its tasks end", function()
    local base = sluice.tasks().running
    local order, dues = {}, {}
    local function fn(_, i) order[#order + 1] = i end
    local now = sluice.now()
    for i = 1, 60 do
      dues[i] = now + ((i * 37) % 60) / 1000 -- 0 to 59 ms, shuffled
      clock.at(clock.entry(fn, i), dues[i])
    end
    assert.equal(60, clock.stats().scheduled)
    wait_for("every entry", function() return #order == 60 end, 5)
    for k = 2, #order do
      assert.is_true(dues[order[k - 1]] <= dues[order[k]], "entry " .. order[k] .. " ran before its turn")
    end
    settled(base)
  end)

  it("moves and cancels scheduled entries", function()
    local base = sluice.tasks().running
    local ran = {}
    local function fn(_, name) ran[#ran + 1] = name end
    local a, b, c = clock.entry(fn, "a"), clock.entry(fn, "b"), clock.entry(fn, "c")
    local now = sluice.now()
    clock.at(a, now + 0.05)
    clock.at(b, now + 0.01)
    clock.at(c, now + 0.02)
    assert.is_true(clock.scheduled(b))
    clock.cancel(b)
    assert.is_false(clock.scheduled(b))
    clock.cancel(b) -- twice: nothing
    clock.at(a, now) -- earlier than any: the parked clock is woken for it
    wait_for("a and c", function() return #ran == 2 end, 5)
    assert.same({ "a", "c" }, ran)
    assert.is_false(clock.scheduled(a))
    settled(base)
  end)

  it("makes no task per run: a few workers serve entries that reschedule themselves", function()
    local base = sluice.tasks().running
    local created = sluice.tasks().created
    local runs, ROUNDS, N = 0, 20, 50
    local function fn(_, left)
      runs = runs + 1
      if left > 1 then
        -- the next round, 2 ms on: an entry owns its arguments, so a new one
        clock.at(clock.entry(fn, left - 1), sluice.now() + 0.002)
      end
    end
    for _ = 1, N do clock.at(clock.entry(fn, ROUNDS), sluice.now()) end
    wait_for("every round", function() return runs == N * ROUNDS end, 10)
    -- the clock, and workers for the runs in flight at once (all N at the
    -- start, fewer later): not one per run
    local made = sluice.tasks().created - created
    assert.is_true(made < N * ROUNDS / 10, "tasks made: " .. made .. " for " .. N * ROUNDS .. " runs")
    settled(base)
  end)

  it("logs a call that fails and goes on with the next", function()
    local base = sluice.tasks().running
    local logs = require "support.logs"
    local restore = logs.capture("error")
    finally(restore)
    local ok = false
    local now = sluice.now()
    clock.at(clock.entry(function() error("boom") end), now)
    clock.at(clock.entry(function() ok = true end), now + 0.001)
    wait_for("the second entry", function() return ok end, 5)
    local failed = logs.logged("scheduled call failed")
    assert.equal(1, #failed)
    assert.matches("boom", failed[1].error)
    settled(base)
  end)
end)
