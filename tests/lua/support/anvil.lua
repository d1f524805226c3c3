--- support.anvil: a real Ethereum node (Foundry's anvil) on a loopback port,
-- for the on-chain collectors' specs, integration scripts and benchmarks.
--
--   local anvil = require "support.anvil"
--   local node = anvil.start{ block_time = 1, chain_id = 42161 }
--   node.url                                   -- "http://127.0.0.1:PORT"
--   local head = node:rpc("eth_blockNumber")   -- a result, or raises with the node's error
--   local r = node:try("txpool_status")        -- result | nil, err, error_object
--   node:stop()                                -- SIGTERM, then SIGKILL; removes its dir
--
-- start(opts): block_time (seconds; nil: automine, a block per transaction),
-- chain_id, no_mining (true: no blocks until evm_mine / anvil_mine),
-- args (a string appended to the command line: "--gas-limit 300000000").
-- The node listens on port 0 and the port is read from its log ("Listening
-- on 127.0.0.1:PORT"), so no two nodes ever race for a port. Starting blocks
-- the loop for the ~100 ms anvil takes to bind; node:rpc yields (sluice.http),
-- so call it in a task (every spec runs in one).
--
-- The binary: $SLUICE_ANVIL, else tests/tools/node_modules/... (installed by
-- `scripts/dev.sh deps` from tests/tools/package-lock.json; specs run from the
-- repository's root), else `anvil` on PATH.
--
-- Accounts: anvil's ten dev accounts are unlocked, so eth_sendTransaction
-- from node.accounts[i] needs no signing (node:send_eth does one transfer).
local http = require "sluice.http"
local json = require "sluice.json"

local _M = {}

local LOCAL_BIN = "tests/tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"

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

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- binary() -> path of the anvil executable, or raises saying how to get it.
function _M.binary()
  local env = os.getenv("SLUICE_ANVIL")
  if env and env ~= "" then return env end
  if sh("test -x " .. LOCAL_BIN) then return LOCAL_BIN end
  if sh("command -v anvil >/dev/null 2>&1") then return "anvil" end
  error("anvil not found: run `scripts/dev.sh deps` (installs it from the npm registry into "
    .. "tests/tools), or set SLUICE_ANVIL to an anvil binary", 2)
end

local Node = {}
Node.__index = Node

function _M.start(opts)
  opts = opts or {}
  local bin = _M.binary()
  local p = io.popen("mktemp -d /tmp/sluice-anvil.XXXXXX")
  local dir = p:read("*l")
  p:close()
  assert(dir and dir ~= "", "mktemp failed")
  local args = { "--host 127.0.0.1", "--port 0" }
  if opts.block_time then args[#args + 1] = "--block-time " .. tostring(opts.block_time) end
  if opts.chain_id then args[#args + 1] = string.format("--chain-id %d", opts.chain_id) end
  if opts.no_mining then args[#args + 1] = "--no-mining" end
  if opts.args then args[#args + 1] = opts.args end
  local log = dir .. "/anvil.log"
  local cmd = string.format("%s %s > %s 2>&1 & echo $!", shell_quote(bin), table.concat(args, " "),
    shell_quote(log))
  p = io.popen(cmd)
  local pid = tonumber(p:read("*l"))
  p:close()
  assert(pid, "could not start anvil")
  local node = setmetatable({ pid = pid, dir = dir, log = log, id = 0 }, Node)
  for _ = 1, 500 do -- 10 s at most
    local text = read_file(log) or ""
    local port = text:match("Listening on 127%.0%.0%.1:(%d+)")
    if port then
      node.port = tonumber(port)
      node.url = "http://127.0.0.1:" .. port
      break
    end
    if not sh("kill -0 " .. pid .. " 2>/dev/null") then
      node:stop()
      error("anvil exited at start: " .. text:sub(1, 2000))
    end
    sh("sleep 0.02")
  end
  if not node.url then
    node:stop()
    error("anvil did not listen within 10 s")
  end
  node.accounts = node:rpc("eth_accounts")
  return node
end

--- node:try(method [, params]) -> result | nil, err, error_object
function Node:try(method, params)
  self.id = self.id + 1
  local res, err = http.post(self.url, {
    json = { jsonrpc = "2.0", id = self.id, method = method, params = params or json.empty_array },
    timeout = 60,
  })
  if not res then return nil, method .. ": " .. tostring(err) end
  local ok, body = pcall(json.decode, res.body)
  if not ok or type(body) ~= "table" then
    return nil, method .. ": HTTP " .. res.status .. ": " .. res.body:sub(1, 200)
  end
  if body.error then
    return nil, method .. ": " .. tostring(body.error.message), body.error
  end
  return body.result
end

--- node:rpc(method [, params]) -> result; raises on any error.
function Node:rpc(method, params)
  local r, err = self:try(method, params)
  if err then error(err, 2) end
  return r
end

--- node:send_eth(from_index, to_index, wei) -> tx hash (wei: a number or
-- a decimal string; sent as a hex quantity).
function Node:send_eth(from_i, to_i, wei)
  local v = require("sluice.jsonrpc").to_quantity(wei or 1)
  return self:rpc("eth_sendTransaction",
    { { from = self.accounts[from_i], to = self.accounts[to_i], value = v } })
end

--- node:stop(): SIGTERM, waits up to 2 s, then SIGKILL; removes its dir.
function Node:stop()
  if self.pid then
    sh("kill " .. self.pid .. " 2>/dev/null")
    for _ = 1, 100 do
      if not sh("kill -0 " .. self.pid .. " 2>/dev/null") then break end
      sh("sleep 0.02")
    end
    sh("kill -9 " .. self.pid .. " 2>/dev/null")
    self.pid = nil
  end
  if self.dir then
    sh("rm -rf " .. shell_quote(self.dir))
    self.dir = nil
  end
end

return _M
