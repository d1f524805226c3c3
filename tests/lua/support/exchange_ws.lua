--- support.exchange_ws: the mock exchange (support/exchange_ws.py: Binance
-- spot's and Bybit v5's public streams and REST on one port, and a
-- control endpoint) for the stream collectors' end-to-end spec and bench.
--
--   local mock = require("support.exchange_ws").start{ levels = 40 }
--   mock:ws()                      -- "ws://127.0.0.1:<port>" (the collectors' ws_url)
--   mock:base()                    -- "http://127.0.0.1:<port>" (their base_url)
--   mock:control("step", { ex = "binance", diffs = 5, drop = 3 })  -- the decoded answer
--   mock:stop()
--
-- The server is /usr/bin/python3 (Debian's, with python3-websockets); it
-- exits by itself after `lifetime` seconds (600). start and control must
-- run in a task (control is an HTTP request).
local http = require "sluice.http"
local json = require "sluice.json"
local wait_for = require("support.wait").wait_for

local _M = {}

local HERE = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local SCRIPT = HERE .. "exchange_ws.py"

local function sh(cmd)
  local rc = os.execute(cmd)
  return rc == 0 or rc == true
end

local function read_file(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local Mock = {}
Mock.__index = Mock

function Mock:ws() return "ws://127.0.0.1:" .. self.port end
function Mock:base() return "http://127.0.0.1:" .. self.port end

--- mock:control(cmd, query [, timeout]) -> the decoded JSON answer; raises
-- on a status other than 200.
function Mock:control(cmd, query, timeout)
  local q = {}
  for k, v in pairs(query or {}) do q[k] = tostring(v) end
  local res, err = http.get(self:base() .. "/control/" .. cmd, { query = q, timeout = timeout or 30 })
  if not res then error("control " .. cmd .. ": " .. tostring(err), 2) end
  if res.status ~= 200 then error("control " .. cmd .. ": HTTP " .. res.status .. " " .. res.body, 2) end
  return json.decode(res.body)
end

function Mock:stop()
  if self.pid then sh("kill -9 " .. self.pid .. " 2>/dev/null") end
  self.pid = nil
  sh("rm -rf " .. self.dir)
end

--- start{levels = 40, seed = 20, lifetime = 600} -> mock
function _M.start(opts)
  opts = opts or {}
  local p = io.popen("mktemp -d /tmp/sluice-exchange-ws.XXXXXX")
  local dir = p:read("*l")
  p:close()
  assert(dir and dir ~= "", "mktemp failed")
  sh(("/usr/bin/python3 %s --portfile %s/port --levels %d --seed %d --lifetime %d >%s/log 2>&1 &"):format(
    SCRIPT, dir, opts.levels or 40, opts.seed or 20, opts.lifetime or 600, dir))
  local line = wait_for("the mock exchange to listen", function() return read_file(dir .. "/port") end, 20, 0.02)
  local pid, port = line:match("^(%d+) (%d+)")
  return setmetatable({ dir = dir, pid = tonumber(pid), port = tonumber(port) }, Mock)
end

--- canon(text) -> a decimal's text without the zeros that do not change it
-- ("30000.10000000" -> "30000.1", "0.00000000" -> "0")
function _M.canon(s)
  s = tostring(s)
  if s:find(".", 1, true) then s = s:gsub("0+$", ""):gsub("%.$", "") end
  s = s:gsub("^0+(%d)", "%1")
  return s
end

--- levels(list) -> the list with each [price, size] as canonical text
function _M.levels(list)
  local out = {}
  for i, lv in ipairs(list) do out[i] = { _M.canon(lv[1]), _M.canon(lv[2]) } end
  return out
end

--- rss_kb() -> this process's resident set size in KiB
function _M.rss_kb()
  return tonumber(read_file("/proc/self/status"):match("VmRSS:%s*(%d+)"))
end

return _M
