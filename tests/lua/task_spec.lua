-- Tasks and timers: the scheduling contract of require "sluice".
local sluice = require "sluice"
local wait_for = require("support.wait").wait_for

describe("sluice tasks", function()
  it("runs spawned tasks in spawn order and returns their results to wait", function()
    local order = {}
    local a = sluice.spawn(function(x) order[#order + 1] = "a"; return x * 2, "two" end, 21)
    local b = sluice.spawn(function() order[#order + 1] = "b" end)
    -- Spawning does not run the task: it is queued until the caller yields.
    assert.same({}, order)
    assert.same({ true, 42, "two" }, { sluice.wait(a) })
    assert.same({ "a", "b" }, order)
    assert.same({ true }, { sluice.wait(b) })
    -- Waiting on a finished task returns the same outcome again.
    assert.same({ true, 42, "two" }, { sluice.wait(a) })
    assert.equal("done", sluice.status(a))
  end)

  it("preserves nil results and argument counts", function()
    local t = sluice.spawn(function(...) return select("#", ...), ... end, nil, 2, nil)
    local function pack(...) return { n = select("#", ...), ... } end
    assert.same({ true, 3, nil, 2, nil, n = 5 }, pack(sluice.wait(t)))
  end)

  it("wakes sleepers in deadline order", function()
    local order = {}
    local tasks = {}
    for _, d in ipairs({ 0.05, 0.01, 0.03, 0.02, 0.04 }) do
      tasks[#tasks + 1] = sluice.spawn(function()
        sluice.sleep(d)
        order[#order + 1] = d
      end)
    end
    for _, t in ipairs(tasks) do sluice.wait(t) end
    assert.same({ 0.01, 0.02, 0.03, 0.04, 0.05 }, order)
  end)

  it("sleeps at least the requested time and returns true", function()
    local t0 = sluice.now()
    assert.is_true(sluice.sleep(0.02))
    assert.is_true(sluice.now() - t0 >= 0.0195)
  end)

  it("completes 10,000 concurrent sleeping tasks", function()
    local done = 0
    local tasks = {}
    local t0 = sluice.now()
    for i = 1, 10000 do
      tasks[i] = sluice.spawn(function()
        sluice.sleep(0.1)
        done = done + 1
        return i
      end)
    end
    for i = 1, 10000 do
      local ok, v = sluice.wait(tasks[i])
      assert(ok and v == i)
    end
    assert.equal(10000, done)
    -- Concurrent, not serial: far less than 10,000 * 0.1 s.
    assert.is_true(sluice.now() - t0 < 5)
  end)

  it("ends only the failing task, with file and line in its error", function()
    local survivor = sluice.spawn(function() sluice.sleep(0.01); return "alive" end)
    local failing = sluice.spawn(function() sluice.sleep(0.005); error("kaboom") end)
    local ok, err = sluice.wait(failing)
    assert.is_false(ok)
    assert.matches("task_spec%.lua:%d+: kaboom$", err)
    assert.equal("failed", sluice.status(failing))
    assert.same({ true, "alive" }, { sluice.wait(survivor) })
  end)

  it("keeps non-string error values", function()
    local e = setmetatable({}, { __tostring = function() return "custom" end })
    local ok, err = sluice.wait(sluice.spawn(function() error(e) end))
    assert.is_false(ok)
    assert.equal(e, err)
  end)

  it("counts created, running and failed tasks", function()
    local before = sluice.tasks()
    local sleeper = sluice.spawn(function() sluice.sleep(10) end)
    sluice.yield()
    local during = sluice.tasks()
    assert.equal(before.created + 1, during.created)
    assert.equal(before.running + 1, during.running)
    assert.equal(before.waiting + 1, during.waiting)
    sluice.wait(sluice.spawn(function() error("x") end))
    assert.equal(before.failed + 1, sluice.tasks().failed)
    assert.is_true(sluice.kill(sleeper))
    local after = sluice.tasks()
    assert.equal(before.running, after.running)
    assert.equal(before.killed + 1, after.killed)
  end)

  it("kills a sleeping task, fails its waiters and frees it", function()
    local probe = setmetatable({}, { __mode = "k" })
    local t
    do
      local captured = {}
      probe[captured] = true
      t = sluice.spawn(function()
        local keep = captured
        sluice.sleep(60)
        return keep
      end)
    end
    sluice.yield()
    assert.equal("waiting", sluice.status(t))
    local waiter = sluice.spawn(function() return sluice.wait(t) end)
    sluice.yield()
    assert.is_true(sluice.kill(t))
    assert.equal("killed", sluice.status(t))
    assert.same({ true, false, "killed" }, { sluice.wait(waiter) })
    assert.same({ false, "killed" }, { sluice.wait(t) })
    assert.is_false(sluice.kill(t))
    collectgarbage()
    collectgarbage()
    assert.is_nil(next(probe))
  end)

  it("kills a task that has not started yet", function()
    local ran = false
    local t = sluice.spawn(function() ran = true end)
    assert.is_true(sluice.kill(t, "not today"))
    sluice.sleep(0)
    assert.is_false(ran)
    assert.same({ false, "not today" }, { sluice.wait(t) })
  end)

  it("refuses to kill or wait on itself", function()
    local t = sluice.spawn(function()
      local me = sluice.current()
      local ok1, e1 = pcall(sluice.kill, me)
      local ok2, e2 = pcall(sluice.wait, me)
      return ok1, e1, ok2, e2
    end)
    local _, ok1, e1, ok2, e2 = sluice.wait(t)
    assert.is_false(ok1)
    assert.matches("cannot kill itself", e1)
    assert.is_false(ok2)
    assert.matches("cannot wait for itself", e2)
  end)

  it("rejects waiting outside a task, with a clear error", function()
    local co = coroutine.create(function() return sluice.sleep(0.01) end)
    local ok, err = coroutine.resume(co)
    assert.is_false(ok)
    assert.matches("sluice.sleep: not called from a task", err, 1, true)
  end)

  it("names the bad argument", function()
    assert.has_error(function() sluice.spawn(42) end,
      "bad argument #1 to 'spawn' (function expected, got number)")
    assert.has_error(function() sluice.sleep("soon") end)
    assert.has_error(function() sluice.every(0, function() end) end)
    assert.has_error(function() sluice.every(1, function() end, { jitter = 2 }) end,
      "sluice.every: option 'jitter' must be a number in [0, 1), got 2")
    assert.has_error(function() sluice.every(1, function() end, { jiter = 0.1 }) end,
      "sluice.every: unknown option 'jiter'")
    assert.has_error(function() sluice.after(-1, function() end) end)
  end)

  it("lets a cooperative yield run other ready tasks", function()
    local order = {}
    local a = sluice.spawn(function()
      order[#order + 1] = "a1"; sluice.yield(); order[#order + 1] = "a2"
    end)
    local b = sluice.spawn(function() order[#order + 1] = "b" end)
    sluice.wait(a); sluice.wait(b)
    assert.same({ "a1", "b", "a2" }, order)
  end)

  it("a task that keeps yielding does not starve timers and I/O", function()
    local fired = false
    sluice.after(0.05, function() fired = true end)
    local t0 = sluice.now()
    while not fired and sluice.now() - t0 < 2 do sluice.yield() end
    assert.is_true(fired)
    assert.is_true(sluice.now() - t0 < 0.5, "fired after " .. (sluice.now() - t0))
  end)

  it("park waits for unpark, which passes values; a park timeout says so", function()
    local t = sluice.spawn(function() return sluice.park() end)
    sluice.yield()
    assert.equal("waiting", sluice.status(t))
    assert.is_true(sluice.unpark(t, "a", nil, 3))
    assert.is_false(sluice.unpark(t, "again")) -- queued, not parked any more
    assert.same({ true, true, "a", nil, 3 }, { sluice.wait(t) })
    assert.is_false(sluice.unpark(t)) -- finished
    local t0 = sluice.now()
    assert.same({ false, "timeout" }, { sluice.park(0.05) })
    assert.is_true(sluice.now() - t0 >= 0.05)
    -- a sleeping task is not parked: unpark leaves it alone
    local s = sluice.spawn(function() return sluice.sleep(0.05) end)
    sluice.yield()
    assert.is_false(sluice.unpark(s))
    assert.same({ true, true }, { sluice.wait(s) })
    -- a killed parked task is gone: unpark says so, its timer never fires
    local k = sluice.spawn(function() return sluice.park(0.05) end)
    sluice.yield()
    assert.is_true(sluice.kill(k))
    assert.is_false(sluice.unpark(k))
    sluice.sleep(0.1)
    assert.equal("killed", sluice.status(k))
    assert.has_error(function() sluice.park(0 / 0) end)
  end)

  it("keeps a task's results however many there are, and the process survives", function()
    -- 7996 values: finish() used to luaL_checkstack the main state outside
    -- any protected call, a PANIC that ended the process.
    local vals = {}
    for i = 1, 7996 do vals[i] = i end
    local t = sluice.spawn(function() return unpack(vals) end)
    local r = { sluice.wait(t) }
    assert.equal(7997, #r)
    assert.is_true(r[1])
    assert.equal(1, r[2])
    assert.equal(7996, r[7997])
    -- 20000 values (a vararg tail call can build that many): kept, but more
    -- than a waiter's stack takes, so wait says so instead of returning them.
    local function grow(n, ...)
      if n == 0 then return ... end
      return grow(n - 1, n, ...)
    end
    local big = sluice.spawn(function() return grow(20000) end)
    local waiter = sluice.spawn(function() return sluice.wait(big) end)
    assert.same({ false, "sluice.wait: too many results to return (task " .. sluice.id(big)
      .. " returned 20000 values)" }, { sluice.wait(big) })
    assert.equal("done", sluice.status(big))
    assert.same({ true, false, "sluice.wait: too many results to return (task " .. sluice.id(big)
      .. " returned 20000 values)" }, { sluice.wait(waiter) })
  end)

  it("sleep, park and after take huge and infinite durations as (nearly) forever", function()
    -- (time_t)1e19 and friends are undefined; they used to come out as
    -- "immediately".
    local tasks = {
      sluice.spawn(function() return sluice.sleep(1e19) end),
      sluice.spawn(function() return sluice.sleep(math.huge) end),
      sluice.spawn(function() return sluice.park(math.huge) end),
      sluice.spawn(function() return sluice.park(1e300) end),
    }
    local fired = false
    local tm = sluice.after(1e300, function() fired = true end)
    sluice.sleep(0.05)
    for _, t in ipairs(tasks) do assert.equal("waiting", sluice.status(t)) end
    assert.is_false(fired)
    assert.is_true(tm:active())
    assert.is_true(tm:cancel())
    for _, t in ipairs(tasks) do assert.is_true(sluice.kill(t)) end
    -- A negative sleep is 0: due at once.
    assert.is_true(sluice.sleep(-1))
    assert.has_error(function() sluice.after(math.huge, function() end) end)
  end)

  it("reports monotonic and wall-clock time", function()
    local n1 = sluice.now()
    local n2 = sluice.now()
    assert.is_true(n2 >= n1)
    assert.is_true(math.abs(sluice.time() - os.time()) < 2)
  end)
end)

describe("sluice timers", function()
  it("after runs its function once with premature=false and its arguments", function()
    local got
    local t0 = sluice.now()
    sluice.after(0.02, function(premature, a, b) got = { premature, a, b, sluice.now() - t0 } end, "x", 7)
    wait_for("the timer", function() return got end, 2, 0.005)
    assert.same({ false, "x", 7 }, { got[1], got[2], got[3] })
    assert.is_true(got[4] >= 0.0195)
  end)

  it("cancel stops an after timer before it fires", function()
    local fired = false
    local tm = sluice.after(0.01, function() fired = true end)
    assert.is_true(tm:active())
    assert.is_true(tm:cancel())
    assert.is_false(tm:active())
    sluice.sleep(0.03)
    assert.is_false(fired)
    assert.is_false(tm:cancel())
  end)

  it("a spent or cancelled timer lets go of its callback and arguments while its handle is kept", function()
    -- (the handle has no finalizer to drop them: they go when it stops)
    local gone = setmetatable({}, { __mode = "k" })
    -- arms a timer on a new callback and argument seen only through gone
    local function arm(make, delay, cb)
      local arg, fn = {}, function() cb() end
      gone[arg], gone[fn] = true, true
      return make(delay, fn, arg)
    end
    local fired = false
    local spent = arm(sluice.after, 0, function() fired = true end)
    wait_for("the timer", function() return fired end, 2, 0.005)
    local cancelled = arm(sluice.after, 60, function() end)
    assert.is_true(cancelled:cancel())
    local stopped = arm(sluice.every, 60, function() end)
    assert.is_true(stopped:cancel())
    collectgarbage()
    collectgarbage()
    assert.is_nil(next(gone))
    assert.is_false(spent:active() or cancelled:active() or stopped:active())
  end)

  it("every never overlaps a run that sleeps longer than its period", function()
    local running, max_running, runs = 0, 0, 0
    local starts = {}
    local tm = sluice.every(0.01, function(premature)
      assert.is_false(premature)
      running = running + 1
      if running > max_running then max_running = running end
      runs = runs + 1
      starts[runs] = sluice.now()
      sluice.sleep(0.03)
      running = running - 1
    end)
    sluice.sleep(0.2) -- the window the runs are counted in
    tm:cancel()
    wait_for("the run in flight", function() return running == 0 end, 2, 0.005)
    assert.equal(1, max_running)
    -- 200 ms of 40 ms runs: at most 5 or so; a loaded machine runs fewer
    assert.is_true(runs >= 2 and runs <= 7, "runs: " .. runs)
    for i = 2, runs do
      -- each run starts only after the previous one's 30 ms sleep ended
      assert.is_true(starts[i] - starts[i - 1] >= 0.0295)
    end
  end)

  it("every keeps its period when runs are short", function()
    local runs = 0
    local tm = sluice.every(0.02, function() runs = runs + 1 end)
    sluice.sleep(0.11)
    tm:cancel()
    assert.is_true(runs >= 2 and runs <= 6, "runs: " .. runs)
  end)

  it("every with jitter stays within its bounds", function()
    local starts = {}
    local tm = sluice.every(0.02, function() starts[#starts + 1] = sluice.now() end, { jitter = 0.5 })
    sluice.sleep(0.2)
    tm:cancel()
    assert.is_true(#starts >= 3)
    local lo, hi = math.huge, 0
    for i = 2, #starts do
      local gap = starts[i] - starts[i - 1]
      lo, hi = math.min(lo, gap), math.max(hi, gap)
    end
    -- ticks keep to a fixed rate (a late tick is followed by an early one),
    -- so single gaps may fall below 0.01; their mean is the period
    local mean = (starts[#starts] - starts[1]) / (#starts - 1)
    assert.is_true(mean >= 0.01 and mean <= 0.04, "mean gap " .. mean)
    assert.is_true(hi - lo > 0.001, "periods do not vary")
  end)
end)

describe("sluice.iso8601", function()
  it("spells a whole second without a fraction, any other time with 6 digits, in UTC with Z", function()
    assert.equal("2026-12-05T06:50:09Z", sluice.iso8601(1796453409))
    assert.equal("2026-12-05T06:50:09.123456Z", sluice.iso8601(1796453409.123456))
    assert.equal("2026-12-05T06:50:09.100000Z", sluice.iso8601(1796453409.1))
    assert.equal("2026-12-05T06:50:09.000001Z", sluice.iso8601(1796453409.000001))
    assert.equal("1970-01-01T00:00:00Z", sluice.iso8601(0))
    assert.equal("1969-12-31T23:59:59.500000Z", sluice.iso8601(-0.5))
    assert.equal("9999-12-31T23:59:59Z", sluice.iso8601(253402300799))
  end)

  it("rounds to the nearest microsecond, carrying into the second", function()
    assert.equal("2026-12-05T06:50:10Z", sluice.iso8601(1796453409.9999996))
    assert.equal("2026-12-05T06:50:09.999999Z", sluice.iso8601(1796453409.9999994))
  end)

  it("raises on what is not a time", function()
    assert.has_error(function() sluice.iso8601(nil) end,
      "sluice.iso8601: bad argument #1 (epoch seconds in years 0000 to 9999 expected, got nil)")
    assert.has_error(function() sluice.iso8601(0 / 0) end,
      "sluice.iso8601: bad argument #1 (epoch seconds in years 0000 to 9999 expected, got nan)")
    assert.has_error(function() sluice.iso8601(253402300800) end,
      "sluice.iso8601: bad argument #1 (epoch seconds in years 0000 to 9999 expected, got 253402300800)")
  end)
end)
