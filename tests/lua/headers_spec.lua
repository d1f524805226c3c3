-- sluice.headers: case-insensitive header tables that keep their names.
local headers = require "sluice.headers"

local function entries(h)
  local out = {}
  for k, v in pairs(h) do out[#out + 1] = k .. "=" .. tostring(v) end
  table.sort(out)
  return out
end

describe("sluice.headers", function()
  it("reads an entry whatever the case of the name", function()
    local h = headers.new({ ["Content-Type"] = "text/plain", ["x-multi"] = { "one", "two" } })
    assert.equal("text/plain", h["content-type"])
    assert.equal("text/plain", h["CONTENT-TYPE"])
    assert.equal("text/plain", h["Content-Type"])
    assert.same({ "one", "two" }, h["X-Multi"])
    assert.is_nil(h["content-length"])
    assert.is_nil(h[1])
  end)

  it("sets and removes an entry whatever the case, keeping the name it has", function()
    local h = headers.new({ ["Content-Type"] = "text/plain" })
    h["content-type"] = "application/json"
    assert.same({ "Content-Type=application/json" }, entries(h))
    h["X-New"] = "1"
    h["x-new"] = "2"
    assert.same({ "Content-Type=application/json", "X-New=2" }, entries(h))
    h["X-NEW"] = nil
    assert.same({ "Content-Type=application/json" }, entries(h))
    assert.is_nil(h["x-new"])
    -- removed under its own name, set again under another: the new name
    h["Content-Type"] = nil
    assert.is_nil(h["content-type"])
    h["CONTENT-type"] = "a/b"
    assert.same({ "CONTENT-type=a/b" }, entries(h))
    assert.equal("a/b", h["content-type"])
    assert.is_true(headers.is(h))
    assert.is_false(headers.is({}))
  end)

  it("copies the table it is given and starts empty without one", function()
    local t = { Accept = "*/*" }
    local h = headers.new(t)
    h.accept = "text/html"
    assert.equal("*/*", t.Accept)
    assert.is_nil(rawget(t, "accept"))
    assert.same({}, entries(headers.new()))
  end)

  it("raises on misuse", function()
    assert.has_error(function() headers.new("x") end, "sluice.headers.new: bad argument #1 (table expected, got string)")
    assert.has_error(function() headers.new({ [1] = "x" }) end,
      "sluice.headers.new: a header name must be a string, got number")
    local ok, e = pcall(headers.new, { Accept = "a", accept = "b" })
    assert.is_false(ok)
    assert.truthy(e == "sluice.headers.new: 'Accept' and 'accept' are the same header"
      or e == "sluice.headers.new: 'accept' and 'Accept' are the same header", e)
    local h = headers.new()
    assert.has_error(function() h[1] = "x" end, "sluice.headers: a header name must be a string, got number")
  end)
end)
