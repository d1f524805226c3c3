-- Suspending natives called where the task cannot yield to the loop (a
-- table.sort comparator, a gsub callback, a metamethod, require): they must
-- raise a clear error before starting anything, so that no timer, transfer
-- or ticket is left armed on a task that goes on running.
local sluice = require "sluice"
local http = require "sluice.http"
local limiter = require "sluice.limiter"
local server = require "sluice.server"

local CAUSE = "cannot wait here: called through a C function that Lua cannot yield across"

-- Calls wait() inside each kind of C boundary; every call must raise
-- "<name>: cannot wait here ...". Returns the messages.
local function through_boundaries(name, wait)
  local errs = {}
  local function expect(ok, err)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find(name .. ": " .. CAUSE, 1, true), tostring(err))
    errs[#errs + 1] = err
  end
  expect(pcall(table.sort, { 3, 1, 2 }, function(a, b) wait(); return a < b end))
  expect(pcall(string.gsub, "ab", "%w", function() wait() end))
  expect(pcall(string.format, "%s", setmetatable({}, { __tostring = function() wait(); return "x" end })))
  package.preload["nowait_spec_module"] = function() wait(); return {} end
  expect(pcall(require, "nowait_spec_module"))
  package.loaded["nowait_spec_module"] = nil
  return errs
end

-- The task goes on normally: a later sleep takes its time (an orphaned
-- timer re-armed by it used to spin the loop at 100% CPU, and SIGTERM was
-- ignored), and nothing is counted as waiting.
local function still_sane(waiting_before)
  assert.equal(waiting_before, sluice.tasks().waiting)
  local t0 = sluice.now()
  assert.is_true(sluice.sleep(0.05))
  local dt = sluice.now() - t0
  assert.is_true(dt >= 0.0495 and dt < 0.45, "slept " .. dt)
  assert.equal(waiting_before, sluice.tasks().waiting)
end

describe("waiting where a task cannot yield", function()
  it("sleep, park, yield and wait raise, and leave no timer armed", function()
    local waiting = sluice.tasks().waiting
    through_boundaries("sluice.sleep", function() sluice.sleep(0.5) end)
    still_sane(waiting)
    through_boundaries("sluice.park", function() sluice.park(0.5) end)
    through_boundaries("sluice.park", function() sluice.park() end)
    still_sane(waiting)
    through_boundaries("sluice.yield", function() sluice.yield() end)
    local other = sluice.spawn(function() sluice.sleep(0.02); return "other" end)
    through_boundaries("sluice.wait", function() sluice.wait(other) end)
    still_sane(waiting)
    -- The task that was asked for is untouched, and still wakes its waiter.
    assert.same({ true, "other" }, { sluice.wait(other) })
  end)

  it("a task that tried keeps working and can be killed while it sleeps later", function()
    local t = sluice.spawn(function()
      pcall(table.sort, { 2, 1 }, function(a, b) sluice.sleep(0.5); return a < b end)
      return sluice.sleep(30)
    end)
    for _ = 1, 100 do
      if sluice.status(t) == "waiting" then break end
      sluice.sleep(0.01)
    end
    assert.equal("waiting", sluice.status(t))
    assert.is_true(sluice.kill(t))
    assert.same({ false, "killed" }, { sluice.wait(t) })
    still_sane(sluice.tasks().waiting)
  end)

  it("limiter waits raise before taking a ticket", function()
    local lim = limiter.new { name = "nowait_spec", rate = 5, burst = 1 }
    assert.is_number(lim:wait()) -- the one token: the next must wait
    local waiting = sluice.tasks().waiting
    through_boundaries("sluice.limiter.wait", function() lim:wait() end)
    assert.equal(0, lim:metrics().waiting)
    -- No ticket left queued ahead: the next wait takes one slot (0.2 s),
    -- not two (0.4 s).
    local waited = lim:wait()
    assert.is_true(waited > 0.1 and waited < 0.39, "waited " .. waited)
    still_sane(waiting)
  end)

  it("HTTP requests raise before starting a transfer", function()
    local srv = assert(server.listen {})
    finally(function() srv:close() end)
    srv:route("GET", "/slow", function() sluice.sleep(0.1); return 200, "late" end)
    local url = "http://127.0.0.1:" .. srv.port .. "/slow"
    local waiting = sluice.tasks().waiting
    through_boundaries("sluice.http.request", function() http.get(url) end)
    assert.equal(0, http.in_flight())
    still_sane(waiting)
    -- Orphaned transfers used to complete onto the task later (SEGV).
    sluice.sleep(0.2)
    local res = assert(http.get(url))
    assert.equal("late", res.body)
    assert.equal(0, http.in_flight())
  end)

  it("a process that tried still ends, and promptly", function()
    local f = io.open("/proc/self/stat")
    local pid = f:read("*l"):match("^%d+")
    f:close()
    local script = os.tmpname()
    finally(function() os.remove(script) end)
    f = io.open(script, "w")
    f:write([[
      local sluice = require "sluice"
      local ok, err = pcall(table.sort, { 3, 1, 2 }, function(a, b) sluice.sleep(0.5); return a < b end)
      print(ok, (tostring(err):match("sluice%.sleep: cannot wait here")))
      print(sluice.sleep(0.2))
    ]])
    f:close()
    local t0 = sluice.now()
    -- /proc/<pid>/exe: this very binary (dev or sanitizer build).
    local p = io.popen("timeout -s KILL 20 /proc/" .. pid .. "/exe run " .. script .. " 2>&1; echo rc=$?")
    local out = p:read("*a")
    p:close()
    assert.equal("false\tsluice.sleep: cannot wait here\ntrue\nrc=0\n", out)
    assert.is_true(sluice.now() - t0 < 10)
  end)
end)
