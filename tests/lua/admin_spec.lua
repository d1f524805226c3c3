-- sluice.admin and hot reload: a configuration with a collector file in a
-- temp directory, the mock Binance, and the admin API on a free port.
local sluice = require "sluice"
local http = require "sluice.http"
local log = require "sluice.log"
local app_mod = require "sluice.app"
local breaker = require "sluice.breaker"

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local COLLECTOR = [[
local collector = require "sluice.collector"
return collector.define({
  name = "ticks", interval = 3600, limiter = false,
  retry = { max_attempts = 1 },
  tables = { ticks = { columns = { id = "integer", tag = "text" }, key = { "id" } } },
  collect = function(self)
    local data = assert(self:get("/api/v3/time"))
    return { { id = 1, tag = "%s" } }
  end,
})
]]

local CONFIG = [[
local collector = require "sluice.collector"
return {
  store = %q,
  admin = { port = 0, token = collector.env("SLUICE_TEST_ADMIN_TOKEN", "t0ken") },
  collectors = {
    { file = "ticks.lua", base_url = %q },
    { use = "binance_klines", base_url = %q, symbols = { "BTCUSDT" }, limit = 5,
      limiter = { rate = 100, max_rate = 1000 } },
  },
}
]]

describe("admin API and reload", function()
  local dir, app, mock, base

  local function call(method, path, body, token)
    local headers = {}
    if token ~= false then headers.Authorization = "Bearer " .. (token or "t0ken") end
    local res = assert(http.request({ method = method, url = base .. path, headers = headers,
      body = body and (type(body) == "string" and body or require("cjson").encode(body)) or nil }))
    return res.status, res:json(), res
  end

  setup(function()
    log.output("/dev/null")
    local p = io.popen("mktemp -d")
    dir = p:read("*l")
    p:close()
    mock = require("sluice.mock.binance").start({})
    write(dir .. "/ticks.lua", COLLECTOR:format("v1"))
    write(dir .. "/sluice.lua", CONFIG:format(dir .. "/db.sqlite", mock.url, mock.url))
    local chunk = assert(loadfile(dir .. "/sluice.lua"))
    app = app_mod.run(chunk(), dir .. "/sluice.lua")
    base = "http://127.0.0.1:" .. app.admin.port
    sluice.sleep(0.3) -- first collections
  end)

  teardown(function()
    for _, c in ipairs(app.order) do c:stop() end
    app.admin:close()
    mock:stop()
    os.execute("rm -rf " .. dir)
    log.output("-")
  end)

  it("GET /health has the reference shape", function()
    local status, body = call("GET", "/health", nil, false)
    assert.equal(200, status)
    assert.equal("healthy", body.status)
    assert.is_true(body.database_connected)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", body.timestamp)
    assert.is_number(body.uptime_seconds)
    assert.equal(0, body.collection_errors)
    assert.is_string(body.last_successful_collection)
  end)

  it("GET /health says 503 with the reason when a breaker is open", function()
    call("POST", "/breakers/ticks/open")
    local status, body = call("GET", "/health", nil, false)
    assert.equal(503, status)
    assert.equal("unhealthy", body.status)
    assert.same({ "ticks is circuit_open" }, body.reasons)
    call("POST", "/breakers/ticks/close")
    assert.equal(200, (call("GET", "/health", nil, false)))
  end)

  it("GET /status lists collectors and redacts secrets", function()
    local status, body, res = call("GET", "/status", nil, false)
    assert.equal(200, status)
    assert.equal("ticks", body.collectors.ticks.collector_name)
    assert.equal("<secret>", body.config.admin.token)
    assert.is_nil(res.body:find("t0ken", 1, true))
  end)

  it("GET /circuit-breaker-status, /limiters, /data-quality, /performance", function()
    local _, cbs = call("GET", "/circuit-breaker-status", nil, false)
    assert.equal("closed", cbs.ticks.state)
    assert.equal("ticks", cbs.ticks.collector_name)
    local _, lims = call("GET", "/limiters", nil, false)
    assert.equal("binance_klines", lims.binance_klines.limiter_name)
    local _, q = call("GET", "/data-quality", nil, false)
    assert.equal(1, q.ticks.valid_records >= 1 and 1 or 0)
    assert.equal(100, q.ticks.data_quality_score)
    local _, perf = call("GET", "/performance", nil, false)
    for _, k in ipairs({ "avg_collection_time", "success_rate", "error_rate", "database_latency",
      "api_latency", "memory_usage_mb", "cpu_usage_percent" }) do
      assert.is_number(perf[k], k)
    end
    assert.equal(100, perf.success_rate)
  end)

  it("GET /logs filters by level and limit", function()
    log.level("info")
    log.warning("admin spec marker", { n = 1 })
    local _, entries = call("GET", "/logs?level=warning&limit=1", nil, false)
    assert.equal(1, #entries)
    assert.equal("admin spec marker", entries[1].msg)
    assert.equal(400, (call("GET", "/logs?level=loud", nil, false)))
  end)

  it("requires the token on mutating endpoints, with 401", function()
    assert.equal(401, (call("POST", "/collect", { collector = "ticks" }, false)))
    assert.equal(401, (call("POST", "/collect", { collector = "ticks" }, "wrong")))
    assert.equal(401, (call("POST", "/breakers/ticks/open", nil, "t0ke")))
    assert.equal("closed", breaker.get("ticks"):state()) -- nothing applied
  end)

  it("POST /collect runs one collection now; bad input is a 400 naming it", function()
    local status, body = call("POST", "/collect", { collector = "ticks" })
    assert.equal(200, status)
    assert.same({ collector = "ticks", status = "ok", records = 1 }, body)
    local s2, b2 = call("POST", "/collect", "{not json")
    assert.equal(400, s2)
    assert.matches("JSON", b2.error)
    local s3, b3 = call("POST", "/collect", { collector = "ticks", now = true })
    assert.equal(400, s3)
    assert.equal("unknown field 'now'", b3.error)
    assert.equal(404, (call("POST", "/collect", { collector = "nope" })))
  end)

  it("POST /backfill starts a job; GET and DELETE /backfill/{id}", function()
    local status, body = call("POST", "/backfill", { collector = "binance_klines",
      start_date = "2024-01-01", end_date = "2024-01-02" })
    assert.equal(202, status)
    assert.equal("started", body.status)
    assert.equal("2024-01-01T00:00:00Z", body.start_date)
    assert.equal("2024-01-02T00:00:00Z", body.end_date)
    assert.equal(1440, body.estimated_records)
    local id = body.task_id
    local st
    for _ = 1, 100 do
      local _, b = call("GET", "/backfill/" .. id, nil, false)
      st = b
      if st.state ~= "running" then break end
      sluice.sleep(0.05)
    end
    assert.equal("done", st.state)
    assert.equal(1440, st.rows)
    assert.equal(200, (call("DELETE", "/backfill/" .. id)))
    assert.equal(404, (call("GET", "/backfill/nope", nil, false)))
    assert.equal(400, (call("POST", "/backfill", { collector = "binance_klines", symbols = "BTC" })))
  end)

  it("POST /breakers/{name}/open|close|reset", function()
    local status, body = call("POST", "/breakers/ticks/open")
    assert.equal(200, status)
    assert.equal("open", body.state)
    assert.equal("closed", select(2, call("POST", "/breakers/ticks/reset")).state)
    assert.equal(404, (call("POST", "/breakers/nope/open")))
  end)

  it("reloads a changed collector script, keeping breaker state", function()
    breaker.get("ticks"):force_open()
    write(dir .. "/ticks.lua", COLLECTOR:format("v2"))
    local status, body = call("POST", "/reload")
    assert.equal(200, status)
    assert.equal("reloaded", body.status)
    assert.equal("open", breaker.get("ticks"):state()) -- carried over
    breaker.get("ticks"):force_close()
    app.collectors.ticks:run_once()
    assert.equal("v2", app.store:query("SELECT tag FROM ticks WHERE id = 1")[1].tag)
  end)

  it("refuses a reload with a syntax error, naming file and line; the old set runs on", function()
    local running = app.collectors.ticks
    write(dir .. "/ticks.lua", "local x = = 1\n")
    local status, body = call("POST", "/reload")
    assert.equal(422, status)
    assert.equal("refused", body.status)
    assert.matches("ticks%.lua:1:", body.error)
    assert.equal(running, app.collectors.ticks)
    assert.is_true(running.running)
    assert.equal(running.breaker, breaker.get("ticks"))
    write(dir .. "/ticks.lua", COLLECTOR:format("v3"))
  end)

  it("refuses to listen beyond loopback without a token", function()
    local srv, err = require("sluice.admin").start(app, { host = "0.0.0.0", port = 0 })
    assert.is_nil(srv)
    assert.matches("refusing to listen on 0.0.0.0 without a token", err, 1, true)
  end)
end)

describe("admin /health on a deleted database file", function()
  local dir, app, mock, base

  setup(function()
    log.output("/dev/null")
    local p = io.popen("mktemp -d")
    dir = p:read("*l")
    p:close()
    mock = require("sluice.mock.binance").start({})
    write(dir .. "/ticks.lua", COLLECTOR:format("v1"))
    write(dir .. "/sluice.lua", CONFIG:format(dir .. "/db.sqlite", mock.url, mock.url))
    local chunk = assert(loadfile(dir .. "/sluice.lua"))
    app = app_mod.run(chunk(), dir .. "/sluice.lua")
    base = "http://127.0.0.1:" .. app.admin.port
  end)

  teardown(function()
    for _, c in ipairs(app.order) do c:stop() end
    app.admin:close()
    mock:stop()
    os.execute("rm -rf " .. dir)
    log.output("-")
  end)

  it("goes unhealthy with database_connected false and the reason; collections fail", function()
    assert.same({ true, 1 }, { app.collectors.ticks:run_once() })
    local res = assert(http.request({ url = base .. "/health" }))
    assert.equal(200, res.status)
    assert.is_true(res:json().database_connected)
    for _, suffix in ipairs({ "", "-wal", "-shm" }) do os.remove(dir .. "/db.sqlite" .. suffix) end
    res = assert(http.request({ url = base .. "/health" }))
    local body = res:json()
    assert.equal(503, res.status)
    assert.equal("unhealthy", body.status)
    assert.is_false(body.database_connected)
    local why = "database file " .. dir .. "/db.sqlite was deleted (rows written now are lost at exit; restart sluice)"
    -- (a scheduled collection that failed on it since may add its own reason)
    local found = false
    for _, r in ipairs(body.reasons) do found = found or r == why end
    assert.is_true(found, "reasons: " .. table.concat(body.reasons, " | "))
    local ok, err = app.collectors.ticks:run_once()
    assert.is_false(ok)
    assert.matches("storing rows in 'ticks' failed: " .. why, err, 1, true)
  end)
end)
