-- sluice.options: the one option-table checker and its messages.
local options = require "sluice.options"

local function err_of(fn, ...)
  local ok, e = pcall(fn, ...)
  assert.is_false(ok)
  return (tostring(e):gsub("^[^:]+:%d+: ", ""))
end

local function check(opts, schema)
  return err_of(options.check, "m.f", opts, schema)
end

describe("sluice.options", function()
  describe("check", function()
    it("returns opts when they are fine, and accepts nil", function()
      local opts = { a = 1, b = "x" }
      assert.equal(opts, options.check("m.f", opts, { a = "number", b = "string|table", c = "any" }))
      assert.is_nil(options.check("m.f", nil, { a = "number" }))
    end)

    it("names an unknown option, the smallest when there are several", function()
      assert.equal("m.f: unknown option 'zz'", check({ zz = 1 }, { a = "number" }))
      assert.equal("m.f: unknown option 'b'", check({ d = 1, c = 1, b = 1, a = "not checked first" },
        { a = "number" }))
      assert.equal("m.f: unknown option '1'", check({ 5 }, { a = "number" }))
    end)

    it("tells a value of the wrong type by its type", function()
      assert.equal("m.f: option 'a' must be a number, got string", check({ a = "1" }, { a = "number" }))
      assert.equal("m.f: option 'a' must be a string or a table, got boolean",
        check({ a = true }, { a = "string|table" }))
      assert.equal("m.f: option 'a' must be an integer >= 0, got table",
        check({ a = {} }, { a = { type = "number", integer = true, min = 0 } }))
      assert.equal("m.f: option 'f' must be a function, got number", check({ f = 1 }, { f = "function" }))
      -- a spec with a number constraint is of type number unless it says otherwise
      assert.equal("m.f: option 'a' must be a number > 0, got string", check({ a = "x" }, { a = { gt = 0 } }))
    end)

    it("tells a value out of its constraints by its value", function()
      local function bound(v, spec) return check({ a = v }, { a = spec }) end
      assert.equal("m.f: option 'a' must be a number >= 0, got -1", bound(-1, { type = "number", min = 0 }))
      assert.equal("m.f: option 'a' must be a number > 0, got 0", bound(0, { type = "number", gt = 0 }))
      assert.equal("m.f: option 'a' must be a number <= 10, got 10.5", bound(10.5, { type = "number", max = 10 }))
      assert.equal("m.f: option 'a' must be a number < 1, got 1", bound(1, { type = "number", lt = 1 }))
      assert.equal("m.f: option 'a' must be a number in [0, 1), got 1",
        bound(1, { type = "number", min = 0, lt = 1 }))
      assert.equal("m.f: option 'a' must be a number in (0, 1], got 0",
        bound(0, { type = "number", gt = 0, max = 1 }))
      assert.equal("m.f: option 'a' must be a number in [0, 1], got nan",
        bound(0 / 0, { type = "number", min = 0, max = 1 }))
      assert.equal("m.f: option 'a' must be a finite number > 0, got inf",
        bound(math.huge, { type = "number", gt = 0, finite = true }))
      assert.equal("m.f: option 'a' must be a finite number, got -inf",
        bound(-math.huge, { type = "number", finite = true }))
      assert.equal("m.f: option 'a' must be an integer, got 1.5", bound(1.5, { type = "number", integer = true }))
      assert.equal("m.f: option 'a' must be an integer, got inf", bound(math.huge, { type = "number", integer = true }))
      assert.equal("m.f: option 'a' must be an integer in [1, 9007199254740992], got 0.30000000000000004",
        bound(0.1 + 0.2, { type = "number", integer = true, min = 1, max = 2 ^ 53 }))
      assert.equal("m.f: option 'a' must be 'reject' or 'ignore', got 'drop'",
        bound("drop", { one_of = { "reject", "ignore" } }))
      assert.equal("m.f: option 'a' must be 1, 2 or 'x', got 3", bound(3, { one_of = { 1, 2, "x" } }))
      assert.equal("m.f: option 'a' must be an even number, got 3",
        bound(3, { type = "number", check = function(v) return v % 2 == 0 end, what = "an even number" }))
      assert.equal("m.f: option 'a' must be a non-empty table, got {}",
        bound({}, { type = "table", check = function(t) return next(t) ~= nil end, what = "a non-empty table" }))
      assert.equal("m.f: option 'a' must be false or a table, got true",
        bound(true, { type = "boolean|table", check = function(v) return v ~= true end, what = "false or a table" }))
      assert.equal("m.f: option 'a' must be a short string, got 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...'",
        bound(string.rep("a", 100), { type = "string", check = function(s) return #s < 3 end, what = "a short string" }))
    end)

    it("reaches into sub-tables: fields, items and values, naming the path", function()
      local schema = {
        window = { type = "table", fields = { type = { one_of = { "count", "time" } }, size = "number" } },
        pools = { type = "table", items = { type = "table", fields = { rate = { type = "number", gt = 0 } } } },
        columns = { type = "table", values = { type = "string|table", fields = { type = "string" } } },
      }
      assert.equal("m.f: unknown option 'window.kind'", check({ window = { kind = 1 } }, schema))
      assert.equal("m.f: option 'window.type' must be 'count' or 'time', got 'size'",
        check({ window = { type = "size" } }, schema))
      assert.equal("m.f: option 'pools[2].rate' must be a number > 0, got 0",
        check({ pools = { { rate = 1 }, { rate = 0 }, { rate = -1 } } }, schema))
      assert.equal("m.f: unknown option 'pools[1].burst'", check({ pools = { { burst = 1 } } }, schema))
      assert.equal("m.f: option 'pools[1]' must be a table, got number", check({ pools = { 5 } }, schema))
      assert.equal("m.f: option 'columns.b' must be a string or a table, got number",
        check({ columns = { a = "text", b = 5 } }, schema))
      assert.equal("m.f: unknown option 'columns.price.finite'",
        check({ columns = { price = { type = "real", finite = true } } }, schema))
      assert.equal("m.f: option 'columns[1]' must be a string or a table, got boolean",
        check({ columns = { true } }, schema))
      assert.same({ window = { type = "count" } }, options.check("m.f", { window = { type = "count" } }, schema))
    end)

    it("names a missing required option after every other problem", function()
      local schema = { url = { type = "string", required = true }, n = "number" }
      assert.equal("m.f: option 'url' is required", check({}, schema))
      assert.equal("m.f: option 'url' is required", err_of(options.check, "m.f", nil, schema))
      assert.equal("m.f: option 'n' must be a number, got string", check({ n = "1" }, schema))
      assert.equal("m.f: option 'w.b' is required",
        check({ w = {} }, { w = { type = "table", fields = { a = "any", b = { required = true } } } }))
    end)

    it("raises on options that are not a table, and on a bad schema", function()
      assert.equal("m.f: options must be a table, got string", check("x", {}))
      assert.equal("sluice.options.check: bad argument #3 'schema' (table expected, got nil)",
        err_of(options.check, "m.f", {}))
      assert.equal("sluice.options.check: bad argument #1 'fname' (string expected, got nil)",
        err_of(options.check, nil, {}, {}))
      assert.equal("sluice.options: a schema names an unknown type 'nubmer' (in 'nubmer')",
        check({ a = 1 }, { a = "nubmer" }))
    end)

    it("blames the caller of the function that checks (level 2), or the level given", function()
      local function f(opts) options.check("m.f", opts, { a = "number" }) end
      local function g(opts) options.check("m.g", opts, { a = "number" }, 3) end
      local function h(opts) g(opts) end
      local line = debug.getinfo(1, "l").currentline
      local ok, e = pcall(function() f({ a = "x" }) end)
      assert.is_false(ok)
      assert.equal("options_spec.lua:" .. (line + 1) .. ": m.f: option 'a' must be a number, got string",
        e:match("[^/]*$"))
      ok, e = pcall(function() h({ b = 1 }) end)
      assert.is_false(ok)
      assert.equal("options_spec.lua:" .. (line + 5) .. ": m.g: unknown option 'b'", e:match("[^/]*$"))
    end)
  end)

  describe("problem", function()
    it("returns the path, the kind and the text instead of raising", function()
      local schema = { log = { type = "table", fields = { level = "string" } }, port = { type = "number", required = true } }
      assert.is_nil(options.problem({ port = 1, log = { level = "x" } }, schema))
      assert.same({ "log.lvl", "unknown", "unknown option" }, { options.problem({ log = { lvl = 1 } }, schema) })
      assert.same({ "log.level", "invalid", "must be a string, got number" },
        { options.problem({ port = 1, log = { level = 1 } }, schema) })
      assert.same({ "port", "required", "is required" }, { options.problem(nil, schema) })
    end)
  end)

  describe("describe and value", function()
    it("say what a spec accepts and how a value is written", function()
      assert.equal("a number in [0, 1)", options.describe({ type = "number", min = 0, lt = 1 }))
      assert.equal("a string or a table", options.describe("string|table"))
      assert.equal("a value", options.describe("any"))
      assert.equal("an integer >= 0 or a boolean", options.describe({ type = "number|boolean", integer = true, min = 0 }))
      assert.equal("0.1", options.value(0.1))
      assert.equal("-0", options.value(-0.0))
      assert.equal("nan", options.value(0 / 0))
      assert.equal("'x'", options.value("x"))
      assert.equal("{}", options.value({}))
      assert.equal("table", options.value({ 1 }))
      assert.equal("function", options.value(print))
      assert.equal("nil", options.value(nil))
    end)
  end)

  it("merge layers one table over another without changing either", function()
    local base, over = { a = 1, b = 2 }, { b = 3, c = 4 }
    assert.same({ a = 1, b = 3, c = 4 }, options.merge(base, over))
    assert.same({ { a = 1, b = 2 }, { b = 3, c = 4 } }, { base, over })
    assert.same({ a = 1, b = 2 }, options.merge(base, nil))
    assert.same({}, options.merge(nil, nil))
    assert.are_not.equal(base, options.merge(base))
  end)
end)
