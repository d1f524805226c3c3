-- sluice.app's reload at scale: it lets the loop turn while it builds,
-- stops and starts hundreds of collectors (the running ones keep their
-- schedule), refuses a second reload while one is under way, and applies
-- shutdown_timeout as the start does (and puts the previous value back
-- when a reload drops it).
local sluice = require "sluice"
local log = require "sluice.log"
local app_mod = require "sluice.app"
local files = require "support.files"

local write, tmpdir = files.write, files.tmpdir

local IDLE = [[
local collector = require "sluice.collector"
return collector.define({
  name = "idle", interval = 3600, limiter = { rate = 5 }, breaker = { failure_threshold = 5 }, retry = false,
  tables = { idle_rows = { columns = { id = "text" }, key = { "id" } } },
  collect = function() return {} end,
})
]]

-- n collectors of idle.lua, plus the extra top-level settings given
local function config(dir, n, extra)
  return ([[
local collectors = {}
for i = 1, %d do collectors[i] = { file = "idle.lua", name = string.format("idle%%04d", i) } end
return { store = %q, collectors = collectors, %s }
]]):format(n, dir .. "/db.sqlite", extra or "")
end

local function run(dir, n, extra)
  write(dir .. "/idle.lua", IDLE)
  write(dir .. "/sluice.lua", config(dir, n, extra))
  local chunk = assert(loadfile(dir .. "/sluice.lua"))
  return app_mod.run(chunk(), dir .. "/sluice.lua")
end

local function stop(app)
  for _, c in ipairs(app.order) do c:stop() end
  for _, c in ipairs(app.order) do c:drain() end
  app.store:close()
  app_mod.current = nil
end

describe("sluice.app reload", function()
  setup(function() log.output("/dev/null") end)
  teardown(function()
    log.output("-")
    files.cleanup()
  end)

  it("lets the loop turn while it reloads 300 collectors", function()
    local dir = tmpdir()
    local app = run(dir, 300)
    finally(function() stop(app) end)
    local turns, reloading = 0, true
    local ticker = sluice.spawn(function()
      while reloading do
        sluice.sleep(0)
        if reloading then turns = turns + 1 end
      end
    end)
    sluice.sleep(0) -- the ticker waits in its first sleep
    turns = 0
    local ok, err = app_mod.reload("spec")
    reloading = false
    assert.same({ true, nil }, { ok, err })
    sluice.wait(ticker)
    -- before, a reload without Redis never yielded: 0 turns
    assert.is_true(turns > 0, "the loop turned " .. turns .. " times during the reload")
    assert.equal(300, #app.order)
    assert.is_true(app.collectors.idle0300.running)
  end)

  it("refuses a reload while another is under way, and takes one afterwards", function()
    local dir = tmpdir()
    local app = run(dir, 300)
    finally(function() stop(app) end)
    local first, done = nil, false
    local a = sluice.spawn(function()
      first = { app_mod.reload("first") }
      done = true
    end)
    local second
    for _ = 1, 10000 do
      sluice.sleep(0)
      if done then break end
      if not second then second = { app_mod.reload("second") } end
    end
    sluice.wait(a)
    assert.same({ true }, first)
    assert.same({ nil, "a reload is under way: try again once it is done" }, second)
    assert.same({ true, nil }, { app_mod.reload("third") })
  end)

  it("applies shutdown_timeout at a reload, and the previous value when a reload drops it", function()
    local before = sluice.shutdown_timeout()
    local dir = tmpdir()
    local app = run(dir, 1, "shutdown_timeout = 3")
    finally(function()
      stop(app)
      sluice.shutdown_timeout(before)
    end)
    assert.equal(3, sluice.shutdown_timeout())
    write(dir .. "/sluice.lua", config(dir, 1, "shutdown_timeout = 7"))
    assert(app_mod.reload("spec"))
    assert.equal(7, sluice.shutdown_timeout())
    write(dir .. "/sluice.lua", config(dir, 1))
    assert(app_mod.reload("spec"))
    assert.equal(before, sluice.shutdown_timeout())
  end)
end)
