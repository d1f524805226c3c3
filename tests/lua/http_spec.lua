-- sluice.http against a real nginx on loopback.
local sluice = require "sluice"
local http = require "sluice.http"
local server = require "sluice.server"
local cjson = require "cjson"

local function json_doc(bytes)
  local filler = string.rep("x", bytes - 40)
  return cjson.encode({ symbol = "BTCUSDT", price = 97123.5, pad = filler })
end

local BIG = 10 * 1024 * 1024
local DOC = json_doc(1024)

describe("sluice.http against nginx", function()
  local nginx

  setup(function()
    nginx = require("support.nginx").start({
      files = {
        ["doc.json"] = DOC,
        ["big.bin"] = string.rep("0123456789abcdef", BIG / 16),
      },
      http = [[
        gzip on; gzip_types application/json; gzip_min_length 100;
        types { application/json json; }
      ]],
      locations = [[
        location = /echo {
          default_type application/json;
          return 200 '{"uri":"$request_uri","method":"$request_method","x":"$http_x_test","ua":"$http_user_agent","len":"$content_length","type":"$content_type"}';
        }
        location = /unavailable {
          add_header Retry-After 7 always;
          add_header X-Multi one always;
          add_header X-Multi two always;
          return 503 "down";
        }
        location = /drop { return 444; }
        location = /slow { limit_rate 2k; try_files /big.bin =404; }
        location = /moved { return 302 /doc.json; }
      ]],
    })
  end)

  teardown(function()
    if nginx then nginx:stop() end
  end)

  it("gets a JSON document with status, headers, timings and version", function()
    local res, err = http.get(nginx:url("/doc.json"))
    assert.is_nil(err)
    assert.equal(200, res.status)
    assert.equal("application/json", res.headers["Content-Type"])
    assert.equal("application/json", res.headers["content-type"])
    -- gzip was negotiated by libcurl and decoded transparently
    assert.equal("gzip", res.headers["Content-Encoding"])
    assert.equal(DOC, res.body)
    assert.equal("1.1", res.http_version)
    local doc = res:json()
    assert.equal("BTCUSDT", doc.symbol)
    assert.equal(97123.5, doc.price)
    assert.equal(doc, res:json()) -- decoded once
    for _, k in ipairs({ "dns", "connect", "tls", "ttfb", "total" }) do
      assert.is_number(res.timings[k])
    end
    assert.is_true(res.timings.total >= res.timings.ttfb)
  end)

  it("shows its public fields to pairs, and no private ones", function()
    local function keys(t)
      local list = {}
      for k in pairs(t) do list[#list + 1] = k end
      table.sort(list)
      return list
    end
    local res = assert(http.get(nginx:url("/doc.json")))
    -- the header tables are made on first read: until then pairs leaves them out
    assert.same({ "body", "http_version", "redirects", "reused", "status", "timings", "url" }, keys(res))
    assert.equal("BTCUSDT", res:json().symbol)
    assert.same({ "body", "http_version", "redirects", "reused", "status", "timings", "url" }, keys(res))
    assert.equal("application/json", res.headers["content-type"])
    assert.same({ "body", "headers", "headers_all", "http_version", "redirects", "reused", "status",
      "timings", "url" }, keys(res))
    assert.same({ "application/json" }, res.headers_all["content-type"])
  end)

  it("encodes queries with sorted keys and sends headers and a user agent", function()
    local res = assert(http.get(nginx:url("/echo"), {
      query = { symbol = "BTC USDT", limit = 500, interval = "1m", ids = { 3, 1 } },
      headers = { ["X-Test"] = "hello" },
    }))
    local echo = res:json()
    assert.equal("/echo?ids=3&ids=1&interval=1m&limit=500&symbol=BTC%20USDT", echo.uri)
    assert.equal("GET", echo.method)
    assert.equal("hello", echo.x)
    assert.matches("^sluice/%d+%.%d+%.%d+$", echo.ua)
  end)

  it("sends numbers in queries and headers exactly (the shortest text that reads back)", function()
    local res = assert(http.get(nginx:url("/echo"), {
      query = { a = 0.1, b = 1e21, c = 2 ^ 53 + 2, d = -0.0, e = { 0.1 + 0.2, 2 ^ 63 } },
      headers = { ["X-Test"] = 0.1 },
    }))
    local echo = res:json()
    assert.equal("/echo?a=0.1&b=1e%2B21&c=9007199254740994&d=-0&e=0.30000000000000004"
      .. "&e=9.223372036854776e%2B18", echo.uri)
    assert.equal(nginx:url("/echo") .. "?a=0.1&b=1e%2B21&c=9007199254740994&d=-0&e=0.30000000000000004"
      .. "&e=9.223372036854776e%2B18", res.url)
    assert.equal("0.1", echo.x)
    -- nan and inf have no exact text: they keep their spelling
    assert.equal("n=nan&p=inf&q=-inf", http.encode_query({ n = 0 / 0, p = math.huge, q = -math.huge }))
  end)

  it("posts a JSON body with its content type", function()
    local res = assert(http.post(nginx:url("/echo"), { json = { a = 1 } }))
    local echo = res:json()
    assert.equal("POST", echo.method)
    assert.equal("7", echo.len) -- {"a":1}
    assert.equal("application/json", echo.type)
    res = assert(http.request({ method = "PUT", url = nginx:url("/echo"), body = "abc",
      headers = { ["Content-Type"] = "text/plain" } }))
    echo = res:json()
    assert.same({ "PUT", "3", "text/plain" }, { echo.method, echo.len, echo.type })
  end)

  it("returns 4xx/5xx as results, keeping repeated headers", function()
    local res, err = http.get(nginx:url("/unavailable"))
    assert.is_nil(err)
    assert.equal(503, res.status)
    assert.equal("down", res.body)
    assert.equal("7", res.headers["retry-after"])
    assert.equal("one, two", res.headers["X-Multi"])
    assert.same({ "one", "two" }, res.headers_all["x-multi"])
    local nf = assert(http.get(nginx:url("/missing")))
    assert.equal(404, nf.status)
    local bad, jerr = nf:json()
    assert.is_nil(bad)
    assert.matches("invalid JSON", jerr)
  end)

  it("follows same-origin redirects by default, and not when told", function()
    local res = assert(http.get(nginx:url("/moved")))
    assert.equal(200, res.status)
    assert.equal(nginx:url("/doc.json"), res.url)
    assert.equal(1, res.redirects)
    assert.is_true(res.timings.redirect > 0)
    assert.is_true(res.timings.total >= res.timings.redirect)
    res = assert(http.get(nginx:url("/moved"), { redirects = false }))
    assert.equal(302, res.status)
    assert.equal(0, res.redirects)
    assert.equal(0, res.timings.redirect)
    assert.matches("/doc.json$", res.headers.location)
  end)

  it("carries nothing over from the request before it (easy handles are pooled)", function()
    local echo = nginx:url("/echo")
    local function get() return assert(http.get(echo)):json() end
    local plain = { uri = "/echo", method = "GET", x = "", ua = "sluice/" .. sluice._VERSION, len = "", type = "" }
    assert.same(plain, get())
    assert.same({ uri = "/echo", method = "POST", x = "", ua = plain.ua, len = "2", type = "application/json" },
      assert(http.post(echo, { json = {} })):json())
    assert.same(plain, get())
    assert.same("", assert(http.request({ method = "HEAD", url = echo })).body)
    assert.same(plain, get())
    assert.same({ uri = "/echo", method = "DELETE", x = "1", ua = plain.ua, len = "", type = "" },
      assert(http.request({ method = "DELETE", url = echo, headers = { ["X-Test"] = 1 } })):json())
    assert.same(plain, get())
    assert.same({ uri = "/echo?a=1", method = "GET", x = "2", ua = plain.ua, len = "", type = "" },
      assert(http.get(echo, { query = { a = 1 }, headers = { ["X-Test"] = 2 } })):json())
    assert.same(plain, get())
  end)

  it("reuses the connection (keep-alive)", function()
    assert(http.get(nginx:url("/doc.json")))
    local res = assert(http.get(nginx:url("/doc.json")))
    assert.is_true(res.reused)
    assert.equal(0, res.timings.connect)
  end)

  it("downloads a 10 MB body intact", function()
    local res = assert(http.get(nginx:url("/big.bin"), { timeout = 20 }))
    assert.equal(200, res.status)
    assert.equal(BIG, #res.body)
    assert.equal("0123456789abcdef", res.body:sub(-16))
  end)

  it("fails with kind too_large past max_body", function()
    local res, err, kind = http.get(nginx:url("/big.bin"), { max_body = 1024 * 1024 })
    assert.is_nil(res)
    assert.equal("too_large", kind)
    assert.is_string(err)
  end)

  it("fails with kind connect on a refused port", function()
    local res, err, kind = http.get("http://127.0.0.1:1/")
    assert.is_nil(res)
    assert.equal("connect", kind)
    assert.matches("127.0.0.1", err)
  end)

  it("fails with kind timeout on a slow body", function()
    local t0 = sluice.now()
    local res, _, kind = http.get(nginx:url("/slow"), { timeout = 0.3 })
    assert.is_nil(res)
    assert.equal("timeout", kind)
    assert.is_true(sluice.now() - t0 < 2)
  end)

  it("fails with kind aborted when the server closes without answering", function()
    local res, _, kind = http.get(nginx:url("/drop"))
    assert.is_nil(res)
    assert.equal("aborted", kind)
  end)

  it("fails with kind dns on an unresolvable name", function()
    local res, _, kind = http.get("http://name.invalid/", { timeout = 5 })
    assert.is_nil(res)
    assert.equal("dns", kind)
  end)

  it("answers 1,000 concurrent requests from 1,000 tasks correctly", function()
    local tasks = {}
    for i = 1, 1000 do
      tasks[i] = sluice.spawn(function()
        local res, err = http.get(nginx:url("/echo"), { query = { i = i } })
        if not res then return "error: " .. err end
        return res:json().uri
      end)
    end
    local wrong = 0
    for i = 1, 1000 do
      local ok, uri = sluice.wait(tasks[i])
      if not ok or uri ~= "/echo?i=" .. i then wrong = wrong + 1 end
    end
    assert.equal(0, wrong)
    assert.equal(0, http.in_flight())
  end)

  it("caps connections per host", function()
    http.configure({ max_host_connections = 4 })
    local tasks = {}
    for i = 1, 50 do
      tasks[i] = sluice.spawn(function() return assert(http.get(nginx:url("/doc.json"))).status end)
    end
    for i = 1, 50 do assert.same({ true, 200 }, { sluice.wait(tasks[i]) }) end
    assert.same({ max_host_connections = 4, max_total_connections = 1024, max_cached_connections = 256 },
      http.configure())
    http.configure({ defaults = true })
  end)

  it("removes the transfer when its task is killed", function()
    -- a server that sends the start of a body, says so, and sends the rest
    -- when let go
    local me, srv = sluice.current(), assert(server.listen({ port = 0 }))
    local handler, started, finished = nil, false, false
    srv:route("GET", "/trickle", function(req)
      handler = sluice.current()
      req:write("the start of the body, ")
      started = true
      sluice.unpark(me)
      sluice.park(10)
      req:write("and the rest")
      req:finish()
      finished = true
      sluice.unpark(me)
    end)
    finally(function()
      if handler and not finished then sluice.unpark(handler) end
      srv:close()
    end)
    local t = sluice.spawn(function() return http.get("http://127.0.0.1:" .. srv.port .. "/trickle") end)
    if not started then sluice.park(10) end
    assert.is_true(started)
    assert.equal("waiting", sluice.status(t))
    assert.equal(1, http.in_flight())
    assert.is_true(sluice.kill(t))
    assert.equal(0, http.in_flight())
    -- the rest of the reply comes: no late resume of the killed task
    sluice.unpark(handler)
    if not finished then sluice.park(10) end
    assert.is_true(finished)
    -- the client still works
    assert.equal(200, assert(http.get(nginx:url("/doc.json"))).status)
    assert.equal("killed", sluice.status(t))
  end)
end)

describe("sluice.http arguments", function()
  it("validates options, naming the bad one", function()
    assert.has_error(function() http.request({ url = "http://x/", timout = 1 }) end,
      "sluice.http.request: unknown option 'timout'")
    assert.has_error(function() http.request({ url = "http://x/", timeout = "1" }) end,
      "sluice.http.request: option 'timeout' must be a number > 0, got string")
    assert.has_error(function() http.request({ url = "http://x/", timeout = -1 }) end,
      "sluice.http.request: option 'timeout' must be a number > 0, got -1")
    assert.has_error(function() http.request({}) end, "sluice.http.request: option 'url' is required")
    assert.has_error(function() http.get(42) end,
      "sluice.http.get: bad argument #1 'url' (string expected, got number)")
    assert.has_error(function() http.post("http://x/", { body = "a", json = {} }) end,
      "sluice.http.post: options 'body' and 'json' are exclusive")
    assert.has_error(function() http.get("http://x/", { headers = { ["Bad Name"] = "v" } }) end,
      "sluice.http.get: bad header name 'Bad Name'")
    assert.has_error(function() http.get("http://x/", { headers = { X = "a\r\nB: c" } }) end,
      "sluice.http.get: bad value for header 'X'")
    assert.has_error(function() http.configure({ max_hosts = 1 }) end,
      "sluice.http.configure: unknown option 'max_hosts'")
    assert.has_error(function() http.configure({ max_host_connections = -1 }) end,
      "sluice.http.configure: option 'max_host_connections' must be an integer >= 0, got -1")
    -- math.huge is not a count (it used to reach libcurl as a garbage long)
    assert.has_error(function() http.configure({ max_total_connections = math.huge }) end,
      "sluice.http.configure: option 'max_total_connections' must be an integer >= 0, got inf")
    assert.has_error(function() http.configure({ max_cached_connections = 1.5 }) end,
      "sluice.http.configure: option 'max_cached_connections' must be an integer >= 0, got 1.5")
    assert.has_error(function() http.configure({ defaults = 1 }) end,
      "sluice.http.configure: option 'defaults' must be a boolean, got number")
    assert.same({ max_host_connections = 64, max_total_connections = 1024, max_cached_connections = 256 },
      http.configure())
  end)

  it("blames the caller's line for a bad option", function()
    local line = debug.getinfo(1, "l").currentline
    local ok, e = pcall(function() http.get("http://x/", { timeout = "1" }) end)
    assert.is_false(ok)
    assert.equal("http_spec.lua:" .. (line + 1) .. ": sluice.http.get: option 'timeout' must be a number > 0, "
      .. "got string", e:match("[^/]*$"))
    ok, e = pcall(function() http.request({ url = "http://x/", body = "a", json = {} }) end)
    assert.is_false(ok)
    assert.equal("http_spec.lua:" .. (line + 5) .. ": sluice.http.request: options 'body' and 'json' are exclusive",
      e:match("[^/]*$"))
  end)

  it("escapes and encodes queries deterministically", function()
    assert.equal("a%20b%2Fc%3F%26%3D~-_.", http.escape("a b/c?&=~-_."))
    assert.equal("%C3%A9", http.escape("é"))
    -- a number is escaped as a query value is written: exactly
    assert.equal("0.30000000000000004", http.escape(0.1 + 0.2))
    assert.equal("1732291234.567891", http.escape(1732291234.567891))
    assert.equal("true", http.escape(true))
    assert.equal("a=1&b=true&c=x%2By&d=1.5", http.encode_query({ d = 1.5, c = "x+y", b = true, a = 1 }))
    assert.equal("", http.encode_query({}))
    assert.equal("k=1&k=2", http.encode_query({ k = { 1, 2 } }))
    assert.has_error(function() http.encode_query({ [1] = "x" }) end)
    -- int64_t/uint64_t cdata (what the store reads back beyond 2^53) by their digits
    local ffi = require "ffi"
    assert.equal("a=9223372036854775807&b=18446744073709551615&c=-9223372036854775808",
      http.encode_query({ a = ffi.new("int64_t", 9223372036854775807LL),
        b = ffi.new("uint64_t", 18446744073709551615ULL), c = ffi.new("int64_t", -9223372036854775807LL - 1) }))
    assert.equal("9223372036854775807", http.escape(ffi.new("int64_t", 9223372036854775807LL)))
    assert.has_error(function() http.escape({}) end,
      "sluice.http.escape: bad argument #1 (string expected, got table)")
    assert.has_error(function() http.encode_query({ p = ffi.new("double", 1) }) end,
      "sluice.http.encode_query: bad value for 'p' (cdata)")
  end)

  it("names a URL's origin: scheme, host and port, in lower case, default ports filled in", function()
    assert.same({ "https", "api.binance.com", 443 }, { http.origin("HTTPS://API.Binance.com/api?x=1") })
    assert.same({ "http", "127.0.0.1", 8080 }, { http.origin("http://user:pw@127.0.0.1:8080") })
    assert.same({ "http", "[::1]", 80 }, { http.origin("http://[::1]/") })
    local none, err = http.origin("not a url")
    assert.is_nil(none)
    assert.is_string(err)
    assert.has_error(function() http.origin(1) end,
      "sluice.http.origin: bad argument #1 (string expected, got number)")
  end)

  it("must be called from a task", function()
    local co = coroutine.create(function() return http.get("http://127.0.0.1:1/") end)
    local ok, err = coroutine.resume(co)
    assert.is_false(ok)
    assert.matches("not called from a task", err)
  end)
end)

describe("sluice.http observers", function()
  it("are told of every hop: URL, method, status or failure kind, and its time", function()
    local srv = assert(server.listen({ port = 0 }))
    srv:route("GET", "/go", function() return 302, "", { Location = "/here" } end)
    srv:route("GET", "/here", function() return 200, "ok" end)
    local gone = assert(server.listen({ port = 0 }))
    local gone_port = gone.port
    gone:close()
    local seen = {}
    local function watch(url, method, outcome, seconds)
      seen[#seen + 1] = { url, method, outcome, type(seconds) }
      if seconds then assert.is_true(seconds >= 0 and seconds < 30) end
    end
    http.add_observer(watch)
    http.add_observer(watch) -- once is enough
    finally(function()
      http.remove_observer(watch)
      srv:close()
    end)
    local base = "http://127.0.0.1:" .. srv.port
    assert.equal(200, assert(http.get(base .. "/go", { query = { a = 1 } })).status)
    assert.equal(404, assert(http.request({ method = "DELETE", url = base .. "/nope" })).status)
    assert.is_nil(http.get("http://127.0.0.1:" .. gone_port .. "/x", { timeout = 5 }))
    assert.same({
      { base .. "/go?a=1", "GET", 302, "number" },
      { base .. "/here", "GET", 200, "number" },
      { base .. "/nope", "DELETE", 404, "number" },
      { "http://127.0.0.1:" .. gone_port .. "/x", "GET", "connect", "nil" },
    }, seen)
    assert.is_true(http.remove_observer(watch))
    assert.is_false(http.remove_observer(watch))
    assert(http.get(base .. "/here"))
    assert.equal(4, #seen)
    assert.has_error(function() http.add_observer("watch") end,
      "sluice.http.add_observer: bad argument #1 (function expected, got string)")
  end)

  it("stands alone: loads the task runtime, its native half and pure helpers, no metrics", function()
    local loaded, real_require = package.loaded["sluice.http"], require
    local names = {}
    finally(function()
      _G.require = real_require
      package.loaded["sluice.http"] = loaded
    end)
    package.loaded["sluice.http"] = nil
    _G.require = function(name)
      names[#names + 1] = name
      return real_require(name)
    end
    local fresh = real_require("sluice.http")
    _G.require = real_require
    assert.are_not.equal(loaded, fresh)
    assert.same({ "sluice", "sluice._http", "sluice.json", "sluice.options", "sluice.headers" },
      names)
  end)
end)

-- Redirects and credentials (issue 14 item 2). Two sluice.server instances
-- on different loopback ports are two origins; each records what it saw.
describe("sluice.http redirects", function()
  local a, b

  local function origin()
    local o = { seen = {} }
    o.srv = assert(server.listen({ port = 0 }))
    o.port = o.srv.port
    function o.url(path) return "http://127.0.0.1:" .. o.port .. path end
    o.srv:route("*", "/*", function(req)
      o.seen[#o.seen + 1] = { method = req.method, path = req.path, headers = req.headers,
        body = req.body }
      if req.path == "/go" then
        return tonumber(req.query.code) or 302, "moved", { Location = req.query.to }
      elseif req.path == "/loop" then
        return 302, "again", { Location = "/loop" }
      elseif req.path:match("^/slow%d$") then
        sluice.sleep(0.25) -- a slow hop: the redirect timings under test
        local n = tonumber(req.path:sub(-1))
        if n < 3 then return 302, "", { Location = "/slow" .. (n + 1) } end
      end
      return 200, "landed"
    end)
    return o
  end

  -- one go hop: /go?to=<location>&code=<status>
  local function go(o, to, code)
    return o.url("/go?" .. http.encode_query({ to = to, code = code }))
  end

  local CREDS = {
    ["X-MBX-APIKEY"] = "k3y", Authorization = "Bearer t0ken", Cookie = "s=1",
    ["Proxy-Authorization"] = "Basic eDp5", ["X-Custom"] = "c",
    Accept = "application/json", ["User-Agent"] = "probe/1",
  }

  local function assert_no_credentials(h)
    assert.same({}, { h["x-mbx-apikey"], h.authorization, h.cookie,
      h["proxy-authorization"], h["x-custom"] })
  end

  before_each(function()
    a, b = origin(), origin()
  end)
  after_each(function()
    a.srv:close()
    b.srv:close()
  end)

  it("does not follow a redirect to another origin by default", function()
    local res, err, kind = http.get(go(a, b.url("/land")), { headers = CREDS })
    assert.is_nil(res)
    assert.equal("redirect", kind)
    assert.equal("redirect to another origin (http://127.0.0.1:" .. b.port
      .. ") not followed: redirects.cross_origin is false", err)
    assert.equal(0, #b.seen)
    assert.equal(1, #a.seen)
    assert.equal("k3y", a.seen[1].headers["x-mbx-apikey"])
  end)

  it("tells 127.0.0.1 and localhost apart (another host, another origin)", function()
    local res, err, kind = http.get(go(a, "http://localhost:" .. a.port .. "/land"),
      { headers = CREDS })
    assert.is_nil(res)
    assert.equal("redirect", kind)
    assert.equal("redirect to another origin (http://localhost:" .. a.port
      .. ") not followed: redirects.cross_origin is false", err)
    assert.equal(1, #a.seen)
  end)

  it("drops credentials on a cross-origin hop it was told to follow, and for good", function()
    local res = assert(http.get(go(a, b.url("/land")),
      { headers = CREDS, redirects = { cross_origin = true } }))
    assert.equal(200, res.status)
    assert.equal("landed", res.body)
    assert.equal(b.url("/land"), res.url)
    assert.equal(1, res.redirects)
    assert.equal("k3y", a.seen[1].headers["x-mbx-apikey"])
    assert.equal(1, #b.seen)
    assert_no_credentials(b.seen[1].headers)
    assert.equal("application/json", b.seen[1].headers.accept)
    assert.equal("probe/1", b.seen[1].headers["user-agent"])
    -- a -> b -> back to a: a third party chose that hop, so still none
    res = assert(http.get(go(a, go(b, a.url("/home"))),
      { headers = CREDS, redirects = { cross_origin = true } }))
    assert.equal(a.url("/home"), res.url)
    assert.equal(2, res.redirects)
    assert.equal(3, #a.seen)
    assert.equal("/home", a.seen[3].path)
    assert_no_credentials(a.seen[3].headers)
    assert_no_credentials(b.seen[2].headers)
  end)

  it("keeps every header on a same-origin redirect, resolving relative locations", function()
    local res = assert(http.get(go(a, "next?y=2"), { headers = CREDS }))
    assert.equal(a.url("/next?y=2"), res.url)
    assert.equal(1, res.redirects)
    assert.equal(2, #a.seen)
    local h = a.seen[2].headers
    assert.same({ "k3y", "Bearer t0ken", "s=1", "c" },
      { h["x-mbx-apikey"], h.authorization, h.cookie, h["x-custom"] })
    res = assert(http.get(go(a, "//127.0.0.1:" .. a.port .. "/abs")))
    assert.equal(a.url("/abs"), res.url)
  end)

  it("bounds redirect loops", function()
    local res, err, kind = http.get(a.url("/loop"))
    assert.is_nil(res)
    assert.equal("redirect", kind)
    assert.equal("too many redirects (more than 5)", err)
    assert.equal(6, #a.seen)
    a.seen = {}
    res, err, kind = http.get(a.url("/loop"), { redirects = { max = 2 } })
    assert.same({ nil, "too many redirects (more than 2)", "redirect" }, { res, err, kind })
    assert.equal(3, #a.seen)
    a.seen = {}
    res = assert(http.get(a.url("/loop"), { redirects = false }))
    assert.equal(302, res.status)
    assert.equal("/loop", res.headers.location)
    assert.equal(1, #a.seen)
    res = assert(http.get(a.url("/loop"), { redirects = { max = 0 } }))
    assert.same({ 302, 0 }, { res.status, res.redirects })
    assert.equal(2, #a.seen)
  end)

  it("turns POST into GET without a body on 301, 302 and 303; keeps both on 307 and 308", function()
    for _, code in ipairs({ 301, 302, 303 }) do
      a.seen = {}
      local res = assert(http.post(go(a, "/land", code), { json = { a = 1 } }))
      assert.equal(200, res.status)
      local second = a.seen[2]
      assert.same({ "POST", "GET", "", nil, nil },
        { a.seen[1].method, second.method, second.body, second.headers["content-type"],
          second.headers["content-length"] })
    end
    for _, code in ipairs({ 307, 308 }) do
      a.seen = {}
      local res = assert(http.request({ method = "PUT", url = go(a, "/land", code),
        body = "abc", headers = { ["Content-Type"] = "text/plain" } }))
      assert.equal(200, res.status)
      assert.same({ "PUT", "abc", "text/plain" },
        { a.seen[2].method, a.seen[2].body, a.seen[2].headers["content-type"] })
    end
    -- 303 makes a DELETE a GET too; 302 leaves it alone
    a.seen = {}
    assert(http.request({ method = "DELETE", url = go(a, "/land", 303) }))
    assert(http.request({ method = "DELETE", url = go(a, "/land", 302) }))
    assert.same({ "DELETE", "GET", "DELETE", "DELETE" },
      { a.seen[1].method, a.seen[2].method, a.seen[3].method, a.seen[4].method })
  end)

  it("never resends a body to another origin", function()
    local res, err, kind = http.post(go(a, b.url("/land"), 307),
      { body = "secret=1", redirects = { cross_origin = true } })
    assert.is_nil(res)
    assert.equal("redirect", kind)
    assert.equal("a 307 redirect to another origin (http://127.0.0.1:" .. b.port
      .. ") would resend the request body: not followed", err)
    assert.equal(0, #b.seen)
    -- a 303 drops the body, so that one may cross
    res = assert(http.post(go(a, b.url("/land"), 303),
      { body = "secret=1", redirects = { cross_origin = true } }))
    assert.same({ 200, "GET", "" }, { res.status, b.seen[1].method, b.seen[1].body })
  end)

  it("refuses other schemes and bad locations", function()
    local res, err, kind = http.get(go(a, "ftp://127.0.0.1/x"), { redirects = { cross_origin = true } })
    assert.is_nil(res)
    assert.same({ "redirect to an unsupported scheme (ftp) not followed", "redirect" }, { err, kind })
    res = assert(http.get(a.url("/go"))) -- a 302 without Location is the answer
    assert.equal(302, res.status)
    assert.equal(0, res.redirects)
  end)

  it("keeps one timeout for the request and all its hops", function()
    local t0 = sluice.now()
    local res, _, kind = http.get(a.url("/slow1"), { timeout = 0.6 })
    assert.is_nil(res)
    assert.equal("timeout", kind)
    assert.is_true(sluice.now() - t0 < 1.5)
    res = assert(http.get(a.url("/slow1"), { timeout = 5 }))
    assert.same({ 200, 2 }, { res.status, res.redirects })
    assert.is_true(res.timings.redirect >= 0.5)
    assert.is_true(res.timings.total >= 0.75)
  end)

  it("validates the redirects option", function()
    assert.has_error(function() http.get("http://x/", { redirects = true }) end,
      "sluice.http.get: option 'redirects' must be false or a table {max = n, cross_origin = boolean}, got true")
    assert.has_error(function() http.get("http://x/", { redirects = { max = -1 } }) end,
      "sluice.http.get: option 'redirects.max' must be an integer in [0, 2147483647], got -1")
    assert.has_error(function() http.get("http://x/", { redirects = { max = 1.5 } }) end,
      "sluice.http.get: option 'redirects.max' must be an integer in [0, 2147483647], got 1.5")
    assert.has_error(function() http.get("http://x/", { redirects = { max = 2 ^ 31 } }) end,
      "sluice.http.get: option 'redirects.max' must be an integer in [0, 2147483647], got 2147483648")
    assert.has_error(function() http.get("http://x/", { redirects = { cross_origin = 1 } }) end,
      "sluice.http.get: option 'redirects.cross_origin' must be a boolean, got number")
    assert.has_error(function() http.get("http://x/", { redirects = { follow = true } }) end,
      "sluice.http.get: unknown option 'redirects.follow'")
    assert.has_error(function() http.get("http://x/", { follow_redirects = false }) end,
      "sluice.http.get: option 'follow_redirects' is gone: use redirects = false or {max = n, cross_origin = true}")
  end)

  describe("from https", function()
    local tls
    setup(function()
      tls = require("support.nginx").start({
        ssl = true,
        locations = [[
          location = /land { return 200 "secure"; }
          location = /up { return 302 /land; }
          location /down/ { return 302 http://127.0.0.1:$arg_port/land; }
        ]],
      })
    end)
    teardown(function()
      if tls then tls:stop() end
    end)

    it("never follows a redirect down to http, even across origins allowed", function()
      local res = assert(http.get(tls:url("/up"), { insecure = true, headers = CREDS }))
      assert.same({ 200, "secure", 1 }, { res.status, res.body, res.redirects })
      assert.equal(tls:url("/land"), res.url)
      local err, kind
      res, err, kind = http.get(tls:url("/down/?port=" .. b.port),
        { insecure = true, headers = CREDS, redirects = { cross_origin = true } })
      assert.is_nil(res)
      assert.equal("redirect", kind)
      assert.equal("redirect from https to http (http://127.0.0.1:" .. b.port .. ") refused", err)
      assert.equal(0, #b.seen)
    end)
  end)
end)
