-- sluice.admin's server limits and the shapes of its error and empty
-- replies, on an app with no collectors.
local http = require "sluice.http"
local log = require "sluice.log"
local admin = require "sluice.admin"

describe("admin API limits", function()
  local srv, base

  setup(function()
    log.output("/dev/null")
    srv = assert(admin.start({ order = {}, collectors = {} }, { port = 0, token = "t0ken" }))
    base = "http://127.0.0.1:" .. srv.port
  end)

  teardown(function()
    srv:close()
  end)

  local function post(path, body)
    return assert(http.post(base .. path, { body = body,
      headers = { Authorization = "Bearer t0ken", ["Content-Type"] = "application/json" } }))
  end

  -- with a token configured, /logs needs it too
  local function get(path)
    return assert(http.get(base .. path, { headers = { Authorization = "Bearer t0ken" } }))
  end

  it("takes request bodies up to 16 KiB and answers 413 beyond, without a handler", function()
    -- 16 KiB reaches the handler, which finds no such collector
    local name = string.rep("n", 16 * 1024 - #'{"collector":""}')
    local res = post("/collect", '{"collector":"' .. name .. '"}')
    assert.equal(404, res.status)
    assert.equal("no collector named '" .. name .. "'", res:json().error)
    res = post("/collect", '{"collector":"' .. name .. 'x"}')
    assert.equal(413, res.status)
    assert.equal(16 * 1024, admin.LIMITS.max_body)
  end)

  it("GET /logs with nothing to show is an empty JSON array", function()
    local res = get("/logs?level=critical&since=9999")
    assert.same({ 200, "[]", "application/json" },
      { res.status, res.body, res.headers["content-type"] })
  end)

  it("echoes invalid UTF-8 from the request as U+FFFD in its JSON errors", function()
    local res = get("/logs?level=%FFx%C3")
    assert.equal(400, res.status)
    assert.equal('{"error":"unknown level \'\239\191\189x\239\191\189\'"}', res.body)
  end)
end)
