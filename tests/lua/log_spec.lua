-- sluice.log: levels, fields, bound context, the ring of recent entries.
local log = require "sluice.log"
local cjson = require "cjson"

describe("sluice.log", function()
  local saved_level, saved_format

  before_each(function()
    saved_level, saved_format = log.level(), log.format()
    assert.is_true(log.output("/dev/null"))
    log.level("trace")
    log.format("json")
    log.ring_size(0) -- empties the ring
    log.ring_size(1000)
  end)

  after_each(function()
    log.level(saved_level)
    log.format(saved_format)
    log.output("-")
  end)

  it("keeps entries with level, message and fields sorted by key", function()
    log.info("fetched", { rows = 12, symbol = "BTCUSDT", ok = true, ratio = 0.25 })
    local lines = log.recent()
    assert.equal(1, #lines)
    local e = lines[1]
    assert.equal("info", e.level)
    assert.equal("fetched", e.msg)
    assert.equal(12, e.rows)
    assert.equal("BTCUSDT", e.symbol)
    assert.equal(true, e.ok)
    assert.equal(0.25, e.ratio)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", e.ts)
    local raw = require("sluice._log").recent(1)[1]
    assert.matches('^{"ts":"[^"]+","level":"info","msg":"fetched","ok":true,"ratio":0.25,"rows":12,"symbol":"BTCUSDT"}$', raw)
  end)

  it("makes a with-logger's functions on first use, once, and keeps its fields", function()
    local l = log.with({ collector = "c1" })
    -- nothing but its fields until used: a collector's logger costs two
    -- small tables (tests/bench/collectors.lua, part log)
    for _, k in ipairs({ "trace", "debug", "info", "warning", "warn", "error", "critical", "with" }) do
      assert.is_nil(rawget(l, k))
    end
    local info = l.info
    assert.equal("function", type(info))
    assert.equal(info, rawget(l, "info"))
    assert.equal(info, l.info)
    assert.equal(l.warning, l.warn)
    assert.is_nil(l.no_such_level)
    local child = l.with({ dataset = "d" })
    info("one", { n = 1 })
    child.warn("two")
    log.with({ a = 1 }).with({ b = 2 }).error("three", { a = 3 })
    local e = log.recent()
    assert.equal(3, #e)
    assert.same({ "info", "one", "c1", 1 }, { e[1].level, e[1].msg, e[1].collector, e[1].n })
    assert.same({ "warning", "two", "c1", "d" }, { e[2].level, e[2].msg, e[2].collector, e[2].dataset })
    assert.same({ "error", "three", 3, 2 }, { e[3].level, e[3].msg, e[3].a, e[3].b })
    assert.has_error(function() l.with("x") end,
      "sluice.log.with: bad argument #1 'fields' (table expected, got string)")
  end)

  it("escapes strings into valid JSON", function()
    log.warning('quote " backslash \\ newline \n tab \t bell \7', { k = "\1" })
    local raw = require("sluice._log").recent(1)[1]
    local e = cjson.decode(raw)
    assert.equal('quote " backslash \\ newline \n tab \t bell \7', e.msg)
    assert.equal("\1", e.k)
    assert.equal("warning", e.level)
  end)

  it("drops entries below the level; none silences everything", function()
    log.level("warning")
    log.info("hidden")
    log.debug("hidden")
    log.error("shown")
    log.level("none")
    log.critical("hidden too")
    local lines = log.recent()
    assert.equal(1, #lines)
    assert.equal("shown", lines[1].msg)
    assert.is_false(log.enabled("critical"))
  end)

  it("binds context fields with with(), and call fields override them", function()
    local clog = log.with({ collector = "binance", symbol = "ETHUSDT" })
    local nested = clog.with({ window = 3 })
    nested.info("window done", { symbol = "BTCUSDT" })
    local e = log.recent(1)[1]
    assert.equal("binance", e.collector)
    assert.equal("BTCUSDT", e.symbol)
    assert.equal(3, e.window)
  end)

  it("keeps only the newest entries in the ring", function()
    log.ring_size(3)
    for i = 1, 5 do log.info("n" .. i) end
    local lines = log.recent()
    assert.same({ "n3", "n4", "n5" }, { lines[1].msg, lines[2].msg, lines[3].msg })
    assert.equal(2, #log.recent(2))
    assert.equal("n5", log.recent(1)[1].msg)
  end)

  it("writes non-finite numbers as null and other values through tostring", function()
    local obj = setmetatable({}, { __tostring = function() return "obj!" end })
    log.info("odd", { inf = math.huge, nan = 0 / 0, obj = obj })
    local e = log.recent(1)[1]
    assert.equal(cjson.null, e.inf)
    assert.equal(cjson.null, e.nan)
    assert.equal("obj!", e.obj)
  end)

  it("rejects unknown levels and bad arguments", function()
    assert.has_error(function() log.level("loud") end)
    assert.has_error(function() log.info("x", "not a table") end,
      "sluice.log.info: bad argument #2 'fields' (table expected, got string)")
    assert.has_error(function() log.with(nil) end)
    assert.has_error(function() log.format("xml") end)
    local ok, err = log.output("/nonexistent/dir/file.log")
    assert.is_nil(ok)
    assert.matches("/nonexistent/dir/file.log: No such file or directory", err, 1, true)
  end)
end)
