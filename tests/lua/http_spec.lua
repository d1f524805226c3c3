-- sluice.http against a real nginx on loopback.
local sluice = require "sluice"
local http = require "sluice.http"
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

  it("follows redirects by default, and not when told", function()
    local res = assert(http.get(nginx:url("/moved")))
    assert.equal(200, res.status)
    assert.equal(nginx:url("/doc.json"), res.url)
    res = assert(http.get(nginx:url("/moved"), { follow_redirects = false }))
    assert.equal(302, res.status)
    assert.matches("/doc.json$", res.headers.location)
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
    assert.same({ max_host_connections = 4, max_total_connections = 0 }, http.configure())
    http.configure({ max_host_connections = 0 })
  end)

  it("removes the transfer when its task is killed", function()
    local t = sluice.spawn(function() return http.get(nginx:url("/slow")) end)
    sluice.sleep(0.1)
    assert.equal("waiting", sluice.status(t))
    assert.equal(1, http.in_flight())
    assert.is_true(sluice.kill(t))
    assert.equal(0, http.in_flight())
    sluice.sleep(0.1) -- no late resume of the killed task
    assert.equal("killed", sluice.status(t))
    -- the client still works
    assert.equal(200, assert(http.get(nginx:url("/doc.json"))).status)
  end)
end)

describe("sluice.http arguments", function()
  it("validates options, naming the bad one", function()
    assert.has_error(function() http.request({ url = "http://x/", timout = 1 }) end,
      "sluice.http.request: unknown option 'timout'")
    assert.has_error(function() http.request({ url = "http://x/", timeout = "1" }) end,
      "sluice.http.request: option 'timeout' must be a number, got string")
    assert.has_error(function() http.request({ url = "http://x/", timeout = -1 }) end,
      "sluice.http.request: option 'timeout' must be a number > 0 (math.huge: no timeout)")
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
  end)

  it("escapes and encodes queries deterministically", function()
    assert.equal("a%20b%2Fc%3F%26%3D~-_.", http.escape("a b/c?&=~-_."))
    assert.equal("%C3%A9", http.escape("é"))
    assert.equal("a=1&b=true&c=x%2By&d=1.5", http.encode_query({ d = 1.5, c = "x+y", b = true, a = 1 }))
    assert.equal("", http.encode_query({}))
    assert.equal("k=1&k=2", http.encode_query({ k = { 1, 2 } }))
    assert.has_error(function() http.encode_query({ [1] = "x" }) end)
  end)

  it("must be called from a task", function()
    local co = coroutine.create(function() return http.get("http://127.0.0.1:1/") end)
    local ok, err = coroutine.resume(co)
    assert.is_false(ok)
    assert.matches("not called from a task", err)
  end)
end)
