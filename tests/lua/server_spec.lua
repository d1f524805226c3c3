-- sluice.server: options, routing, replies, fault injection and lifetimes,
-- exercised in-process with the sluice.http client (both on the one loop).
local sluice = require "sluice"
local server = require "sluice.server"
local http = require "sluice.http"
local wait_for = require("support.wait").wait_for

local function errmsg(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok)
  return (tostring(err):gsub("^[^:]*:%d+: ", ""))
end

local servers = {}
local function listen(opts)
  local srv = assert(server.listen(opts))
  servers[#servers + 1] = srv
  return srv
end

local function url(srv, path)
  return "http://127.0.0.1:" .. srv.port .. path
end

after_each(function()
  for _, srv in ipairs(servers) do srv:close() end
  servers = {}
end)

describe("sluice.server.listen", function()
  it("binds a free port on loopback by default", function()
    local srv = listen()
    assert.equal("127.0.0.1", srv.host)
    assert.is_true(srv.port > 0 and srv.port <= 65535)
    assert.same({ requests = 0, active = 0, connections = 0, refused = 0, open = true,
      closed = false }, srv:stats())
  end)

  it("returns nil, err when the port is in use", function()
    local srv = listen()
    local again, err = server.listen{ port = srv.port }
    assert.is_nil(again)
    assert.equal("cannot listen on 127.0.0.1:" .. srv.port .. ": Address already in use", err)
  end)

  it("returns nil, err for an address it cannot bind", function()
    local srv, err = server.listen{ host = "192.0.2.1" }
    assert.is_nil(srv)
    assert.matches("^cannot listen on 192%.0%.2%.1:0: ", err)
  end)

  it("rejects unknown options and wrong types, naming them", function()
    assert.equal("sluice.server.listen: unknown option 'prot'",
      errmsg(server.listen, { prot = 80 }))
    assert.equal("sluice.server.listen: bad argument #1 'opts' (table expected, got number)",
      errmsg(server.listen, 8080))
    assert.equal("sluice.server.listen: option 'port' must be an integer in [0, 65535], got 70000",
      errmsg(server.listen, { port = 70000 }))
    assert.equal("sluice.server.listen: option 'port' must be an integer in [0, 65535], got string",
      errmsg(server.listen, { port = "80" }))
    assert.equal("sluice.server.listen: option 'host' must be a non-empty string, got ''",
      errmsg(server.listen, { host = "" }))
    assert.equal("sluice.server.listen: option 'max_body' must be an integer >= 0, got -1",
      errmsg(server.listen, { max_body = -1 }))
    assert.equal("sluice.server.listen: option 'timeout' must be a finite number > 0, got 0",
      errmsg(server.listen, { timeout = 0 }))
    assert.equal("sluice.server.listen: option 'max_connections' must be an integer >= 0 "
      .. "(0: no limit), got 1.5", errmsg(server.listen, { max_connections = 1.5 }))
    assert.equal("sluice.server.listen: option 'max_in_flight' must be an integer >= 0 "
      .. "(0: no limit), got -1", errmsg(server.listen, { max_in_flight = -1 }))
    assert.equal("sluice.server.listen: option 'request_timeout' must be a finite number >= 0 "
      .. "(0: none), got inf", errmsg(server.listen, { request_timeout = math.huge }))
  end)

  it("reports misuse at the caller's line", function()
    local line = debug.getinfo(1, "l").currentline + 1
    local ok, err = pcall(function() server.listen{ bogus = true } end)
    assert.is_false(ok)
    assert.matches("server_spec%.lua:" .. line .. ": sluice%.server%.listen: unknown option 'bogus'$", err)
    line = debug.getinfo(1, "l").currentline + 2
    local srv = listen()
    ok, err = pcall(function() srv:route("GET", "nope", print) end)
    assert.is_false(ok)
    assert.matches("server_spec%.lua:" .. line .. ": sluice%.server%.route: bad argument #2", err)
  end)

  it("closes idempotently", function()
    local srv = listen()
    assert.is_true(srv:close())
    assert.is_false(srv:close())
    assert.same({ requests = 0, active = 0, connections = 0, refused = 0, open = false,
      closed = true }, srv:stats())
    -- the port is free again
    local again = listen{ port = srv.port }
    assert.equal(srv.port, again.port)
  end)

  it("name() is opts.name or host:port; a closed server answers name() and stats(), route() raises", function()
    local srv = listen()
    assert.equal("127.0.0.1:" .. srv.port, srv:name())
    local named = listen{ name = "admin" }
    assert.equal("admin", named:name())
    assert.equal("sluice.server.listen: option 'name' must be a non-empty string, got ''",
      errmsg(server.listen, { name = "" }))
    assert.is_true(named:close())
    assert.equal("admin", named:name())
    assert.is_false(named:stats().open)
    assert.equal("sluice.server: server 'admin' is closed",
      errmsg(named.route, named, "GET", "/x", print))
  end)
end)

describe("srv:route", function()
  it("validates its arguments", function()
    local srv = listen()
    local h = function() end
    assert.equal([[sluice.server.route: bad argument #1 'method' (an HTTP method or "*" expected, got 'FETCH')]],
      errmsg(srv.route, srv, "FETCH", "/", h))
    assert.equal([[sluice.server.route: bad argument #1 'method' (an HTTP method or "*" expected, got nil)]],
      errmsg(srv.route, srv, nil, "/", h))
    -- CONNECT is answered 405 by the server itself: there are no tunnels
    assert.equal([[sluice.server.route: bad argument #1 'method' (an HTTP method or "*" expected, got 'CONNECT')]],
      errmsg(srv.route, srv, "CONNECT", "/", h))
    assert.equal([[sluice.server.route: bad argument #2 'path' (string starting with "/" expected, got 'x')]],
      errmsg(srv.route, srv, "GET", "x", h))
    assert.equal("sluice.server.route: bad argument #3 'handler' (function expected, got string)",
      errmsg(srv.route, srv, "GET", "/", "h"))
    assert.equal(srv, srv:route("get", "/", h))
  end)
end)

describe("sluice.server requests", function()
  it("answers a routed GET with status, body and headers", function()
    local srv = listen()
    srv:route("GET", "/ping", function()
      return 201, "pong", { ["X-Test"] = "yes", ["Set-Cookie"] = { "a=1", "b=2" } }
    end)
    local res = assert(http.get(url(srv, "/ping")))
    assert.equal(201, res.status)
    assert.equal("pong", res.body)
    assert.equal("yes", res.headers["x-test"])
    assert.equal("text/plain; charset=utf-8", res.headers["content-type"])
    assert.same({ "a=1", "b=2" }, res.headers_all["set-cookie"])
    assert.equal(1, srv:stats().requests)
  end)

  it("passes method, path, query, headers, body and peer to the handler", function()
    local srv = listen()
    local seen
    srv:route("POST", "/echo/*", function(req)
      seen = req
      return { n = 1 }
    end)
    local res = assert(http.request{
      method = "POST", url = url(srv, "/echo/a%20b?x=1&y=a+b&y=%41&flag"),
      headers = { ["X-Mixed-Case"] = "v1" }, json = { a = { 1, 2 } },
    })
    assert.equal(200, res.status)
    assert.equal("application/json", res.headers["content-type"])
    assert.same({ n = 1 }, res:json())
    assert.equal("POST", seen.method)
    assert.equal("/echo/a b", seen.path)
    assert.equal("/echo/a%20b?x=1&y=a+b&y=%41&flag", seen.uri)
    assert.same({ x = "1", y = "A", flag = "" }, seen.query)
    assert.same({ "a b", "A" }, seen.query_all.y)
    assert.equal("x=1&y=a+b&y=%41&flag", seen.query_string)
    assert.equal("v1", seen.headers["x-mixed-case"])
    assert.equal("v1", seen.headers["X-MIXED-CASE"])
    assert.equal("application/json", seen.headers["Content-Type"])
    assert.equal('{"a":[1,2]}', seen.body)
    assert.same({ a = { 1, 2 } }, seen:json())
    assert.matches("^127%.0%.0%.1:%d+$", seen.remote_addr)
    assert.equal("127.0.0.1", seen.remote_ip)
    assert.equal(tonumber(seen.remote_addr:match(":(%d+)$")), seen.remote_port)
  end)

  it("sends and answers JSON numbers exactly (the text reads back as the same double)", function()
    local srv = listen()
    local seen
    srv:route("POST", "/n", function(req)
      seen = req.body
      return { p = 0.1 + 0.2, t = 1732291234.567891, big = 2 ^ 53 + 2 }
    end)
    local res = assert(http.post(url(srv, "/n"),
      { json = { price = 0.12345678901234568, at = 1732291234.567891 } }))
    assert.equal('{"at":1732291234.567891,"price":0.12345678901234568}', seen)
    assert.equal('{"big":9007199254740994,"p":0.30000000000000004,"t":1732291234.567891}', res.body)
  end)

  it("receives json.empty_array and json.array params as [] from a json body", function()
    local json = require "sluice.json"
    local seen = {}
    local srv = listen()
    srv:route("POST", "/rpc", function(req)
      seen[#seen + 1] = req.body
      return { jsonrpc = "2.0", id = 1, result = json.empty_array }
    end)
    local res = assert(http.post(url(srv, "/rpc"),
      { json = { jsonrpc = "2.0", id = 1, method = "eth_blockNumber", params = json.empty_array } }))
    assert.equal('{"id":1,"jsonrpc":"2.0","method":"eth_blockNumber","params":[]}', seen[1])
    assert.equal('{"id":1,"jsonrpc":"2.0","result":[]}', res.body)
    assert(http.post(url(srv, "/rpc"), { json = { params = json.array() } }))
    assert.equal('{"params":[]}', seen[2])
    assert.same({ params = {} }, json.decode(seen[2]))
  end)

  it("keeps every digit of 2^63-1 from a json body through an integer column and back", function()
    local json = require "sluice.json"
    local store = require "sluice.store"
    local db = assert(store.open(":memory:"))
    finally(function() db:close() end)
    db:define{ name = "ids", columns = { id = "integer", v = "integer" }, key = { "id" } }
    local srv = listen()
    srv:route("POST", "/store", function(req)
      -- cjson's decoder reads numbers as doubles: take the digits as text
      local v = req.body:match('"params":%[(%-?%d+)%]')
      local ins, _, _, rej = db:upsert("ids", { { id = 1, v = v } })
      if ins ~= 1 or rej ~= 0 then return 500, "not stored" end
      local rows = db:select("ids", "WHERE id = ?", 1)
      return { id = 1, result = rows[1].v, max_u64 = 18446744073709551615ULL }
    end)
    local res = assert(http.post(url(srv, "/store"),
      { json = { id = 1, method = "store", params = json.array({ 9223372036854775807LL }) } }))
    assert.equal(200, res.status)
    assert.equal('{"id":1,"max_u64":18446744073709551615,"result":9223372036854775807}', res.body)
    assert.equal("9223372036854775807", db:query("SELECT CAST(v AS TEXT) AS v FROM ids")[1].v)
  end)

  it("gives an empty body and nil, err from json() when there is none", function()
    local srv = listen()
    local body, v, err
    srv:route("GET", "/", function(req)
      body = req.body
      v, err = req:json()
      return 204
    end)
    local res = assert(http.get(url(srv, "/")))
    assert.equal(204, res.status)
    assert.equal("", body)
    assert.is_nil(v)
    assert.is_string(err)
  end)

  it("accepts a bare body as the only result", function()
    local srv = listen()
    srv:route("GET", "/s", function() return "just text" end)
    srv:route("GET", "/t", function() return { ok = true } end)
    srv:route("GET", "/n", function() end)
    local res = assert(http.get(url(srv, "/s")))
    assert.same({ 200, "just text" }, { res.status, res.body })
    res = assert(http.get(url(srv, "/t")))
    assert.same({ 200, '{"ok":true}' }, { res.status, res.body })
    res = assert(http.get(url(srv, "/n")))
    assert.same({ 200, "" }, { res.status, res.body })
  end)

  it("routes exact paths before prefixes, longer prefixes first, methods before *", function()
    local srv = listen()
    local function says(s) return function() return s end end
    srv:route("*", "/*", says("root"))
    srv:route("GET", "/api/*", says("api"))
    srv:route("GET", "/api/v1/*", says("v1"))
    srv:route("GET", "/api/v1/ping", says("ping"))
    srv:route("*", "/api/v1/ping", says("ping any"))
    srv:route("POST", "/only-post", says("posted"))
    local function get(path, method)
      local res = assert(http.request{ method = method or "GET", url = url(srv, path) })
      return res.status .. " " .. res.body
    end
    assert.equal("200 ping", get("/api/v1/ping"))
    assert.equal("200 ping any", get("/api/v1/ping", "DELETE"))
    assert.equal("200 v1", get("/api/v1/other"))
    assert.equal("200 api", get("/api/x/y"))
    assert.equal("200 root", get("/api")) -- "/api/*" needs the slash
    assert.equal("200 root", get("/api/x", "PUT")) -- falls through to "*"
    assert.equal("200 posted", get("/only-post", "POST"))
    -- a later route for the same method and path replaces the handler
    srv:route("GET", "/api/*", says("api 2"))
    assert.equal("200 api 2", get("/api/z"))
  end)

  it("answers 404 for an unknown path and 405 with Allow for a wrong method", function()
    local srv = listen()
    srv:route("GET", "/thing", function() return "x" end)
    srv:route("PUT", "/thing", function() return "x" end)
    local res = assert(http.get(url(srv, "/nothing")))
    assert.equal(404, res.status)
    assert.same({ error = "not found" }, res:json())
    res = assert(http.request{ method = "DELETE", url = url(srv, "/thing") })
    assert.equal(405, res.status)
    assert.equal("GET, HEAD, PUT", res.headers["allow"])
    assert.same({ error = "method not allowed" }, res:json())
  end)

  it("serves HEAD from the GET route without a body", function()
    local srv = listen()
    srv:route("GET", "/doc", function() return "twelve bytes" end)
    local res = assert(http.request{ method = "HEAD", url = url(srv, "/doc") })
    assert.equal(200, res.status)
    assert.equal("", res.body)
    assert.equal("12", res.headers["content-length"])
  end)

  it("answers 413 for a body over max_body", function()
    local srv = listen{ max_body = 1000 }
    local called
    srv:route("POST", "/up", function(req) called = true; return #req.body .. "" end)
    local res = assert(http.post(url(srv, "/up"), { body = string.rep("x", 1000) }))
    assert.same({ 200, "1000" }, { res.status, res.body })
    called = false
    res = assert(http.post(url(srv, "/up"), { body = string.rep("x", 1001) }))
    assert.equal(413, res.status)
    assert.is_false(called)
  end)

  it("requires a bearer token for the methods in auth, checked on the headers", function()
    local srv = listen{ auth = { token = "t0k", methods = { "POST", "delete" } }, max_body = 10 }
    local calls = 0
    srv:route("*", "/x", function(req) calls = calls + 1; return req.method end)
    local res = assert(http.post(url(srv, "/x"), { body = string.rep("b", 100) }))
    assert.same({ 401, "Bearer", "close" },
      { res.status, res.headers["www-authenticate"], res.headers["connection"] })
    assert.same({ error = "unauthorized" }, res:json())
    res = assert(http.request{ method = "DELETE", url = url(srv, "/x"),
      headers = { Authorization = "Bearer t0" } })
    assert.equal(401, res.status)
    assert.equal(0, calls)
    -- over max_body with the token: 413 on the declared length
    res = assert(http.post(url(srv, "/x"), { body = string.rep("b", 100),
      headers = { Authorization = "Bearer t0k" } }))
    assert.same({ 413, { error = "request body too large" } }, { res.status, res:json() })
    res = assert(http.post(url(srv, "/x"), { body = "ok", headers = { Authorization = "Bearer t0k" } }))
    assert.same({ 200, "POST" }, { res.status, res.body })
    res = assert(http.get(url(srv, "/x")))
    assert.same({ 200, "GET", 2 }, { res.status, res.body, calls })
    assert.equal("sluice.server.listen: option 'auth.token' must be a non-empty string, got ''",
      errmsg(server.listen, { auth = { token = "", methods = {} } }))
  end)

  it("answers 503 over max_in_flight, without calling the handler", function()
    local srv = listen{ max_in_flight = 1 }
    local calls = 0
    srv:route("GET", "/slow", function() calls = calls + 1; sluice.sleep(0.2); return "slow" end)
    local first = sluice.spawn(function() return http.get(url(srv, "/slow")) end)
    wait_for("the first request in", function() return srv:stats().active == 1 end)
    local res = assert(http.get(url(srv, "/slow")))
    assert.same({ 503, "close" }, { res.status, res.headers["connection"] })
    assert.same({ error = "too many requests in flight" }, res:json())
    local ok, done = sluice.wait(first)
    assert.is_true(ok)
    assert.same({ 200, "slow", 1 }, { done.status, done.body, calls })
    res = assert(http.get(url(srv, "/slow")))
    assert.same({ 200, 2 }, { res.status, calls })
  end)

  it("keeps JSON bodies valid UTF-8 when they carry invalid bytes", function()
    local srv = listen()
    srv:route("GET", "/echo", function(req)
      return 400, { error = "unknown name '" .. req.query.name .. "'" }
    end)
    local res = assert(http.get(url(srv, "/echo?name=a%FFb%C3%A9")))
    assert.equal(400, res.status)
    assert.equal('{"error":"unknown name \'a\239\191\189b\195\169\'"}', res.body)
  end)

  it("valid_utf8 replaces each byte outside a well-formed sequence with U+FFFD", function()
    local R = "\239\191\189"
    local cases = {
      { "plain ascii", "plain ascii" },
      { "\195\169\226\130\172\240\159\152\128", "\195\169\226\130\172\240\159\152\128" },
      { "\255", R },                               -- never valid
      { "\192\175", R .. R },                      -- overlong "/"
      { "\224\128\175", R .. R .. R },             -- overlong, 3 bytes
      { "\237\160\128", R .. R .. R },             -- a surrogate
      { "\244\144\128\128", R .. R .. R .. R },    -- past U+10FFFF
      { "a\195", "a" .. R },                        -- truncated at the end
      { "\195a", R .. "a" },                        -- continuation missing
    }
    for _, c in ipairs(cases) do
      assert.equal(c[2], server.valid_utf8(c[1]))
    end
  end)

  it("answers 500 when a handler fails, and goes on", function()
    local srv = listen()
    srv:route("GET", "/boom", function() error("kaboom") end)
    srv:route("GET", "/bad", function() return 200, function() end end)
    srv:route("GET", "/badstatus", function() return 42, "x" end)
    srv:route("GET", "/ok", function() return "fine" end)
    for _, path in ipairs({ "/boom", "/bad", "/badstatus" }) do
      local res = assert(http.get(url(srv, path)))
      assert.equal(500, res.status)
      assert.same({ error = "internal server error" }, res:json())
      res = assert(http.get(url(srv, "/ok")))
      assert.same({ 200, "fine" }, { res.status, res.body })
    end
  end)

  it("runs yielding handlers concurrently", function()
    local srv = listen()
    local running, most = 0, 0
    srv:route("GET", "/slow", function()
      running = running + 1
      most = math.max(most, running)
      sluice.sleep(0.2)
      running = running - 1
      return "slow"
    end)
    local t0 = sluice.now()
    local tasks = {}
    for i = 1, 5 do
      tasks[i] = sluice.spawn(function() return http.get(url(srv, "/slow")) end)
    end
    for i = 1, 5 do
      local ok, res = sluice.wait(tasks[i])
      assert.is_true(ok)
      assert.same({ 200, "slow" }, { res.status, res.body })
    end
    assert.equal(5, most) -- all five handlers at once
    -- one after the other would take 1 s (a loaded machine may add some)
    local took = sluice.now() - t0
    assert.is_true(took >= 0.19 and took < 0.9, "took " .. took)
  end)

  it("keeps connections alive between requests", function()
    local srv = listen()
    srv:route("GET", "/", function(req) return req.remote_addr end)
    local a = assert(http.get(url(srv, "/")))
    local b = assert(http.get(url(srv, "/")))
    assert.equal(a.body, b.body) -- same peer port: the same connection
    assert.is_true(b.reused)
  end)
end)

describe("sluice.server fault injection", function()
  it("closes the connection without answering on req:abort()", function()
    local srv = listen()
    local again
    srv:route("GET", "/abort", function(req)
      assert.is_true(req:abort())
      again = { req:abort() }
    end)
    local res, _, kind = http.get(url(srv, "/abort"))
    assert.is_nil(res)
    assert.equal("aborted", kind)
    assert.same({ nil, "closed" }, again)
    assert.equal(0, srv:stats().active)
  end)

  it("streams a body in parts with pauses", function()
    local srv = listen()
    local results, again, after = {}, nil, nil
    srv:route("GET", "/stream", function(req)
      results[#results + 1] = req:start(200, { ["Content-Type"] = "text/event-stream" })
      again = { req:start(200) }
      for i = 1, 3 do
        results[#results + 1] = req:write("part" .. i .. ";")
        sluice.sleep(0.05)
      end
      results[#results + 1] = req:finish()
      results[#results + 1] = req:state()
      after = { req:write("late") }
      return 200, "ignored"
    end)
    local t0 = sluice.now()
    local res = assert(http.get(url(srv, "/stream")))
    assert.is_true(sluice.now() - t0 >= 0.14)
    assert.equal(200, res.status)
    assert.equal("part1;part2;part3;", res.body)
    assert.equal("text/event-stream", res.headers["content-type"])
    assert.equal("chunked", res.headers["transfer-encoding"])
    assert.same({ true, true, true, true, true, "answered" }, results)
    assert.same({ nil, "answered" }, again)
    assert.same({ nil, "answered" }, after)
  end)

  it("starts a 200 on the first write and finishes a stream the handler left open", function()
    local srv = listen()
    srv:route("GET", "/s", function(req) req:write("a"); req:write(""); req:write("b") end)
    local res = assert(http.get(url(srv, "/s")))
    assert.same({ 200, "ab" }, { res.status, res.body })
  end)

  it("truncates a body with a declared Content-Length when aborted", function()
    local srv = listen()
    srv:route("GET", "/trunc", function(req)
      req:start(200, { ["Content-Length"] = 1000 })
      req:write(string.rep("0", 10))
      sluice.sleep(0.05)
      req:abort()
    end)
    local res, err, kind = http.get(url(srv, "/trunc"))
    assert.is_nil(res)
    assert.is_string(err)
    assert.is_truthy(kind == "protocol" or kind == "aborted", kind)
  end)

  it("closes rather than finishes a body shorter than its Content-Length", function()
    local srv = listen()
    local fin
    srv:route("GET", "/short", function(req)
      req:start(200, { ["Content-Length"] = 5 })
      assert.same({ nil, "body longer than its Content-Length" }, { req:write("123456") })
      req:write("123")
      fin = { req:finish() }
    end)
    local res = http.get(url(srv, "/short"))
    assert.is_nil(res)
    assert.same({ nil, "body shorter than its Content-Length; closed" }, fin)
  end)

  it("cuts off a stream whose handler fails", function()
    local srv = listen()
    srv:route("GET", "/s", function(req)
      req:start(200)
      req:write("partial")
      sluice.sleep(0.02)
      error("mid-stream")
    end)
    local res, _, kind = http.get(url(srv, "/s"))
    assert.is_nil(res)
    assert.is_truthy(kind == "protocol" or kind == "aborted", kind)
  end)

  it("answers 500 when the handler task is killed", function()
    local srv = listen()
    local handler_task
    srv:route("GET", "/k", function()
      handler_task = sluice.current()
      sluice.sleep(10)
    end)
    local client = sluice.spawn(function() return http.get(url(srv, "/k")) end)
    wait_for("the handler", function() return handler_task end)
    assert.is_true(sluice.kill(handler_task))
    local ok, res = sluice.wait(client)
    assert.is_true(ok)
    assert.equal(500, res.status)
  end)

  it("makes req methods return nil, 'closed' once the client has gone", function()
    local srv = listen()
    local got
    srv:route("GET", "/forever", function(req)
      req:start(200)
      for _ = 1, 200 do
        local ok, err = req:write(string.rep("x", 16384))
        if not ok then
          got = { err, req:state(), req:finish(), req:abort() }
          return
        end
        sluice.sleep(0.01)
      end
    end)
    local res, _, kind = http.get(url(srv, "/forever"), { timeout = 0.2 })
    assert.is_nil(res)
    assert.equal("timeout", kind)
    wait_for("the handler to see the client gone", function() return got end)
    assert.same({ "closed", "closed", nil }, { got[1], got[2], got[3] })
    assert.equal(0, srv:stats().active)
  end)

  it("lets requests in flight finish after close(), then releases the port", function()
    local srv = listen()
    srv:route("GET", "/slow", function() sluice.sleep(0.1); return "done" end)
    local client = sluice.spawn(function() return http.get(url(srv, "/slow")) end)
    wait_for("the request in", function() return srv:stats().active == 1 end)
    assert.is_true(srv:close())
    assert.same({ requests = 1, active = 1, connections = 1, refused = 0, open = false,
      closed = false }, srv:stats())
    local ok, res = sluice.wait(client)
    assert.is_true(ok)
    assert.same({ 200, "done", "close" }, { res.status, res.body, res.headers["connection"] })
    wait_for("the server closed", function() return srv:stats().closed end)
    local _, _, kind = http.get(url(srv, "/slow"))
    assert.equal("connect", kind)
  end)

  it("a handler may close its own server", function()
    local srv = listen()
    srv:route("POST", "/quit", function() srv:close(); return "bye" end)
    local res = assert(http.post(url(srv, "/quit")))
    assert.same({ 200, "bye" }, { res.status, res.body })
    wait_for("the server closed", function() return srv:stats().closed end)
  end)

  it("survives a client that disconnects while the handler sleeps", function()
    local srv = listen()
    local answered
    srv:route("GET", "/late", function(req)
      sluice.sleep(0.2)
      answered = { req:state(), req:abort() ~= nil }
      return "late"
    end)
    srv:route("GET", "/ok", function() return "ok" end)
    local _, _, kind = http.get(url(srv, "/late"), { timeout = 0.05 })
    assert.equal("timeout", kind)
    wait_for("the handler's answer", function() return answered end)
    assert.is_table(answered)
    local res = assert(http.get(url(srv, "/ok")))
    assert.equal("ok", res.body)
    wait_for("no request active", function() return srv:stats().active == 0 end)
  end)
end)
