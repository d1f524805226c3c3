-- sluice.procinfo: this process's memory, CPU time and start time, checked
-- against what other sources say (getconf, /proc/self/statm, the C
-- library's clock()).
local sluice = require "sluice"
local procinfo = require "sluice.procinfo"

local spec_loaded = sluice.time()

local function getconf(name)
  local p = assert(io.popen("getconf " .. name))
  local v = tonumber(p:read("*l"))
  p:close()
  return v
end

-- Burns CPU until the C library's clock() says `seconds` of it went by
-- (bounded by 30 s of wall time). Returns the CPU seconds it took.
local function burn(seconds)
  local c0, t0 = os.clock(), sluice.now()
  local x = 0
  while os.clock() - c0 < seconds and sluice.now() - t0 < 30 do x = x + 1 end
  assert(x > 0)
  return os.clock() - c0
end

describe("sluice.procinfo", function()
  it("counts ticks of the system's clock rate", function()
    assert.equal(getconf("CLK_TCK"), procinfo.USER_HZ)
  end)

  it("reads the resident and virtual size in bytes, as statm's pages say", function()
    local page = getconf("PAGESIZE")
    local rss, vsz = procinfo.memory()
    local f = assert(io.open("/proc/self/statm"))
    local size, resident = f:read("*n", "*n")
    f:close()
    assert.is_true(rss > 1024 * 1024 and rss < vsz, rss .. " " .. vsz)
    -- the same counters read a moment apart
    assert.is_true(math.abs(rss - resident * page) < 1024 * 1024, rss .. " vs " .. resident * page)
    assert.is_true(math.abs(vsz - size * page) < 8 * 1024 * 1024, vsz .. " vs " .. size * page)
  end)

  it("reads the CPU time the process spent, as clock() does", function()
    local before = procinfo.cpu_seconds()
    local spent = burn(0.3)
    assert.is_true(spent >= 0.3, "burned only " .. spent .. " s of CPU in 30 s")
    local after = procinfo.cpu_seconds()
    local clock = os.clock()
    -- /proc rounds user and system time down to whole ticks each
    assert.is_true(after <= clock + 0.01 and after >= clock - 0.03, after .. " vs clock() " .. clock)
    assert.is_true(after - before >= spent - 0.03, (after - before) .. " for " .. spent)
  end)

  it("reads when the process started", function()
    local t0 = assert(procinfo.start_time())
    assert.equal(t0, procinfo.start_time())
    -- before this file was loaded, and within the hour a spec may take
    assert.is_true(t0 <= spec_loaded and t0 > spec_loaded - 3600, t0 .. " vs " .. spec_loaded)
  end)
end)
