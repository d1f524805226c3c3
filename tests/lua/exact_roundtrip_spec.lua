-- Exact numbers end to end (issue 16, "Done when"): 2^63-1, 2^64-1 and
-- 2^256-1, and the price 0.00001234, go from an upstream's JSON body through
-- a collector (decoded), out again in an HTTP JSON request body, into the
-- store (integer, uint256 and decimal columns), through /status (the
-- configuration view) and back, digit for digit.
local app_mod = require "sluice.app"
local http = require "sluice.http"
local json = require "sluice.json"
local log = require "sluice.log"
local server = require "sluice.server"
local files = require "support.files"
local wait_for = require("support.wait").wait_for

local I63 = "9223372036854775807"
local U64 = "18446744073709551615"
local U256 = "115792089237316195423570985008687907853269984665640564039457584007913129639935"
local PRICE = "0.00001234"

-- What the upstream sends: every value a JSON number, the price also as text.
local BODY = '{"i63":' .. I63 .. ',"u64":' .. U64 .. ',"u256":' .. U256
  .. ',"price":' .. PRICE .. ',"price_text":"' .. PRICE .. '"}'

local COLLECTOR = [[
local collector = require "sluice.collector"
return collector.define({
  name = "exact", interval = 3600, limiter = false, retry = { max_attempts = 1 },
  options = { expect = {} },
  tables = { exact = { columns = { id = "integer", i63 = "integer", u64 = "uint256",
    u256 = "uint256", price = "decimal", price_text = "decimal" }, key = { "id" } } },
  collect = function(self)
    local v = assert(self:get("/values"))
    -- out again, as a JSON request body
    assert(self:post("/echo", { json = v }))
    return { { id = 1, i63 = v.i63, u64 = v.u64, u256 = v.u256, price = v.price,
      price_text = v.price_text } }
  end,
})
]]

local CONFIG = [[
local json = require "sluice.json"
return {
  store = %q,
  admin = { port = 0 },
  collectors = {
    { file = "exact.lua", base_url = %q, expect = {
      i63 = 9223372036854775807LL, u64 = 18446744073709551615ULL,
      u256 = json.numeral(%q), price = json.numeral(%q) } },
  },
}
]]

describe("exact numbers end to end", function()
  local upstream, echoed, app

  setup(function()
    log.output("/dev/null")
    upstream = assert(server.listen({ port = 0 }))
    upstream:route("GET", "/values", function()
      return 200, BODY, { ["content-type"] = "application/json" }
    end)
    upstream:route("POST", "/echo", function(req)
      echoed = { body = req.body, value = assert(req:json()) }
      return 200, req.body, { ["content-type"] = "application/json" }
    end)
    local dir = files.tmpdir()
    files.write(dir .. "/exact.lua", COLLECTOR)
    files.write(dir .. "/sluice.lua", CONFIG:format(dir .. "/db.sqlite",
      "http://127.0.0.1:" .. upstream.port, U256, PRICE))
    app = app_mod.run(assert(loadfile(dir .. "/sluice.lua"))(), dir .. "/sluice.lua")
    wait_for("the first collection", function() return app.order[1]:stats().last_success ~= nil end)
  end)

  teardown(function()
    if app then
      for _, c in ipairs(app.order) do c:stop() end
      app.admin:close()
    end
    if upstream then upstream:close() end
    files.cleanup()
    log.output("-")
  end)

  it("decodes the upstream's body and sends it on in a request body, digit for digit", function()
    -- the price went through a double: the same number, in %.15g's spelling
    assert.equal('{"i63":' .. I63 .. ',"price":1.234e-05,"price_text":"0.00001234","u256":' .. U256
      .. ',"u64":' .. U64 .. '}', echoed.body)
    assert.equal(I63, json.int64_text(echoed.value.i63))
    assert.equal(U64, json.int64_text(echoed.value.u64))
    assert.equal(U256, json.numeral_text(echoed.value.u256))
  end)

  it("stores and reads back every digit", function()
    local rows = assert(app.store:select("exact"))
    assert.equal(1, #rows)
    local r = rows[1]
    assert.equal(I63, json.int64_text(r.i63))
    assert.equal(U64, r.u64)
    assert.equal(U256, r.u256)
    assert.equal(PRICE, r.price)      -- a JSON number 0.00001234
    assert.equal(PRICE, r.price_text) -- the exchange's text
    -- ordering and equality are by value inside SQL
    local q = assert(app.store:query("SELECT count(*) AS n FROM exact WHERE u256 > ? AND price = ?",
      U64, "0.000012340"))
    assert.equal(1, q[1].n)
  end)

  it("shows the configured values in /status and they come back exact", function()
    local res = assert(http.request({ url = "http://127.0.0.1:" .. app.admin.port .. "/status" }))
    assert.equal(200, res.status)
    local want = '"expect":{"i63":' .. I63 .. ',"price":' .. PRICE .. ',"u256":' .. U256
      .. ',"u64":' .. U64 .. '}'
    assert.truthy(res.body:find(want, 1, true), res.body)
    local body = assert(res:json())
    local e = body.config.collectors[1].expect
    assert.equal(I63, json.int64_text(e.i63))
    assert.equal(U64, json.int64_text(e.u64))
    assert.equal(U256, json.numeral_text(e.u256))
    assert.equal(PRICE, require("sluice.bignum").normalize(e.price))
  end)
end)
