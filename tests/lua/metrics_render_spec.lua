-- sluice.metrics' rendering keeps each family's sorted order between
-- renders while its label texts stay the same: series that come and go
-- (one replaced by another, the count unchanged), a redaction that makes
-- two label texts the same, and escaped values shared by the families of
-- one render, all still render sorted and exact.
local metrics = require "sluice.metrics"
local registry = require "sluice.metrics.registry"
local redact = require "sluice.redact"

local function lines_of(text, prefix)
  local got = {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, #prefix) == prefix then got[#got + 1] = line end
  end
  return got
end

describe("sluice.metrics render order", function()
  it("sorts a source's series afresh when its set changes, the count the same", function()
    local names = { "b", "a", "c" }
    local src = registry.add_source({
      { "gauge", "test_order_up", "Up.", { "thing" } },
      { "counter", "test_order_runs_total", "Runs.", { "thing", "status" } },
    }, function(f)
      for i, n in ipairs(names) do
        f.test_order_up:set(i, n)
        f.test_order_runs_total:inc(i, n, "ok")
        f.test_order_runs_total:inc(0, n, "error")
      end
    end)
    finally(function() registry.remove_source(src) end)
    assert.same({ 'test_order_up{thing="a"} 2', 'test_order_up{thing="b"} 1', 'test_order_up{thing="c"} 3' },
      lines_of(metrics.render(), "test_order_up{"))
    -- "b" replaced by "d": three series again, one of them new
    names = { "d", "a", "c" }
    assert.same({ 'test_order_up{thing="a"} 2', 'test_order_up{thing="c"} 3', 'test_order_up{thing="d"} 1' },
      lines_of(metrics.render(), "test_order_up{"))
    assert.same({
      'test_order_runs_total{thing="a",status="error"} 0', 'test_order_runs_total{thing="a",status="ok"} 2',
      'test_order_runs_total{thing="c",status="error"} 0', 'test_order_runs_total{thing="c",status="ok"} 3',
      'test_order_runs_total{thing="d",status="error"} 0', 'test_order_runs_total{thing="d",status="ok"} 1',
    }, lines_of(metrics.render(), "test_order_runs_total{"))
    -- one fewer, then back
    names = { "c", "a" }
    assert.same({ 'test_order_up{thing="a"} 2', 'test_order_up{thing="c"} 1' },
      lines_of(metrics.render(), "test_order_up{"))
    names = { "e", "a", "c" }
    assert.same({ 'test_order_up{thing="a"} 2', 'test_order_up{thing="c"} 3', 'test_order_up{thing="e"} 1' },
      lines_of(metrics.render(), "test_order_up{"))
  end)

  it("sorts a registered metric after a series is removed and another added", function()
    local g = metrics.gauge("test_order_plain", "Plain.", { labels = { "k" } })
    finally(function() metrics.unregister("test_order_plain") end)
    g:set(1, "m")
    g:set(2, "z")
    assert.same({ 'test_order_plain{k="m"} 1', 'test_order_plain{k="z"} 2' }, lines_of(g:render(), "test_order_plain{"))
    g:remove("z")
    g:set(3, "b")
    assert.same({ 'test_order_plain{k="b"} 3', 'test_order_plain{k="m"} 1' }, lines_of(g:render(), "test_order_plain{"))
    assert.same({ 'test_order_plain{k="b"} 3', 'test_order_plain{k="m"} 1' },
      lines_of(metrics.render(), "test_order_plain{"))
  end)

  it("renders two series whose label texts redaction made the same, and escapes a value once per render", function()
    redact.register("metrics-render-secret-1")
    redact.register("metrics-render-secret-2")
    local src = registry.add_source({
      { "gauge", "test_order_secret", "Secrets.", { "v" } },
      { "gauge", "test_order_escaped", "Escaped.", { "v" } },
    }, function(f)
      f.test_order_secret:set(1, "metrics-render-secret-1")
      f.test_order_secret:set(1, "metrics-render-secret-2")
      f.test_order_secret:set(0, "plain")
      f.test_order_escaped:set(5, 'a"b\\c\nd')
      f.test_order_secret:set(7, 'a"b\\c\nd')
    end)
    finally(function() registry.remove_source(src) end)
    for _ = 1, 2 do
      local text = metrics.render()
      assert.same({ 'test_order_secret{v="<redacted>"} 1', 'test_order_secret{v="<redacted>"} 1',
        'test_order_secret{v="a\\"b\\\\c\\nd"} 7', 'test_order_secret{v="plain"} 0' },
        lines_of(text, "test_order_secret{"))
      assert.same({ 'test_order_escaped{v="a\\"b\\\\c\\nd"} 5' }, lines_of(text, "test_order_escaped{"))
    end
  end)

  it("spells small integers, negative zero, large and fractional values as before", function()
    local g = metrics.gauge("test_order_values", "Values.", { labels = { "k" } })
    finally(function() metrics.unregister("test_order_values") end)
    g:set(0, "a")
    g:set(-0.0, "b")
    g:set(4095, "c")
    g:set(4096, "d")
    g:set(1.5, "e")
    g:set(-3, "f")
    g:set(1 / 0, "g")
    g:set(0 / 0, "h")
    assert.same({ 'test_order_values{k="a"} 0', 'test_order_values{k="b"} -0', 'test_order_values{k="c"} 4095',
      'test_order_values{k="d"} 4096', 'test_order_values{k="e"} 1.5', 'test_order_values{k="f"} -3',
      'test_order_values{k="g"} +Inf', 'test_order_values{k="h"} NaN' }, lines_of(g:render(), "test_order_values{"))
  end)
end)
