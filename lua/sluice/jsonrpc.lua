--- sluice.jsonrpc: JSON-RPC 2.0 calls over a collector's request pipeline.
--
--   local jsonrpc = require "sluice.jsonrpc"
--   local rpc = jsonrpc.new(self, { path = "/" })       -- self: a collector instance
--   local head = assert(rpc:call("eth_blockNumber"))    -- params: [] by default
--   local n = jsonrpc.quantity(head)                    -- "0x12a61f2" -> 19554802
--   local out = assert(rpc:batch{
--     { "eth_getBlockByNumber", { jsonrpc.to_quantity(n), false } },
--     { "eth_chainId" },
--   })
--   -- out[i] = { result = v } or { error = message, code = n, data = v, kind = k }
--
-- Every request goes through the collector's pipeline (self:post: limiter,
-- breaker, retry; sluice.collector.request) with this module's classify, so
-- JSON-RPC errors act as verdicts there. The collector's own classify runs
-- after it and has the last word. What a reply means:
--   throttled (the limiter backs off as on a 429, the breaker counts a
--     failure, retried): HTTP 429; error code -32005 ("limit exceeded",
--     EIP-1474; Infura's "daily request count exceeded, request rate
--     limited"); code 429 (Alchemy: "Your app has exceeded its compute
--     units per second capacity", in a 200 or a 429); any error whose
--     message says "rate limit", "too many requests" or "limit exceeded" /
--     "limit reached" / "exceeded ... limit" (QuickNode -32007 "request
--     limit reached", Ankr -32090 "call rate limit exhausted").
--   failure, not retried (the breaker counts it): -32700 parse error,
--     -32600 invalid request, -32601 method not found, -32602 invalid
--     params, -32004 method not supported, -32006 JSON-RPC version not
--     supported; a reply that is no JSON-RPC response, or whose id is not
--     the request's (for a batch: a reply that is not an array, unless it is
--     one error object, which then counts as above for the whole batch).
--   failure, retried: HTTP 5xx (whatever the body), -32603 internal error,
--     -32002 resource unavailable (a node still syncing).
--   the call's own error (a success for the pipeline: the node answered
--     correctly, so the breaker counts a success and nothing is retried):
--     any other error object -- code 3 / -32000 "execution reverted" from
--     eth_call, -32000 "nonce too low", -32001 resource not found, ... --
--     returned to the caller as nil, message, "rpc", error_object.
-- A batch is one HTTP request and gets one verdict: throttled when any
-- entry is, else a retried failure when any entry is one (the whole batch is
-- sent again, with the same ids); other entries' errors, those not retried
-- included, are that entry's error and the batch succeeds.
--
-- jsonrpc.new(collector [, opts]) -> rpc. opts (all optional): path ("/";
--   a path on the collector's base_url, or an absolute URL), headers,
--   timeout, endpoint (the limiter's endpoint name; default the path), cost
--   (limiter cost of one call, default 1: a batch of n calls costs n × cost).
-- rpc:call(method [, params]) -> result | nil, err, kind [, error_object]
--   params: a table (default json.empty_array, sent as []; an empty table
--   would be sent as {}, which is JSON-RPC's by-name form), encoded by
--   sluice.json (exact numbers, json.null, json.numeral). result is the
--   decoded "result" (JSON null is json.null). kind: "rpc" (the node's
--   error object, the 4th value: {code, message, data}), the pipeline's
--   kinds ("throttled", "failure", "circuit_open", "timeout", ...), or
--   "protocol" (the reply is no JSON-RPC response for this request); on a
--   failure the node explained, the 4th value is its error object too.
-- rpc:batch(calls) -> entries | nil, err, kind. calls: a non-empty list of
--   { method [, params] }. entries[i] answers calls[i] (replies are matched
--   by id, in any order): { result = v }, or { error = message, kind = "rpc",
--   code = n, data = v } for an error object, or { error = message, kind =
--   "protocol" } when no reply (or two) carried its id. nil, err, kind when
--   the batch as a whole failed (see above).
-- Ids are integers, increasing per rpc object; a retry resends the same ids.
--
-- Hex quantities (EIP-1474: "0x" and hex digits, no leading zeros):
-- jsonrpc.quantity(hex) -> a Lua number when the value is at most 2^53,
--   else a uint64_t cdata up to 2^64-1, else (wei balances, 256-bit
--   values) a json.numeral of its decimal digits (sluice.bignum.from_hex),
--   which uint256 columns, sluice.bignum and json.encode take as it is.
--   Raises on what is no hex quantity.
-- jsonrpc.to_quantity(n) -> "0x..." (lower case, "0x0" for zero). n: an
--   integer number 0..2^53, an int64_t/uint64_t cdata >= 0, a string of
--   decimal digits or a json.numeral of an integer, up to 2^256-1 (beyond
--   2^64-1 through sluice.bignum.to_hex). Raises on anything else.
--
-- rpc:call and rpc:batch yield (they are collector requests): call them in
-- a task, e.g. in collect. The module owns no state; an rpc object owns its
-- id counter.
local ffi = require "ffi"
local bit = require "bit"
local json = require "sluice.json"
local bignum = require "sluice.bignum"
local options = require "sluice.options"

local _M = {}

local uint64_t, int64_t = ffi.typeof("uint64_t"), ffi.typeof("int64_t")
local istype = ffi.istype
local null = json.null
local empty_array = json.empty_array

local RPC = {}
local rpc_mt = { __index = RPC }

-- --- hex quantities -------------------------------------------------------

local TWO53 = 9007199254740992
-- (no 64-bit literals: the bytecode compiler has no FFI to parse them)
local TWO53_U = ffi.new(uint64_t, TWO53)
local TWO32_U = ffi.new(uint64_t, 4294967296)

function _M.quantity(hex)
  if type(hex) ~= "string" then
    error("sluice.jsonrpc.quantity: bad argument #1 (hex string expected, got " .. type(hex) .. ")", 2)
  end
  local digits = hex:match("^0[xX](%x+)$")
  if not digits then
    error("sluice.jsonrpc.quantity: bad argument #1 (\"0x\" and hex digits expected, got \""
      .. hex:sub(1, 80) .. "\")", 2)
  end
  digits = digits:gsub("^0+", "")
  if #digits > 16 then return json.numeral(bignum.from_hex(hex)) end
  if #digits <= 13 then return tonumber(digits, 16) or 0 end -- 52 bits: exact
  local hi, lo = digits:sub(1, -9), digits:sub(-8)
  local u = ffi.new(uint64_t, tonumber(hi, 16)) * TWO32_U + tonumber(lo, 16)
  if u <= TWO53_U then return tonumber(u) end
  return u
end

local UINT64_MAX_DIGITS = "18446744073709551615"

-- A string of decimal digits as a uint64_t, or nil beyond 2^64-1.
local function decimal_u64(s)
  s = s:gsub("^0+", "")
  if s == "" then return ffi.new(uint64_t, 0) end
  if #s > 20 or (#s == 20 and s > UINT64_MAX_DIGITS) then return nil end
  local u = ffi.new(uint64_t, 0)
  for i = 1, #s do u = u * 10 + (s:byte(i) - 48) end
  return u
end

function _M.to_quantity(n)
  local u
  local tn = type(n)
  if tn == "number" then
    if n ~= n or n < 0 or n > TWO53 or n % 1 ~= 0 then
      error("sluice.jsonrpc.to_quantity: bad argument #1 (an integer 0..2^53 expected, got "
        .. (json.number(n) or tostring(n)) .. "; beyond 2^53 pass a uint64_t cdata or decimal digits)", 2)
    end
    if n == 0 then return "0x0" end
    if n < 4294967296 then return string.format("0x%x", n) end
    u = ffi.new(uint64_t, n)
  elseif tn == "cdata" and istype(uint64_t, n) then
    u = n
  elseif tn == "cdata" and istype(int64_t, n) then
    if n < 0 then
      error("sluice.jsonrpc.to_quantity: bad argument #1 (a quantity is >= 0, got " .. tostring(n) .. ")", 2)
    end
    u = ffi.new(uint64_t, n)
  else
    local text = tn == "string" and n or json.numeral_text(n)
    if not text or not text:match("^%d+$") then
      error("sluice.jsonrpc.to_quantity: bad argument #1 (an integer >= 0 expected: a number, "
        .. "an int64/uint64 cdata, decimal digits or a json.numeral; got "
        .. (text and ("\"" .. text:sub(1, 80) .. "\"") or tn) .. ")", 2)
    end
    u = decimal_u64(text)
    if not u then
      if bignum.cmp(text, bignum.UINT256_MAX) > 0 then
        error("sluice.jsonrpc.to_quantity: bad argument #1 (beyond 2^256-1: " .. text:sub(1, 80) .. ")", 2)
      end
      return bignum.to_hex(text)
    end
  end
  local hex = bit.tohex(u, 16):gsub("^0+", "")
  return "0x" .. (hex == "" and "0" or hex)
end

-- --- verdicts ---------------------------------------------------------------

local NOT_RETRIED = {
  [-32700] = true, [-32600] = true, [-32601] = true, [-32602] = true,
  [-32004] = true, [-32006] = true,
}
local RETRIED = { [-32603] = true, [-32002] = true }

local function says_rate_limited(msg)
  msg = msg:lower()
  return msg:find("rate limit", 1, true) or msg:find("too many requests", 1, true)
    or msg:find("limit exceeded", 1, true) or msg:find("limit reached", 1, true)
    or msg:find("exceeded[^.]*limit") or msg:find("exceeded[^.]*capacity")
end

-- An error object's class: "throttled" | "fatal" (failure, not retried) |
-- "retry" (failure, retried) | "answer" (the call's own error).
local function class_of(e)
  local code, msg = e.code, type(e.message) == "string" and e.message or ""
  if code == -32005 or code == 429 or says_rate_limited(msg) then return "throttled" end
  if NOT_RETRIED[code] then return "fatal" end
  if RETRIED[code] then return "retry" end
  return "answer"
end

local function describe(method, e)
  local msg = type(e.message) == "string" and e.message or "(no message)"
  local out = (method and (method .. ": ") or "") .. "JSON-RPC error " .. tostring(e.code) .. ": " .. msg
  if type(e.data) == "string" then out = out .. " (" .. e.data:sub(1, 200) .. ")" end
  return out
end

-- A valid error object: a table with an integer code.
local function error_object(v)
  if type(v) == "table" and type(v.code) == "number" then
    return { code = v.code, message = v.message, data = v.data }
  end
end

-- The reply to one request with id `id`: result, nil | nil, error_object |
-- nil, nil, why (not a JSON-RPC response for it).
local function read_reply(r, id)
  if type(r) ~= "table" or r.jsonrpc ~= "2.0" then
    return nil, nil, "the reply is no JSON-RPC 2.0 response"
  end
  local e = error_object(r.error)
  if r.error ~= nil and r.error ~= null then
    if not e then return nil, nil, "the reply's error is no error object" end
    -- an error about the request itself may come with id null
    if r.id ~= id and r.id ~= null then
      return nil, nil, "the reply's id " .. tostring(r.id) .. " is not the request's (" .. id .. ")"
    end
    return nil, e
  end
  if r.id ~= id then
    return nil, nil, "the reply's id " .. tostring(r.id) .. " is not the request's (" .. id .. ")"
  end
  if r.result == nil then return nil, nil, "the reply has neither result nor error" end
  return r.result, nil
end

-- --- rpc objects -------------------------------------------------------------

local NEW_OPTIONS = {
  path = { type = "string", what = "a non-empty string", check = function(v) return v ~= "" end },
  headers = "table",
  timeout = { finite = true, gt = 0 },
  endpoint = "string",
  cost = { finite = true, gt = 0 },
}

function _M.new(c, opts)
  if type(c) ~= "table" or type(c.post) ~= "function" then
    error("sluice.jsonrpc.new: bad argument #1 (a collector instance expected, got " .. type(c) .. ")", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("sluice.jsonrpc.new: bad argument #2 (table of options expected, got " .. type(opts) .. ")", 2)
  end
  opts = opts or {}
  options.check("sluice.jsonrpc.new", opts, NEW_OPTIONS, 3)
  return setmetatable({
    c_ = c, path_ = opts.path or "/", headers_ = opts.headers, timeout_ = opts.timeout,
    endpoint_ = opts.endpoint, cost_ = opts.cost or 1, next_id_ = 1,
  }, rpc_mt)
end

local function check_params(fname, params, argn)
  if params ~= nil and type(params) ~= "table" then
    error("sluice.jsonrpc." .. fname .. ": bad argument #" .. argn
      .. " 'params' (table expected, got " .. type(params) .. ")", 3)
  end
  return params == nil and empty_array or params
end

local function take_ids(self, n)
  local first = self.next_id_
  self.next_id_ = first + n
  return first
end

local function post(self, body, classify, cost)
  return self.c_:post(self.path_, {
    json = body, headers = self.headers_, timeout = self.timeout_,
    endpoint = self.endpoint_, cost = cost, classify = classify,
  })
end

function RPC:call(method, params)
  if type(method) ~= "string" then
    error("sluice.jsonrpc.call: bad argument #1 'method' (string expected, got " .. type(method) .. ")", 2)
  end
  params = check_params("call", params, 2)
  local id = take_ids(self, 1)
  -- what the last reply said, read by classify and then here
  local last_err, last_why
  local function classify(_, res)
    last_err, last_why = nil, nil
    local r = res:json()
    local _, e, why = read_reply(r, id)
    if res.status == 429 then
      last_err = e
      return "throttled", e and describe(method, e) or nil
    end
    if res.status >= 500 then
      last_err = e
      return "failure", e and describe(method, e) or nil, true
    end
    if e then
      last_err = e
      local class = class_of(e)
      if class == "throttled" then return "throttled", describe(method, e) end
      if class == "fatal" then return "failure", describe(method, e), false end
      if class == "retry" then return "failure", describe(method, e), true end
      return "success" -- the node answered: the call's own error
    end
    if why then
      if res.status >= 200 and res.status < 300 then
        last_why = why
        return "failure", method .. ": " .. why, false
      end
      return nil -- a 4xx without a JSON-RPC error: the pipeline's verdict
    end
    return "success"
  end
  local data, err, kind = post(self, { jsonrpc = "2.0", id = id, method = method, params = params },
    classify, self.cost_)
  if data == nil then return nil, err, kind, last_err end
  if last_err then return nil, describe(method, last_err), "rpc", last_err end
  if last_why then return nil, method .. ": " .. last_why, "protocol" end
  local res = err
  local result = read_reply(res:json(), id)
  return result
end

function RPC:batch(calls)
  if type(calls) ~= "table" or #calls == 0 then
    error("sluice.jsonrpc.batch: bad argument #1 (a non-empty list of {method, params} expected)", 2)
  end
  local n = #calls
  local first = self.next_id_
  local body = json.array()
  for i = 1, n do
    local call = calls[i]
    if type(call) ~= "table" or type(call[1]) ~= "string" then
      error("sluice.jsonrpc.batch: bad argument #1 (call " .. i .. " is not {method [, params]})", 2)
    end
    body[i] = { jsonrpc = "2.0", id = first + i - 1, method = call[1],
      params = check_params("batch", call[2], "1 (call " .. i .. ")") }
  end
  take_ids(self, n)
  local entries, whole_err
  local function classify(_, res)
    entries, whole_err = nil, nil
    local r = res:json()
    if type(r) == "table" and r[1] == nil and next(r) ~= nil then
      -- one object for the whole batch: an error about all of it
      local e = r.jsonrpc == "2.0" and error_object(r.error)
      whole_err = e or nil
      if res.status == 429 then return "throttled", e and describe(nil, e) or nil end
      if res.status >= 500 then return "failure", e and describe(nil, e) or nil, true end
      if not e then return "failure", "JSON-RPC batch: the reply is not an array", false end
      local class = class_of(e)
      if class == "throttled" then return "throttled", describe(nil, e) end
      return "failure", describe(nil, e), class == "retry"
    end
    if res.status == 429 then return "throttled" end
    if res.status >= 500 then return "failure", nil, true end
    if type(r) ~= "table" then
      if res.status >= 200 and res.status < 300 then
        return "failure", "JSON-RPC batch: the reply is not an array", false
      end
      return nil
    end
    -- match the replies to the calls by id
    local by_id, twice = {}, {}
    for _, one in ipairs(r) do
      local id = type(one) == "table" and one.id
      if type(id) == "number" then
        if by_id[id] then twice[id] = true end
        by_id[id] = one
      end
    end
    entries = {}
    local worst = "success"
    local message
    for i = 1, n do
      local id, method = first + i - 1, calls[i][1]
      local one = by_id[id]
      if not one or twice[id] then
        entries[i] = { kind = "protocol", error = method .. ": " .. (one
          and ("two replies carry id " .. id) or ("no reply carries id " .. id)) }
      else
        local result, e, why = read_reply(one, id)
        if e then
          entries[i] = { error = describe(method, e), kind = "rpc", code = e.code, data = e.data }
          local class = class_of(e)
          if class == "throttled" then
            worst, message = "throttled", describe(method, e)
          elseif class == "retry" and worst ~= "throttled" then
            worst, message = "failure", describe(method, e)
          end
        elseif why then
          entries[i] = { kind = "protocol", error = method .. ": " .. why }
        else
          entries[i] = { result = result }
        end
      end
    end
    if worst == "failure" then return "failure", message, true end
    return worst, message
  end
  local data, err, kind = post(self, body, classify, self.cost_ * n)
  if data == nil then return nil, err, kind, whole_err end
  return entries
end

return _M
