-- sluice.http over HTTP/2 against a real nginx with http2 on loopback: one
-- connection, many streams; and how the client watches a kept-alive
-- connection between requests.
local sluice = require "sluice"
local http = require "sluice.http"
local wait_for = require("support.wait").wait_for

local DOC = '{"symbol":"BTCUSDT","price":97123.5}'
-- nginx writes one line per request: which connection carried it.
local LOG = [[
  log_format conn '$connection $server_protocol';
  types { application/json json; }
]]
local LOCATIONS = [[
  location = /doc.json { access_log conn.log conn; }
  location = /short { keepalive_timeout 100ms; try_files /doc.json =404; }
]]

local function log_lines(nginx)
  local f = io.open(nginx.dir .. "/conn.log")
  if not f then return {} end
  local lines = {}
  for line in f:lines() do lines[#lines + 1] = line end
  f:close()
  return lines
end

-- n requests started in the same tick from n tasks -> their results.
local function concurrently(n, url, opts)
  local tasks = {}
  for i = 1, n do
    tasks[i] = sluice.spawn(function() return assert(http.get(url, opts)) end)
  end
  local results = {}
  for i = 1, n do
    local ok, res = sluice.wait(tasks[i])
    assert(ok, res)
    results[i] = res
  end
  return results
end

-- n requests, one connection: every line of nginx's log names the same
-- connection and HTTP/2.0, and exactly one response opened a connection.
local function assert_one_connection(nginx, results, n)
  local fresh = 0
  for i = 1, n do
    assert.same({ 200, "2", DOC }, { results[i].status, results[i].http_version, results[i].body })
    if not results[i].reused then fresh = fresh + 1 end
  end
  assert.equal(1, fresh)
  local lines = wait_for("nginx's log of " .. n .. " requests", function()
    local l = log_lines(nginx)
    return #l == n and l
  end)
  local conn = lines[1]:match("^(%d+) HTTP/2%.0$")
  assert.is_string(conn)
  for i = 2, n do assert.equal(conn .. " HTTP/2.0", lines[i]) end
end

describe("sluice.http over HTTP/2", function()
  if not http.features().http2 then
    pending("libcurl without HTTP/2")
    return
  end

  describe("cleartext (h2c) with prior knowledge", function()
    local nginx
    setup(function()
      nginx = require("support.nginx").start({ http2 = true, http = LOG, locations = LOCATIONS,
        files = { ["doc.json"] = DOC } })
    end)
    teardown(function() if nginx then nginx:stop() end end)

    if http.features().h2c then
      it("sends 16 concurrent requests as streams of one connection, then more on it", function()
        local results = concurrently(16, nginx:url("/doc.json"), { http_version = "2-prior-knowledge" })
        assert_one_connection(nginx, results, 16)
        local res = assert(http.get(nginx:url("/doc.json"), { http_version = "2-prior-knowledge" }))
        assert.same({ 200, "2", true }, { res.status, res.http_version, res.reused })
      end)
    else
      -- libcurl 7.88 (Debian 12) sends the second request on a reused h2c
      -- connection wrong ("Error in the HTTP2 framing layer"): refused.
      it("refuses http_version = '2-prior-knowledge' with a libcurl that breaks it", function()
        local ok, err = pcall(http.get, nginx:url("/doc.json"), { http_version = "2-prior-knowledge" })
        assert.is_false(ok)
        assert.matches("sluice.http.get: http_version '2-prior-knowledge' needs libcurl 8.0.0 or later (this is "
          .. http.features().curl .. ", which breaks reused h2c connections)", err, 1, true)
      end)
    end
  end)

  describe("over TLS", function()
    local nginx
    setup(function()
      nginx = require("support.nginx").start({ ssl = true, http2 = true, http = LOG,
        locations = LOCATIONS, files = { ["doc.json"] = DOC } })
    end)
    teardown(function() if nginx then nginx:stop() end end)

    -- Before PIPEWAIT, each of the 16 opened its own connection (no
    -- stream could wait for the first connection's ALPN answer).
    it("speaks HTTP/2 when the server offers it, 16 concurrent requests on one connection", function()
      local results = concurrently(16, nginx:url("/doc.json"), { insecure = true })
      assert_one_connection(nginx, results, 16)
    end)

    it("speaks HTTP/1.1 when asked to with http_version = '1.1'", function()
      local res = assert(http.get(nginx:url("/short"), { insecure = true, http_version = "1.1" }))
      assert.same({ 200, "1.1", DOC }, { res.status, res.http_version, res.body })
    end)
  end)

  it("rejects an http_version it does not know, naming the option", function()
    local ok, err = pcall(http.get, "http://127.0.0.1:1/", { http_version = "3" })
    assert.is_false(ok)
    assert.matches("sluice.http.get: option 'http_version' must be '1.1', '2' or '2-prior-knowledge', got '3'",
      err, 1, true)
  end)
end)

-- The socket of a kept-alive connection stays watched between requests
-- (curl says "remove" as a transfer ends and "add" as the next starts);
-- these make sure that costs nothing when the server closes it meanwhile.
describe("sluice.http's idle connections", function()
  local nginx
  setup(function()
    nginx = require("support.nginx").start({ http = LOG, locations = LOCATIONS,
      files = { ["doc.json"] = DOC } })
  end)
  teardown(function() if nginx then nginx:stop() end end)

  -- Our sockets to nginx's port in CLOSE_WAIT: nginx closed them, we have not.
  local function closed_by_server()
    local f = assert(io.open("/proc/net/tcp"))
    local n = 0
    local port = string.format("%04X", nginx.port)
    for line in f:lines() do
      local rport, state = line:match("^%s*%d+: %x+:%x+ %x+:(%x+) (%x+)")
      if rport == port and state == "08" then n = n + 1 end
    end
    f:close()
    return n
  end

  it("does not spin on a connection the server closed, and opens a new one for the next request", function()
    local first = assert(http.get(nginx:url("/short")))
    assert.equal(200, first.status)
    wait_for("nginx to close the idle connection", function() return closed_by_server() == 1 end)
    -- A watch left on the closed socket would wake the loop without end:
    -- the process would burn the whole window.
    local cpu0 = os.clock()
    sluice.sleep(0.3)
    assert.is_true(os.clock() - cpu0 < 0.05, "CPU used while idle: " .. (os.clock() - cpu0))
    for _ = 1, 3 do
      local res = assert(http.get(nginx:url("/doc.json")))
      assert.same({ 200, DOC }, { res.status, res.body })
    end
    assert.equal(0, closed_by_server())
  end)
end)
