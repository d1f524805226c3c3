-- sluice.repl: the pretty printer, incomplete-chunk detection, evaluation
-- in a session, and the helpers over real breakers and limiters.
local sluice = require "sluice"
local repl = require "sluice.repl"
local breaker = require "sluice.breaker"
local limiter = require "sluice.limiter"
local cjson = require "cjson"

local T0 = 1763115825 -- 2025-11-14T10:23:45Z

local function eval(session, chunk)
  return repl.eval(session, chunk)
end

describe("sluice.repl", function()
  describe("pretty", function()
    local pretty = repl.pretty

    it("prints scalars as Lua would read them", function()
      assert.equal("nil", pretty(nil))
      assert.equal("true", pretty(true))
      assert.equal("42", pretty(42))
      assert.equal("-7", pretty(-7))
      assert.equal("0.5", pretty(0.5))
      assert.equal("1e+20", pretty(1e20))
      assert.equal("inf", pretty(math.huge))
      assert.equal("-inf", pretty(-math.huge))
      assert.equal("nan", pretty(0 / 0))
      assert.equal('"it\'s \\"q\\"\\n\\ttab\\\\ \\000"', pretty("it's \"q\"\n\ttab\\ \0"))
    end)

    it("prints flat tables on one line, sequence first, then keys sorted", function()
      assert.equal("{}", pretty({}))
      assert.equal("{ 1, 2, 3 }", pretty({ 1, 2, 3 }))
      assert.equal('{ 1, "two", a = 1, b = false, z = "z" }',
        pretty({ z = "z", 1, "two", b = false, a = 1 }))
      assert.equal('{ [0] = "zero", [2.5] = 1, ["a key"] = 2, ["end"] = 3, x = 1, [true] = 4 }',
        pretty({ [2.5] = 1, x = 1, ["a key"] = 2, ["end"] = 3, [true] = 4, [0] = "zero" }))
      -- a hole ends the sequence part; the rest are keys
      assert.equal("{ 1, [3] = 3 }", pretty({ 1, nil, 3 }))
    end)

    it("indents nested tables two spaces a level", function()
      assert.equal(table.concat({
        "{",
        "  a = {",
        "    b = { 1, 2 },",
        "    c = {}",
        "  },",
        '  name = "x"',
        "}",
      }, "\n"), pretty({ name = "x", a = { b = { 1, 2 }, c = {} } }))
    end)

    it("breaks a long flat table into lines", function()
      local t = {}
      for i = 1, 30 do t[i] = i * 1000 end
      local s = pretty(t)
      assert.equal("{\n  1000,\n  2000,", s:sub(1, 17))
      assert.equal("  30000\n}", s:sub(-9))
    end)

    it("marks cycles and stops at the depth limit", function()
      local t = { name = "loop" }
      t.self = t
      assert.equal('{ name = "loop", self = <cycle> }', pretty(t))
      local deep = { a = { b = { c = { d = 1 } } } }
      assert.equal("{\n  a = { b = {...} }\n}", pretty(deep, { depth = 2 }))
      -- a table seen twice but not in a cycle prints twice
      local shared = { 1 }
      assert.equal("{\n  { 1 },\n  { 1 }\n}", pretty({ shared, shared }))
    end)

    it("caps the items of a huge table", function()
      local t = {}
      for i = 1, 10 do t[i] = i end
      assert.equal("{ 1, 2, 3, ... (7 more) }", pretty(t, { max_items = 3 }))
    end)

    it("uses __tostring when a value has one", function()
      assert.equal("hello", pretty(repl.text("hello")))
      local cb = breaker.new({ name = "repl_tostring" })
      assert.equal(tostring(cb), pretty(cb))
    end)
  end)

  describe("incomplete", function()
    it("is true exactly when more input could finish the chunk", function()
      local function more(chunk)
        local fn, err, incomplete = repl.compile(chunk)
        assert.is_nil(fn)
        assert.is_string(err)
        return incomplete
      end
      assert.is_true(more("for i = 1, 3 do"))
      assert.is_true(more("function f()"))
      assert.is_true(more("t = {"))
      assert.is_true(more("f("))
      assert.is_true(more("s = [[long"))
      assert.is_true(more("x ="))
      assert.is_false(more("x = = 1"))
      assert.is_false(more("end"))
      assert.is_false(more('s = "unterminated'))
      assert.is_true(repl.incomplete("repl:1: 'end' expected near '<eof>'"))
      assert.is_false(repl.incomplete("repl:1: '<eof>' expected near 'end'"))
    end)

    it("tries `return chunk` first", function()
      assert.same({ 3 }, { repl.compile("1 + 2")() })
      assert.same({}, { repl.compile("local x = 1")() })
    end)
  end)

  describe("eval", function()
    it("shows results, multiple ones tab-separated", function()
      local s = repl.session()
      assert.same({ ok = true, incomplete = false, output = "2\n" }, eval(s, "1 + 1"))
      assert.same({ ok = true, incomplete = false, output = '1\t"a"\tnil\n' }, eval(s, '1, "a", nil'))
      assert.same({ ok = true, incomplete = false, output = "" }, eval(s, "local y = 1"))
    end)

    it("keeps globals in the session, not in _G", function()
      local s = repl.session()
      eval(s, "repl_spec_global = 7")
      assert.same({ ok = true, incomplete = false, output = "14\n" }, eval(s, "repl_spec_global * 2"))
      assert.is_nil(rawget(_G, "repl_spec_global"))
      assert.equal("nil\n", eval(repl.session(), "repl_spec_global").output)
    end)

    it("sends print to the output", function()
      local s = repl.session()
      assert.same({ ok = true, incomplete = false, output = "a\t1\nb\n" },
        eval(s, "print('a', 1) print('b')"))
    end)

    it("reports errors and goes on", function()
      local s = repl.session()
      assert.same({ ok = false, incomplete = false, output = "boom\n" }, eval(s, "error('boom', 0)"))
      assert.same({ ok = false, incomplete = false, output = "error: { code = 1 }\n" },
        eval(s, "error({ code = 1 })"))
      local r = eval(s, "x = = 1")
      assert.is_false(r.ok)
      assert.is_false(r.incomplete)
      assert.matches("^repl:1: unexpected symbol near '='\n$", r.output)
      assert.same({ ok = true, incomplete = false, output = "1\n" }, eval(s, "1"))
    end)

    it("says when a chunk is incomplete", function()
      local r = eval(repl.session(), "for i = 1, 2 do")
      assert.is_false(r.ok)
      assert.is_true(r.incomplete)
      assert.same({ ok = true, incomplete = false, output = "1\n2\n" },
        eval(repl.session(), "for i = 1, 2 do\nprint(i)\nend"))
    end)

    it("may yield", function()
      local t0 = sluice.now()
      assert.same({ ok = true, incomplete = false, output = '"slept"\n' },
        eval(repl.session(), "require('sluice').sleep(0.05) and 'slept'"))
      assert.is_true(sluice.now() - t0 >= 0.04)
    end)
  end)

  describe("_serve", function()
    it("answers one JSON line per request, one session per connection", function()
      local replies = {}
      local conn = { reply = function(_, ok, output, incomplete, frame)
        replies[#replies + 1] = { ok = ok, output = output, incomplete = incomplete, frame = frame }
        return true
      end }
      repl._serve(conn, cjson.encode({ chunk = "served = 20" }), true)
      repl._serve(conn, cjson.encode({ chunk = "served + 1" }), true)
      repl._serve(conn, "{not json", true)
      repl._serve(conn, "served", false)
      assert.equal(4, #replies)
      assert.same({ ok = true, incomplete = false, output = "21\n" }, cjson.decode(replies[2].frame))
      assert.equal("\n", replies[2].frame:sub(-1))
      assert.is_false(replies[3].ok)
      assert.matches("bad request", replies[3].output)
      assert.equal("20\n", replies[4].output)
    end)
  end)

  describe("helpers", function()
    local h = repl.helpers

    it("breakers() shows state, failures, next attempt and health", function()
      local clock = { t = T0 }
      local cb = breaker.new({ name = "repl_api", clock = function() return clock.t end })
      assert.same({ state = "closed", failures = 0, health_score = 1 }, h.breakers().repl_api)
      for _ = 1, 2 do cb:failure(cb:allow()) end
      assert.same({ state = "closed", failures = 2, health_score = 0 }, h.breakers().repl_api)
      assert.equal("breaker 'repl_api' is open", tostring(h.trip("repl_api")))
      assert.same({ state = "open", failures = 2, health_score = 0,
        next_attempt = "2025-11-14T10:28:45Z" }, h.breakers().repl_api)
      assert.equal("breaker 'repl_api' is closed", tostring(h.reset("repl_api")))
      assert.equal("closed", cb:state())
      assert.has_error(function() h.trip("repl_nope") end, "trip: no breaker named 'repl_nope'")
    end)

    it("limiters() shows rate, requests, violations and waiting", function()
      local lim = limiter.new({ name = "repl_quota", rate = 20 })
      lim:wait("/x")
      assert.same({ rate = 20, total_requests = 1, violations = 0, waiting = 0 },
        h.limiters().repl_quota)
    end)

    it("collectors() and collect() say when no configuration runs", function()
      assert.matches("no configuration is running", tostring(h.collectors()))
      assert.has_error(function() h.collect("x") end)
    end)

    it("backfills() says when there are none", function()
      assert.equal("no backfills", tostring(h.backfills()))
    end)

    it("help() lists every helper", function()
      local text = tostring(h.help())
      for _, name in ipairs({ "breakers()", "limiters()", "collectors()", "backfills()",
        "trip(name)", "reset(name)", "collect(name)", "reload()", "help()" }) do
        assert.truthy(text:find(name, 1, true), name)
      end
    end)

    it("are in every session's environment", function()
      assert.equal("no backfills\n", eval(repl.session(), "backfills()").output)
    end)
  end)
end)
