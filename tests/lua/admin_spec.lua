-- sluice.admin and hot reload: a configuration with a collector file in a
-- temp directory, the mock Binance, and the admin API on a free port.
local http = require "sluice.http"
local log = require "sluice.log"
local app_mod = require "sluice.app"
local breaker = require "sluice.breaker"
local files = require "support.files"
local sluice = require "sluice"

local write = files.write

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

-- wait_until(what, cond): cond() true within 10 s (polled), or fails naming what
local wait_until = require("support.wait").wait_for

-- The configuration above in a temp directory, run against a fresh mock
-- Binance: returns the directory, the app, the mock and the admin API's URL.
local function start_app()
  local dir = files.tmpdir()
  local mock = require("sluice.mock.binance").start({})
  write(dir .. "/ticks.lua", COLLECTOR:format("v1"))
  write(dir .. "/sluice.lua", CONFIG:format(dir .. "/db.sqlite", mock.url, mock.url))
  local chunk = assert(loadfile(dir .. "/sluice.lua"))
  local app = app_mod.run(chunk(), dir .. "/sluice.lua")
  return dir, app, mock, "http://127.0.0.1:" .. app.admin.port
end

local function stop_app(app, mock)
  for _, c in ipairs(app.order) do c:stop() end
  app.admin:close()
  mock:stop()
  files.cleanup()
  log.output("-")
end

describe("admin API and reload", function()
  local dir, app, mock, base

  -- extra: more request headers (Host, Origin, Content-Type); a POST says
  -- Content-Type: application/json unless extra says otherwise
  local function call(method, path, body, token, extra, url)
    local headers = {}
    if token ~= false then headers.Authorization = "Bearer " .. (token or "t0ken") end
    if method == "POST" then headers["Content-Type"] = "application/json" end
    for k, v in pairs(extra or {}) do headers[k] = v end
    local res = assert(http.request({ method = method, url = (url or base) .. path, headers = headers,
      body = body and (type(body) == "string" and body or require("cjson").encode(body)) or nil }))
    return res.status, res:json(), res
  end

  -- a second admin API on the same app with these options, for fn(url)
  local function with_admin(opts, fn)
    opts.port = 0
    local srv = assert(require("sluice.admin").start(app, opts))
    local ok, err = pcall(fn, "http://127.0.0.1:" .. srv.port, srv.port)
    srv:close()
    assert(ok, err)
  end

  setup(function()
    log.output("/dev/null")
    dir, app, mock, base = start_app()
    wait_until("the first collections", function()
      for _, c in ipairs(app.order) do
        if not c:stats().last_success then return false end
      end
      return true
    end)
  end)

  teardown(function() stop_app(app, mock) end)

  it("GET /health has the reference shape", function()
    local status, body = call("GET", "/health", nil, false)
    assert.equal(200, status)
    assert.equal("healthy", body.status)
    assert.is_true(body.database_connected)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", body.timestamp)
    -- up since sluice.operator was loaded: at most as long as the process
    local up = sluice.time() - require("sluice.procinfo").start_time()
    assert.is_true(body.uptime_seconds > 0 and body.uptime_seconds <= up + 1, body.uptime_seconds .. " of " .. up)
    assert.equal(0, body.collection_errors)
    local last_ok = 0
    for _, c in ipairs(app.order) do last_ok = math.max(last_ok, c:counters().last_success) end
    assert.equal(require("sluice.operator").iso(last_ok), body.last_successful_collection)
  end)

  it("GET /health: degraded (200) naming a collector whose breaker is open, 503 when none is healthy", function()
    call("POST", "/breakers/ticks/open")
    local status, body = call("GET", "/health", nil, false)
    assert.same({ 200, "degraded" }, { status, body.status })
    assert.same({ "ticks is circuit_open" }, body.reasons)
    call("POST", "/breakers/binance_klines/open")
    status, body = call("GET", "/health", nil, false)
    assert.same({ 503, "unhealthy" }, { status, body.status })
    assert.same({ "ticks is circuit_open", "binance_klines is circuit_open" }, body.reasons) -- in configuration order
    call("POST", "/breakers/ticks/close")
    call("POST", "/breakers/binance_klines/close")
    status, body = call("GET", "/health", nil, false)
    assert.same({ 200, "healthy" }, { status, body.status })
  end)

  it("GET /status lists collectors and redacts secrets", function()
    local status, body, res = call("GET", "/status")
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
    local _, entries = call("GET", "/logs?level=warning&limit=1")
    assert.equal(1, #entries)
    assert.equal("admin spec marker", entries[1].msg)
    assert.equal(400, (call("GET", "/logs?level=loud")))
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
    wait_until("the backfill to end", function()
      st = select(2, call("GET", "/backfill/" .. id, nil, false))
      return st.state ~= "running"
    end)
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

  it("refuses a foreign Host (DNS rebinding) on reads and mutations with 403", function()
    local port = app.admin.port
    local status, body = call("GET", "/status", nil, nil, { Host = "evil.example:" .. port })
    assert.equal(403, status)
    assert.equal("admin: Host 'evil.example:" .. port .. "' is not a name of this server"
      .. " (add it to admin.hosts)", body.error)
    assert.equal(403, (call("GET", "/health", nil, false, { Host = "evil.example:" .. port })))
    assert.equal(403, (call("POST", "/breakers/ticks/open", nil, nil, { Host = "evil.example:" .. port })))
    assert.equal(403, (call("GET", "/health", nil, false, { Host = "localhost:1" }))) -- another port
    assert.equal("closed", breaker.get("ticks"):state())
    for _, h in ipairs({ "localhost:" .. port, "127.0.0.1:" .. port, "[::1]:" .. port }) do
      assert.equal(200, (call("GET", "/health", nil, false, { Host = h })), h)
    end
  end)

  it("accepts the names of admin.hosts; a wildcard bind accepts IP literals with its port", function()
    with_admin({ token = "t0ken", hosts = { "sluice.internal", "ops.example:9" } }, function(url, port)
      assert.equal(200, (call("GET", "/health", nil, false, { Host = "sluice.internal:" .. port }, url)))
      assert.equal(200, (call("GET", "/health", nil, false, { Host = "ops.example:9" }, url)))
      assert.equal(403, (call("GET", "/health", nil, false, { Host = "ops.example:" .. port }, url)))
    end)
    with_admin({ token = "t0ken", host = "0.0.0.0" }, function(url, port)
      assert.equal(200, (call("GET", "/health", nil, false, { Host = "10.1.2.3:" .. port }, url)))
      assert.equal(403, (call("GET", "/health", nil, false, { Host = "rebind.example:" .. port }, url)))
    end)
  end)

  it("refuses a mutation from a foreign Origin with 403, even with the token", function()
    local status, body = call("POST", "/breakers/ticks/open", nil, nil, { Origin = "http://evil.example" })
    assert.equal(403, status)
    assert.equal("admin: cross-origin request refused (Origin 'http://evil.example')", body.error)
    assert.equal(403, (call("POST", "/collect", { collector = "ticks" }, nil, { Origin = "null" })))
    assert.equal(403, (call("DELETE", "/backfill/x", nil, nil, { Origin = "https://evil.example" })))
    assert.equal(403, (call("POST", "/breakers/ticks/open", nil, nil, { ["Sec-Fetch-Site"] = "cross-site" })))
    assert.equal("closed", breaker.get("ticks"):state())
    local same_origin = "http://127.0.0.1:" .. app.admin.port
    assert.equal(200, (call("POST", "/breakers/ticks/reset", nil, nil, { Origin = same_origin })))
  end)

  it("refuses a POST that is not Content-Type: application/json with 415", function()
    local status, body = call("POST", "/breakers/ticks/open", nil, nil, { ["Content-Type"] = "text/plain" })
    assert.equal(415, status)
    assert.equal("admin: POST needs Content-Type: application/json (a defence against cross-site requests)",
      body.error)
    assert.equal(415, (call("POST", "/collect", '{"collector":"ticks"}', nil,
      { ["Content-Type"] = "application/x-www-form-urlencoded" })))
    assert.equal(415, (call("POST", "/reload", nil, nil, { ["Content-Type"] = false })))
    assert.equal("closed", breaker.get("ticks"):state())
    assert.equal(200, (call("POST", "/breakers/ticks/reset", nil, nil,
      { ["Content-Type"] = "application/json; charset=utf-8" })))
  end)

  it("without a token refuses mutations, saying what to configure", function()
    with_admin({}, function(url)
      local status, body = call("POST", "/breakers/ticks/open", nil, false, nil, url)
      assert.equal(403, status)
      assert.equal("admin: mutations need a token: set admin.token = collector.env(\"SLUICE_ADMIN_TOKEN\")"
        .. " in the configuration and send Authorization: Bearer <token>; or, to allow them"
        .. " without one on loopback, set admin.insecure_loopback_mutations = true", body.error)
      assert.equal(403, (call("DELETE", "/backfill/x", nil, false, nil, url)))
      assert.equal("closed", breaker.get("ticks"):state())
      assert.equal(200, (call("GET", "/status", nil, false, nil, url))) -- loopback, no token
    end)
    with_admin({ insecure_loopback_mutations = true }, function(url)
      local status, body = call("POST", "/breakers/ticks/open", nil, false, nil, url)
      assert.equal(200, status)
      assert.equal("open", body.state)
      assert.equal(403, (call("POST", "/breakers/ticks/reset", nil, false, { Origin = "http://evil.example" }, url)))
      assert.equal(415, (call("POST", "/breakers/ticks/reset", nil, false, { ["Content-Type"] = "text/plain" }, url)))
      assert.equal("open", breaker.get("ticks"):state())
      assert.equal(200, (call("POST", "/breakers/ticks/reset", nil, false, nil, url)))
    end)
  end)

  it("with a token, /status and /logs need it too; the other reads do not", function()
    for _, path in ipairs({ "/status", "/logs" }) do
      local status, body, res = call("GET", path, nil, false)
      assert.equal(401, status, path)
      assert.equal("admin: unauthorized: send Authorization: Bearer <admin.token>", body.error)
      assert.equal("Bearer", res.headers["www-authenticate"])
      assert.equal(401, (call("GET", path, nil, "wrong")), path)
      assert.equal(200, (call("GET", path)), path)
    end
    for _, path in ipairs({ "/health", "/metrics", "/circuit-breaker-status", "/limiters",
      "/data-quality", "/performance" }) do
      assert.equal(200, (call("GET", path, nil, false)), path)
    end
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
    dir, app, mock, base = start_app()
  end)

  teardown(function() stop_app(app, mock) end)

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
