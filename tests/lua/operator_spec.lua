-- sluice.operator: the views and operations the admin API and the REPL
-- share, and their failure convention (nil, message, kind), on an app built
-- from a temp configuration (an in-memory store; collectors that do no HTTP).
local log = require "sluice.log"
local app_mod = require "sluice.app"
local breaker = require "sluice.breaker"
local operator = require "sluice.operator"
local files = require "support.files"

local NO_APP = "no configuration is running (collectors come from `sluice run CONFIG.lua`)"

local FEED = [[
local collector = require "sluice.collector"
return collector.define({
  name = %q, interval = 3600, limiter = false, retry = false,
  tables = { %s = { columns = { id = "integer" }, key = { "id" } } },
  collect = function() %s end,
})
]]

local write = files.write

describe("sluice.operator", function()
  local dir, app, ops

  setup(function()
    log.output("/dev/null")
    dir = files.tmpdir()
    write(dir .. "/feed.lua", FEED:format("feed", "feed_rows", "return { feed_rows = { { id = 1 } } }"))
    write(dir .. "/broken.lua", FEED:format("broken", "broken_rows", "error('no data', 0)"))
    write(dir .. "/off.lua", FEED:format("off", "off_rows", "return { off_rows = { { id = 7 } } }"))
    write(dir .. "/sluice.lua", [[
return { store = ":memory:", name = "opspec", collectors = {
  { file = "feed.lua" }, { file = "broken.lua" }, { file = "off.lua", enabled = false } } }
]])
    local file = dir .. "/sluice.lua"
    app = app_mod.build(assert(loadfile(file))(), file, { env = {} })
    ops = operator.new({ current = function() return app end })
  end)

  teardown(function()
    app.store:close()
    files.cleanup()
    log.output("-")
  end)

  it("new() needs a function giving the app; reload, when given, is a function", function()
    assert.has_error(function() operator.new() end,
      "sluice.operator.new: bad argument #1 (table with a function 'current' expected)")
    assert.has_error(function() operator.new({ current = app }) end,
      "sluice.operator.new: bad argument #1 (table with a function 'current' expected)")
    assert.has_error(function() operator.new({ current = function() end, reload = true }) end,
      "sluice.operator.new: option 'reload' must be a function, got boolean")
  end)

  it("without a running configuration, the app's views and operations are unavailable", function()
    local none = operator.new({ current = function() return nil end })
    assert.same({ nil, NO_APP, "unavailable" }, { none:collectors_brief() })
    assert.same({ nil, NO_APP, "unavailable" }, { none:collect("feed") })
    assert.same({ nil, NO_APP, "unavailable" }, { none:start_backfill({}) })
    assert.same({ nil, "no configuration is running", "refused" }, { none:reload("spec") })
  end)

  it("breaker(name, action) opens, closes and resets; bad input is nil, message, kind", function()
    assert.equal("open", ops:breaker("feed", "open").state)
    assert.equal("open", breaker.get("feed"):state())
    assert.equal("closed", ops:breaker("feed", "close").state)
    ops:breaker("feed", "open")
    assert.equal("closed", ops:breaker("feed", "reset").state)
    assert.same({ nil, "breaker name expected, got nil", "invalid" }, { ops:breaker(nil, "open") })
    assert.same({ nil, "no breaker named 'nope'", "not_found" }, { ops:breaker("nope", "open") })
    assert.same({ nil, "unknown action 'shut' (open, close, reset)", "not_found" }, { ops:breaker("feed", "shut") })
    assert.equal("closed", breaker.get("feed"):state())
  end)

  it("collect(name) runs one collection: its run, failed or not; refuses a disabled collector", function()
    assert.same({ collector = "feed", ok = true, records = 1 }, ops:collect("feed"))
    assert.same({ collector = "broken", ok = false, error = "no data" }, ops:collect("broken"))
    assert.same({ nil, "no collector named 'nope'", "not_found" }, { ops:collect("nope") })
    assert.same({ nil, "no collector named 'nil'", "not_found" }, { ops:collect(nil) })
    assert.same({ nil, "collector 'off' is disabled", "disabled" }, { ops:collect("off") })
    assert.same({ collector = "off", ok = true, records = 1 }, ops:collect("off", { run_disabled = true }))
  end)

  it("health() says why it is degraded; status() and performance() add up the collectors", function()
    ops:collect("broken")
    local body, up = ops:health()
    -- feed is healthy: one collector failing degrades the process, it is not down
    assert.is_true(up)
    assert.equal("degraded", body.status)
    assert.equal("opspec", body.service)
    assert.is_true(body.database_connected)
    -- the failed collections of every collector: broken's (this one and
    -- any an earlier test made)
    assert.equal(app.collectors.broken:counters().collections_failed, body.collection_errors)
    assert.same({ 0, 0 }, { app.collectors.feed:counters().collections_failed,
      app.collectors.off:counters().collections_failed })
    assert.matches("^broken is degraded: the last collection failed: no data$", body.reasons[1])
    assert.equal(1, #body.reasons)
    local st = ops:status()
    assert.same({ "broken", "feed", "off" }, (function()
      local names = {}
      for n in pairs(st.collectors) do names[#names + 1] = n end
      table.sort(names)
      return names
    end)())
    assert.equal("opspec", st.config.name)
    local perf = ops:performance()
    assert.equal(100, perf.success_rate) -- no HTTP requests made
    assert.is_number(perf.memory_usage_mb)
  end)

  it("logs{level, limit, since} filters the ring; a bad level or limit is invalid", function()
    log.level("info")
    log.warning("operator spec one")
    log.warning("operator spec two")
    local out = ops:logs({ level = "warning", limit = "1" })
    assert.equal(1, #out)
    assert.equal("operator spec two", out[1].msg)
    assert.same({ nil, "unknown level 'loud'", "invalid" }, { ops:logs({ level = "loud" }) })
    assert.same({ nil, "limit must be a number >= 0", "invalid" }, { ops:logs({ limit = "-1" }) })
    assert.same({ nil, "limit must be a number >= 0", "invalid" }, { ops:logs({ limit = "x" }) })
  end)

  it("start_backfill(request) checks the request; backfill(id) and cancel_backfill(id) name unknown ids", function()
    assert.same({ nil, "unknown field 'now'", "invalid" }, { ops:start_backfill({ now = true }) })
    assert.same({ nil, "field 'collector' must be a string", "invalid" }, { ops:start_backfill({ collector = 1 }) })
    assert.same({ nil, "no collector named 'nope'", "not_found" }, { ops:start_backfill({ collector = "nope" }) })
    assert.same({ nil, "no collector here can backfill", "invalid" }, { ops:start_backfill({}) })
    assert.same({ nil, "field 'symbols' must be a list", "invalid" },
      { ops:start_backfill({ collector = "feed", symbols = "BTC" }) })
    assert.same({ nil, "field 'force' must be true or false", "invalid" },
      { ops:start_backfill({ collector = "feed", force = 1 }) })
    assert.same({ nil, "collector 'feed' has no backfill function", "invalid" },
      { ops:start_backfill({ collector = "feed" }) })
    assert.same({ nil, "no such backfill 'x'", "not_found" }, { ops:backfill("x") })
    assert.same({ nil, "no such backfill 'x'", "not_found" }, { ops:cancel_backfill("x") })
    assert.same({}, ops:backfills())
  end)

  it("reload(by) calls the reload it was given, with by; a refusal is kind 'refused'", function()
    local seen = {}
    local function reload(by)
      seen[#seen + 1] = by
      if by == "no" then return nil, "sluice.lua:1: refused" end
      return true
    end
    local r = operator.new({ current = function() return app end, reload = reload })
    assert.same({ true }, { r:reload("yes") })
    assert.same({ nil, "sluice.lua:1: refused", "refused" }, { r:reload("no") })
    assert.same({ "yes", "no" }, seen)
  end)

  it("iso(epoch) is whole seconds in UTC", function()
    assert.equal("2025-11-14T10:23:45Z", operator.iso(1763115825.9))
    assert.is_nil(operator.iso(nil))
  end)
end)
