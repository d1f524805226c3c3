-- Run budgets: a task (a collection run) that spins or waits past its
-- budget is ended with an error naming it, and the loop goes on.
local sluice = require "sluice"
local wait_for = require("support.wait").wait_for
local collector = require "sluice.collector"

-- Hot loops: LuaJIT compiles both after a few dozen iterations. The spec's
-- own spinning functions run with the JIT off, as collectors' do (define
-- turns it off for them); the collector tests below rely on define alone.
local function spin() while true do end end
local function crunch()
  local x = 0
  while true do x = (x * 3 + 1) % 1000 end
end
jit.off(spin, true)
jit.off(crunch, true)

-- Spinning that tries to hide from the watchdog: behind a pcall, in a
-- coroutine of the task's own, below a C call boundary.
local HIDING = {
  function() pcall(spin); return "escaped" end,
  function()
    local co = coroutine.wrap(function() pcall(crunch) end)
    pcall(co)
    while true do end
  end,
  function() pcall(table.sort, { 3, 2, 1 }, function() spin() end); spin() end,
}
for _, fn in ipairs(HIDING) do jit.off(fn, true) end

local function budgeted(fn, opts)
  return sluice.budget(sluice.spawn(fn), opts)
end

describe("sluice.budget", function()
  it("ends a task that spins past its CPU budget, and the loop goes on", function()
    local ticks = 0
    local ticker = sluice.every(0.01, function() ticks = ticks + 1 end)
    for _, fn in ipairs({ spin, crunch }) do
      local t0 = sluice.now()
      local t = budgeted(fn, { cpu = 0.2, label = "collector x: run" })
      assert.same({ false, "collector x: run exceeded its CPU budget of 0.2 s" }, { sluice.wait(t) })
      assert.equal("failed", sluice.status(t))
      local took = sluice.now() - t0
      assert.is_true(took >= 0.19 and took < 2, "took " .. took)
    end
    local before = ticks
    wait_for("the ticker's next tick", function() return ticks > before end, 2)
    ticker:cancel()
  end)

  it("cannot be swallowed by a pcall, a coroutine or a C call boundary", function()
    for i, fn in ipairs(HIDING) do
      local t = budgeted(fn, { cpu = 0.1, label = "case " .. i })
      assert.same({ false, "case " .. i .. " exceeded its CPU budget of 0.1 s" }, { sluice.wait(t) })
    end
  end)

  it("counts CPU over all resumes, not time spent waiting", function()
    local t = budgeted(function()
      for _ = 1, 3 do sluice.sleep(0.1) end -- 0.3 s waiting, no CPU to speak of
      local t0 = sluice.now()
      while sluice.now() - t0 < 0.05 do end
      return "done"
    end, { cpu = 0.2 })
    assert.same({ true, "done" }, { sluice.wait(t) })
  end)

  it("kills a task still waiting at its wall-clock deadline, cancelling the wait", function()
    local waiting = sluice.tasks().waiting
    local t0 = sluice.now()
    local t = budgeted(function() sluice.sleep(1e9) end, { wall = 0.2, label = "collector slow: run" })
    assert.same({ false, "collector slow: run exceeded its wall-clock deadline of 0.2 s" }, { sluice.wait(t) })
    local took = sluice.now() - t0
    assert.is_true(took >= 0.19 and took < 1, "took " .. took)
    assert.equal("killed", sluice.status(t))
    assert.equal(waiting, sluice.tasks().waiting)
  end)

  it("ends a task that spins past its wall-clock deadline", function()
    local t = budgeted(spin, { wall = 0.2, label = "w" })
    assert.same({ false, "w exceeded its wall-clock deadline of 0.2 s" }, { sluice.wait(t) })
  end)

  it("lets a task within budget finish untouched", function()
    local t = budgeted(function() sluice.sleep(0.05); return 1, 2 end, { cpu = 1, wall = 1 })
    assert.same({ true, 1, 2 }, { sluice.wait(t) })
    -- its deadline timer went with it: past the 1 s deadline, nothing
    -- (the time passing is what is under test)
    sluice.sleep(1.1)
    assert.equal("done", sluice.status(t))
  end)

  it("rejects bad options and tasks it cannot cap", function()
    local t = sluice.spawn(function() end)
    assert.has_error(function() sluice.budget(t, { cpu = 0 }) end,
      "sluice.budget: option 'cpu' must be a finite number > 0 or false, got 0")
    assert.has_error(function() sluice.budget(t, { wall = math.huge }) end,
      "sluice.budget: option 'wall' must be a finite number > 0 or false, got inf")
    assert.has_error(function() sluice.budget(t, { cpus = 1 }) end, "sluice.budget: unknown option 'cpus'")
    assert.has_error(function() sluice.budget(t, { label = 1 }) end,
      "sluice.budget: option 'label' must be a string, got number")
    assert.has_error(function() sluice.budget(t, 5) end,
      "sluice.budget: bad argument #2 'opts' (table expected, got number)")
    sluice.budget(t, { cpu = 1 })
    assert.has_error(function() sluice.budget(t, { cpu = 1 }) end, "sluice.budget: the task already has a budget")
    sluice.wait(t)
    assert.has_error(function() sluice.budget(t, { cpu = 1 }) end, "sluice.budget: the task is finished")
  end)
end)

describe("budget regions (sluice._budget.enter/leave)", function()
  local region = require "sluice._budget"

  -- fn(...) in a region of the calling task, as sluice.collector runs a
  -- collection: its results, or false and the budget's error
  local function within(cpu, wall, label, fn, ...)
    assert(region.enter(cpu, wall, label))
    local res = { xpcall(fn, debug.traceback, ...) }
    local over = region.leave()
    if over then return false, over end
    return unpack(res)
  end

  it("ends a region that spins, however it hides, and the task goes on", function()
    local retry_spin = function() while true do pcall(spin) end end
    jit.off(retry_spin, true)
    local cases = { spin, retry_spin, unpack(HIDING) }
    local t = sluice.spawn(function()
      local out = {}
      for i, fn in ipairs(cases) do
        out[i] = { within(0.1, 0, "case " .. i, fn) }
      end
      sluice.sleep(0) -- the task can wait again: nothing is left tripped
      return out
    end)
    local done, out = sluice.wait(t)
    assert.is_true(done)
    for i = 1, #cases do
      assert.same({ false, "case " .. i .. " exceeded its CPU budget of 0.1 s" }, out[i])
    end
    assert.equal("done", sluice.status(t))
  end)

  it("ends a wait at the region's deadline, cancelling it, and the task goes on", function()
    local waiting = sluice.tasks().waiting
    local t = sluice.spawn(function()
      local t0 = sluice.now()
      local a, b = within(0, 0.2, "collector slow: run", function() sluice.sleep(1e9) end)
      local took = sluice.now() - t0
      sluice.sleep(0.01)
      return a, b, took
    end)
    local done, a, b, took = sluice.wait(t)
    assert.is_true(done)
    assert.same({ false, "collector slow: run exceeded its wall-clock deadline of 0.2 s" }, { a, b })
    assert.is_true(took >= 0.19 and took < 1, "took " .. took)
    assert.equal(waiting, sluice.tasks().waiting)
  end)

  it("counts CPU over the region's resumes and leaves results of one within budget alone", function()
    local t = sluice.spawn(function()
      return within(0.5, 1, "fine", function(x)
        for _ = 1, 3 do sluice.sleep(0.02) end
        return x, 2
      end, 1)
    end)
    assert.same({ true, true, 1, 2 }, { sluice.wait(t) })
    -- its deadline timer went with the region: past it, nothing
    sluice.sleep(1.1)
    assert.equal("done", sluice.status(t))
  end)

  it("is refused where it cannot hold: nested, outside a task, a budgeted task; leave without one", function()
    local t = sluice.spawn(function()
      assert(region.enter(1, 0, "outer"))
      local ok, why = region.enter(1, 0, "inner")
      assert(region.leave() == nil)
      local co = coroutine.wrap(function() return region.enter(1, 0, "in a coroutine") end)
      local ok2, why2 = co()
      return ok, why, ok2, why2, pcall(region.leave)
    end)
    local done, ok, why, ok2, why2, lok, lerr = sluice.wait(t)
    assert.is_true(done)
    assert.same({ nil, "the task already has a budget (regions do not nest)" }, { ok, why })
    assert.same({ nil, "not called from a task's own coroutine" }, { ok2, why2 })
    assert.is_false(lok)
    assert.matches("no budget region open", lerr)
    local b = sluice.budget(sluice.spawn(function() return region.enter(1, 0, "x") end), { cpu = 1 })
    assert.same({ true, nil, "the task already has a budget (regions do not nest)" }, { sluice.wait(b) })
  end)

  it("kills the tasks it spawned when it runs out, and leaves them be when not", function()
    local helpers = {}
    local t = sluice.spawn(function()
      local over = { within(0, 0.2, "r", function()
        helpers[1] = sluice.spawn(sluice.sleep, 1e9)
        sluice.sleep(1e9)
      end) }
      local fine = { within(0, 5, "s", function() helpers[2] = sluice.spawn(sluice.sleep, 0.05) end) }
      return over, fine
    end)
    local done, over, fine = sluice.wait(t)
    assert.is_true(done)
    assert.same({ false, "r exceeded its wall-clock deadline of 0.2 s" }, over)
    assert.same({ true }, fine)
    assert.equal("killed", sluice.status(helpers[1]))
    assert.same({ false, "r exceeded its wall-clock deadline of 0.2 s" }, { sluice.wait(helpers[1]) })
    assert.same({ true, true }, { sluice.wait(helpers[2]) }) -- outlived its region, as it may
  end)

  it("is freed with a task killed inside it", function()
    local t = sluice.spawn(function()
      assert(region.enter(0, 0.5, "k"))
      sluice.sleep(1e9)
    end)
    wait_for("the task waiting in its region", function() return sluice.status(t) == "waiting" end)
    sluice.kill(t)
    -- past the region's deadline: its timer went with the task
    sluice.sleep(0.6)
    assert.equal("killed", sluice.status(t))
  end)
end)

describe("a started collector's run budget", function()
  it("fails the runs over budget and keeps the schedule", function()
    local spec = collector.define({
      name = "sched_spinner", interval = 0.05, limiter = false, breaker = false, retry = false,
      run_budget = { cpu = 0.05 },
      collect = function() crunch() end,
    })
    local c = collector.new(spec)
    c:start()
    wait_for("three runs over budget", function() return c:counters().collections_failed >= 3 end, 5)
    c:stop()
    c:drain()
    assert.equal("collector sched_spinner: run exceeded its CPU budget of 0.05 s", c:counters().last_error)
  end)
end)

-- file-level helpers a collect reaches through upvalues run interpreted too
local function churn(n)
  local x = 0
  while true do x = (x + n) % 7 end
end

describe("collector run_budget", function()
  local function new(opts)
    local spec = collector.define({
      name = "c", limiter = false, breaker = false, retry = false,
      collect = function() return {} end,
    })
    return collector.new(spec, opts)
  end

  it("defaults to 5 s of CPU and a wall-clock deadline from timeout and interval", function()
    assert.same({ cpu = 5, wall = 300, label = "collector c: run" }, new({}).run_budget)
    assert.same({ cpu = 5, wall = 400, label = "collector c: run" }, new({ interval = 200 }).run_budget)
    assert.same({ cpu = 5, wall = 50, label = "collector c: run" }, new({ timeout = 5, interval = 1 }).run_budget)
    assert.same({ cpu = 2, wall = false, label = "collector c: run" },
      new({ run_budget = { cpu = 2, wall = false } }).run_budget)
    assert.is_nil(new({ run_budget = false }).run_budget)
    assert.is_nil(new({ run_budget = { cpu = false, wall = false } }).run_budget)
  end)

  it("validates the option", function()
    assert.has_error(function() new({ run_budget = { cpu = 0 } }) end,
      "collector 'c': option 'run_budget.cpu' must be a finite number > 0 or false, got 0")
    assert.has_error(function() new({ run_budget = { wall = -1 } }) end,
      "collector 'c': option 'run_budget.wall' must be a finite number > 0 or false, got -1")
    assert.has_error(function() new({ run_budget = { cpu = "5" } }) end,
      "collector 'c': option 'run_budget.cpu' must be a finite number > 0 or false, got string")
    assert.has_error(function() new({ run_budget = { memory = 1 } }) end,
      "collector 'c': unknown option 'run_budget.memory'")
    assert.has_error(function() new({ run_budget = true }) end,
      "collector 'c': option 'run_budget' must be a table or false, got true")
    assert.has_error(function() new({ run_budget = 5 }) end,
      "collector 'c': option 'run_budget' must be a table or false, got number")
  end)

  it("fails a run that spins in a compiled-hot loop, naming the collector", function()
    local spec = collector.define({
      name = "spinner", limiter = false, breaker = false, retry = false, run_budget = { cpu = 0.2 },
      collect = function()
        pcall(function() local x = 0 while true do x = x + 1 end end)
        churn(3)
      end,
    })
    local c = collector.new(spec)
    for _ = 1, 2 do
      assert.same({ false, "collector spinner: run exceeded its CPU budget of 0.2 s" }, { c:run_once() })
    end
    assert.equal(2, c:counters().collections_failed)
    assert.equal("collector spinner: run exceeded its CPU budget of 0.2 s", c:counters().last_error)
    assert.equal(0, c.in_flight)
    -- and a helper it reaches through an upvalue
    local spec2 = collector.define({
      name = "churner", limiter = false, breaker = false, retry = false, run_budget = { cpu = 0.2 },
      collect = function() churn(5) end,
    })
    assert.same({ false, "collector churner: run exceeded its CPU budget of 0.2 s" },
      { collector.new(spec2):run_once() })
  end)

  it("fails a run still waiting at its deadline", function()
    local spec = collector.define({
      name = "sleeper", limiter = false, breaker = false, retry = false, run_budget = { wall = 0.2 },
      collect = function() sluice.sleep(1e9) end,
    })
    local c = collector.new(spec)
    local t0 = sluice.now()
    assert.same({ false, "collector sleeper: run exceeded its wall-clock deadline of 0.2 s" }, { c:run_once() })
    assert.is_true(sluice.now() - t0 < 1)
  end)

  it("leaves a healthy run's results alone", function()
    local spec = collector.define({
      name = "fine", limiter = false, breaker = false, retry = false,
      tables = { t = { columns = { n = "integer" }, key = { "n" } } },
      collect = function() sluice.sleep(0.01); return { { n = 1 }, { n = 2 } } end,
    })
    assert.same({ true, 2 }, { collector.new(spec):run_once() })
  end)
end)
