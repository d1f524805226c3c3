-- fuzz_admin: the admin API's request handling (sluice.admin on
-- sluice.server), driven in-process without sockets.
--
-- sluice.server's native half (sluice._server, evhttp) is replaced, before
-- sluice.server is first required, by a stand-in whose listen() keeps the
-- dispatch function and whose exchange records the reply. So each input
-- runs the real routing, request decoding, access policy, handlers,
-- redaction and reply building of server.lua and admin.lua. The app is
-- built from a temp configuration: one collector (no HTTP: it returns a
-- row) on an in-memory store, admin token "fuzz-token".
--
-- Input: HTTP-like text. Line 1: "METHOD TARGET" (TARGET = path[?query]);
-- then "name: value" header lines up to an empty line; then the body.
-- A method outside the set evhttp delivers becomes one of them.
-- Invariants: exactly one reply; status an integer in [100, 599] and never
-- 500 (a handler that raised); header names are tokens and values have no
-- CR, LF or NUL; a JSON content-type means a body that decodes as JSON.
local cjson = require "cjson.safe"

local captured -- the dispatch function sluice.server hands to listen()

local fake_core = {
  close = function() return true end,
  stats = function() return { requests = 0, active = 0, open = true, closed = false } end,
}
package.preload["sluice._server"] = function()
  return {
    -- listen(host, port, opts, dispatch): the dispatch function is the
    -- last argument, whatever comes before it
    listen = function(...)
      local args = { ... }
      for i = select("#", ...), 1, -1 do
        if type(args[i]) == "function" then captured = args[i] break end
      end
      return setmetatable({}, { __index = fake_core }), 18080
    end,
  }
end
assert(package.loaded["sluice.server"] == nil, "fuzz_admin: sluice.server loaded too early")

local log = require "sluice.log"
local app_mod = require "sluice.app"
local admin = require "sluice.admin"

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local p = assert(io.popen("mktemp -d"))
local dir = p:read("*l")
p:close()
write(dir .. "/feed.lua", [[
local collector = require "sluice.collector"
return collector.define({
  name = "feed", interval = 3600, limiter = false, retry = false,
  tables = { ticks = { columns = { id = "integer", tag = "text" }, key = { "id" } } },
  collect = function() return { ticks = { { id = 1, tag = "x" } } } end,
})
]])
local CONFIG = [[
return {
  store = ":memory:", name = "fuzz",
  admin = { host = "127.0.0.1", port = 0, token = "fuzz-token", hosts = { "fuzz.example" } },
  collectors = { { file = "feed.lua" } },
}
]]
write(dir .. "/sluice.lua", CONFIG)
local file = dir .. "/sluice.lua"
local app = app_mod.build(assert(loadfile(file))(), file, { env = {} })
assert(admin.start(app, app.config.admin, app_mod.reload))
assert(captured, "fuzz_admin: admin.start did not listen")
-- the files stay: /reload reads them; the OS temp cleaner removes the dir
log.level("none")

-- FUZZ_TRACE=1: each request and its status on stderr (to check seeds)
local TRACE = os.getenv("FUZZ_TRACE") ~= nil

local METHODS = { "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH" }
local KNOWN = {}
for _, m in ipairs(METHODS) do KNOWN[m] = true end
local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"

local function finding(msg, detail)
  error("invariant broken: " .. msg .. (detail ~= nil and (": " .. tostring(detail)) or ""), 0)
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The request as lua_server.c hands it over.
local function parse(input)
  local head, body = input:match("^(.-)\n\n(.*)$")
  if not head then head, body = input, "" end
  local lines = {}
  for line in (head .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  local method, target = (lines[1] or ""):match("^(%S*) ?(.*)$")
  method = method and method:upper() or "GET"
  if not KNOWN[method] then method = METHODS[#method % #METHODS + 1] end
  target = target or "/"
  local path, query = target:match("^([^?]*)%??(.*)$")
  if path == "" then path = "/" end
  local headers = {}
  for i = 2, #lines do
    local name, value = lines[i]:match("^([^:]+):%s*(.-)%s*$")
    if name and #name < 256 and not value:find("[%z\r]") and not name:find("[%z\r]") then
      name = name:lower()
      headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
    end
  end
  return {
    method = method, uri = target, path = unescape(path), query = query, headers = headers,
    body = body, remote_ip = "127.0.0.1", remote_port = 40000, remote_addr = "127.0.0.1:40000",
  }
end

-- The exchange: what dispatch answers through.
local function exchange()
  local x = { state_ = "new", replies = 0 }
  function x.respond(self, status, flat, body)
    self.replies = self.replies + 1
    self.status, self.flat, self.body, self.state_ = status, flat, body, "answered"
    return true
  end
  function x.start(self, status, flat)
    if self.state_ ~= "new" then return nil, "answered" end
    self.status, self.flat, self.body, self.state_ = status, flat, "", "streaming"
    return true
  end
  function x.write(self, chunk)
    if self.state_ ~= "streaming" then return nil, "answered" end
    self.body = self.body .. chunk
    return true
  end
  function x.finish(self)
    if self.state_ ~= "streaming" then return nil, "answered" end
    self.replies, self.state_ = self.replies + 1, "answered"
    return true
  end
  function x.abort(self)
    self.state_ = "closed"
    return true
  end
  function x.state(self) return self.state_ end
  return x
end

return function(input)
  local info = parse(input)
  local x = exchange()
  captured(x, info)
  if x.replies ~= 1 then finding(info.method .. " " .. info.path .. ": " .. x.replies .. " replies") end
  local st = x.status
  if type(st) ~= "number" or st ~= math.floor(st) or st < 100 or st > 599 then
    finding("bad status", st)
  end
  if TRACE then io.stderr:write(info.method, " ", info.uri, " -> ", tostring(st), " ", x.body:sub(1, 120), "\n") end
  if st == 500 then finding(info.method .. " " .. info.path .. ": 500 (a handler raised)", x.body) end
  local flat, ctype = x.flat or {}, nil
  if #flat % 2 ~= 0 then finding("odd header list") end
  for i = 1, #flat, 2 do
    local k, v = flat[i], flat[i + 1]
    if type(k) ~= "string" or not k:find(TOKEN) then finding("bad header name", k) end
    if type(v) ~= "string" or v:find("[%z\r\n]") then finding("bad header value for " .. k, v) end
    if k:lower() == "content-type" then ctype = v end
  end
  if type(x.body) ~= "string" then finding("body is a " .. type(x.body)) end
  if ctype and ctype:lower():find("^application/json") then
    local v, err = cjson.decode(x.body)
    if v == nil then finding(info.method .. " " .. info.path .. ": JSON body does not decode", err) end
  end
end
