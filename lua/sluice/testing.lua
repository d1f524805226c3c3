--- sluice.testing: a collector under test, against recorded responses.
--
-- A tester builds one collector instance against a temporary store (an
-- in-memory SQLite database) and a real HTTP server on 127.0.0.1 (a free
-- port) that answers with recorded responses; the collector's base_url
-- points at that server (keeping the path of the spec's base_url). It runs
-- one collection, or the backfill of a range, and returns the rows stored,
-- read back from the store, and the requests the server saw.
--
--   local testing = require "sluice.testing"
--   local t = testing.new{
--     collector = "examples/ticker_collector.lua",   -- a file, a shipped name or a spec
--     config = { symbols = { "BTCUSDT" } },           -- a configuration entry's overrides
--     responses = {
--       { path = "/api/v3/ticker/price", query = { symbol = "BTCUSDT" },
--         body = '{"symbol":"BTCUSDT","price":"73369.84000000"}' },
--     },
--   }
--   local rows, run = assert(t:collect())   -- rows.prices[1].price == 73369.84
--   t:close()
--
-- testing.new(opts) -> t. opts (checked; misuse raises):
--   collector  a spec (collector.define's), the path of a collector file
--              ("....lua", loaded as the configuration loads `file =`), or
--              the name of a shipped collector ("binance_klines")
--   config     the configuration entry's overrides (options, limiter,
--              retry, ...); base_url is always the server's
--   responses  a list of rules (below), tried in order
--   store      an open sluice.store db to use instead of a new in-memory
--              one (t:close() then leaves it open)
--   strict     default true: a run that made a request no rule answered,
--              or whose rows the store rejected, fails (below)
-- A rule answers the requests it matches:
--   path       the request's path, exactly (required)
--   method     "GET", "POST", ... (default: any)
--   query      {name = value}: each must be in the request's query with
--              that value (numbers, int64 cdata and booleans compared as
--              the HTTP client writes them); other parameters may be there
--   status     default 200
--   body       the answer's body (a string), or
--   json       a value sent as JSON (sluice.json: exact numbers), or
--   file       the path of a file whose bytes are the body (a fixture;
--              read when the rule is made)
--   headers    the answer's headers. The content-type is application/json
--              unless they name one
--   respond    function(req) -> status, body, headers: a dynamic answer
--              (req is sluice.server's: req.method, req.path, req.query,
--              req.headers, req.body, req:json()); body may be a table
--              (sent as JSON). Returning nothing passes the request on to
--              the next rule (a JSON-RPC rule per method). It runs in the
--              server's task and may yield (sluice.sleep)
--   times      the rule answers this many requests, then no more
--   delay      seconds to wait before answering (a slow upstream)
--   abort      true: close the connection without an answer
-- A request no rule answers gets 404 {"error": "no recorded response for
-- GET /path?query"} and is listed by t:unmatched(); so is one whose
-- respond function raised (answered 500, the error in its entry's error).
--
-- t:collect() -> rows, run | nil, err, run
--   One collection (collector:run_once, in the calling task), after the
--   spec's init on the first call (init runs until it succeeds once; its
--   failure is this call's: nil, "init failed: ..."). rows: {table_name =
--   every row of that table in the store, in key order} (t:rows). run:
--   {stored = rows the run stored, requests = the requests it made (as
--   t:requests), unmatched = those no rule answered, rejects = {table_name
--   = the rows the store rejected in it, {row, reason, ...}}}.
--   A collection that failed returns nil and its error (the collector's
--   message: "HTTP 500", "Binance error -1121: ..."), never raises; with
--   strict, so does a run with unmatched requests or rejected rows, and
--   the error then lists them. The rows stay readable (t:rows).
-- t:backfill(from, to [, opts]) -> rows, run | nil, err, run
--   A backfill of [from, to) through sluice.backfill (start, then wait):
--   windows planned as `sluice backfill` plans them (aligned to
--   backfill_step, per partition, skipping windows the store already
--   covers), one at a time, no shared claims; like `sluice backfill` it
--   does not call init. opts: partitions = {...} (some of the
--   collector's), force = true (refetch covered windows). run as collect's,
--   plus status = sluice.backfill's status of the job; a window that
--   failed fails the call (err: its error), and strict applies as above.
-- t:rows(table_name) -> the rows of a table the collector declares, read
--   back from the store (db:select), in key order.
-- t:requests() -> every request the server saw, in order: {method, path,
--   query (decoded), query_string (raw), headers (case-insensitive),
--   body, status (answered), matched (a rule answered)}.
-- t:unmatched() -> the requests no rule answered (and those whose respond
--   raised: entry.error).
-- t:respond(rule) -> t: a rule tried before all the others (an override
--   for the next requests, usually with times = n).
-- t:close() -> true: calls the spec's close (when init ran), closes the
--   server and the store it opened; idempotent. Everything a tester starts
--   stops here: close it in after_each, or use testing.with.
-- testing.with(opts, fn) -> fn(t)'s results: a tester for fn's duration,
--   closed when fn returns or raises (the error is raised again). busted
--   keeps only the last finally() of a test, so prefer this (or
--   after_each) to finally(function() t:close() end).
-- Fields for reading: t.collector (the instance), t.store, t.url (the
-- server's base URL).
--
-- collect, backfill and with yield (run them in a task: a busted spec run
-- by `sluice test`, a docs block); the others do not. The tester owns its
-- server, its store (unless given one) and its request log.
local server = require "sluice.server"
local store_mod = require "sluice.store"
local collector = require "sluice.collector"
local backfill = require "sluice.backfill"
local json = require "sluice.json"
local options = require "sluice.options"
local sluice = require "sluice"

local _M = {}
local Tester = {}
local mt = { __index = Tester }

local RULE = {
  path = {
    type = "string", required = true, what = "a path starting with /",
    check = function(v) return v:sub(1, 1) == "/" end,
  },
  method = "string", query = "table", status = { integer = true, min = 100, max = 599 },
  body = "string", json = "any", file = "string", headers = "table", respond = "function",
  times = { integer = true, min = 1 }, delay = { finite = true, min = 0 }, abort = "boolean",
}

local OPTIONS = {
  collector = { type = "table|string", required = true },
  config = "table", responses = "table", store = "table", strict = "boolean",
}

-- A query value as the HTTP client writes it (sluice.http).
local function query_text(v)
  local tv = type(v)
  if tv == "string" then return v end
  if tv == "number" then return json.number(v) or tostring(v) end
  if tv == "boolean" then return tostring(v) end
  return json.int64_text(v) or json.numeral_text(v) or tostring(v)
end

-- A rule, checked, its file read and its query written as text.
local function make_rule(r, where, level)
  if type(r) ~= "table" then
    error(where .. ": a rule must be a table, got " .. type(r), level)
  end
  options.check(where, r, RULE, level + 1)
  local n = (r.body ~= nil and 1 or 0) + (r.json ~= nil and 1 or 0) + (r.file ~= nil and 1 or 0)
    + (r.respond ~= nil and 1 or 0) + (r.abort and 1 or 0)
  if n > 1 then
    error(where .. ": a rule takes one of body, json, file, respond and abort", level)
  end
  local rule = { path = r.path, method = r.method and r.method:upper(), status = r.status or 200,
    headers = r.headers, respond = r.respond, left = r.times, delay = r.delay, abort = r.abort,
    body = r.body }
  if r.json ~= nil then
    local text, err = json.encode(r.json)
    if not text then error(where .. ": option 'json' cannot be encoded: " .. tostring(err), level) end
    rule.body = text
  elseif r.file then
    local f, err = io.open(r.file, "rb")
    if not f then error(where .. ": option 'file': " .. tostring(err), level) end
    rule.body = f:read("*a")
    f:close()
  end
  if r.query then
    rule.query = {}
    for k, v in pairs(r.query) do rule.query[k] = query_text(v) end
  end
  return rule
end

local function matches(rule, req)
  if rule.left == 0 or rule.path ~= req.path then return false end
  if rule.method and rule.method ~= req.method then return false end
  for k, v in pairs(rule.query or {}) do
    if req.query[k] ~= v then return false end
  end
  return true
end

local function with_type(headers)
  local out, typed = {}, false
  for k, v in pairs(headers or {}) do
    out[k] = v
    if k:lower() == "content-type" then typed = true end
  end
  if not typed then out["Content-Type"] = "application/json" end
  return out
end

local function describe_request(e)
  return e.method .. " " .. e.path .. (e.query_string ~= "" and "?" .. e.query_string or "")
    .. (e.error and " (respond raised: " .. e.error .. ")" or "")
end

-- The server's one handler: the first rule that answers, else 404.
local function handle(self, req)
  local entry = { method = req.method, path = req.path, query = req.query,
    query_string = req.query_string, headers = req.headers, body = req.body, matched = false }
  self.log_[#self.log_ + 1] = entry
  for _, rule in ipairs(self.rules_) do
    if matches(rule, req) then
      local status, body, headers = rule.status, rule.body, rule.headers
      local answered = true
      if rule.respond then
        local ok
        ok, status, body, headers = pcall(rule.respond, req)
        if not ok then
          -- a broken respond function is the spec's bug: said, not hidden
          entry.status, entry.error = 500, tostring(status)
          return 500, json.encode({ error = "respond raised: " .. entry.error }),
            { ["Content-Type"] = "application/json" }
        end
        if status == nil and body == nil then answered = false end
      end
      if answered then
        if rule.left then rule.left = rule.left - 1 end
        entry.matched = true
        if rule.delay then sluice.sleep(rule.delay) end
        if rule.abort then
          entry.status = "abort"
          req:abort()
          return
        end
        if type(body) == "table" then body = assert(json.encode(body)) end
        entry.status = status or 200
        return entry.status, body, with_type(headers)
      end
    end
  end
  entry.status = 404
  return 404, json.encode({ error = "no recorded response for " .. describe_request(entry) }),
    { ["Content-Type"] = "application/json" }
end

-- The collector's spec from opts.collector.
local function load_spec(v)
  if type(v) == "table" then
    if not collector.is_spec(v) then
      error("sluice.testing.new: option 'collector' must be a spec from collector.define", 4)
    end
    return v
  end
  if v:match("%.lua$") then
    local chunk, err = loadfile(v)
    if not chunk then error("sluice.testing.new: option 'collector': " .. err, 4) end
    local spec = chunk()
    if not collector.is_spec(spec) then
      error("sluice.testing.new: option 'collector': " .. v .. " must return collector.define{...}", 4)
    end
    return spec
  end
  local ok, spec = pcall(require, "collectors." .. v)
  if not ok then error("sluice.testing.new: option 'collector': " .. tostring(spec), 4) end
  return spec
end

--- new(opts) -> t (see above). Raises on misuse and when the server cannot
-- listen or the collector cannot be built.
function _M.new(opts)
  if type(opts) ~= "table" then
    error("sluice.testing.new: bad argument #1 (table of options expected, got " .. type(opts) .. ")", 2)
  end
  options.check("sluice.testing.new", opts, OPTIONS)
  local spec = load_spec(opts.collector)
  local rules = {}
  for i, r in ipairs(opts.responses or {}) do
    rules[i] = make_rule(r, "sluice.testing.new: responses[" .. i .. "]", 3)
  end
  local srv, err = server.listen({ host = "127.0.0.1", port = 0, name = "sluice.testing" })
  if not srv then error("sluice.testing.new: " .. tostring(err), 2) end
  local db, own_store = opts.store, false
  if not db then
    db = assert(store_mod.open(":memory:"))
    own_store = true
  end
  local self = setmetatable({ rules_ = rules, log_ = {}, srv_ = srv, own_store_ = own_store,
    strict_ = opts.strict ~= false, store = db, url = "http://127.0.0.1:" .. srv.port }, mt)
  srv:route("*", "/*", function(req) return handle(self, req) end)
  -- the path of the real base_url is kept: recorded paths are as on the wire
  local prefix = spec.base_url and spec.base_url:match("^%a[%w+.-]*://[^/]+(/.-)/?$") or ""
  local overrides = options.merge(opts.config, { base_url = self.url .. prefix })
  local ok, inst = pcall(collector.new, spec, overrides, { store = db })
  if not ok then
    self:close()
    error(tostring(inst), 2)
  end
  self.collector = inst
  return self
end

--- t:respond(rule) -> t: a rule tried before the others.
function Tester:respond(r)
  table.insert(self.rules_, 1, make_rule(r, "sluice.testing: respond", 3))
  return self
end

function Tester:requests()
  local out = {}
  for i, e in ipairs(self.log_) do out[i] = e end
  return out
end

function Tester:unmatched()
  local out = {}
  for _, e in ipairs(self.log_) do
    if not e.matched then out[#out + 1] = e end
  end
  return out
end

-- The declared tables' names, sorted.
local function table_names(c)
  local names = {}
  for name in pairs(c.config.tables or {}) do names[#names + 1] = name end
  table.sort(names)
  return names
end

function Tester:rows(tname)
  local def = (self.collector.config.tables or {})[tname]
  if not def then
    error("sluice.testing: rows: '" .. tostring(tname) .. "' is not one of the collector's tables", 2)
  end
  local order = {}
  for i, col in ipairs(def.key or {}) do order[i] = '"' .. col .. '"' end
  return assert(self.store:select(tname, #order > 0 and "ORDER BY " .. table.concat(order, ", ") or nil))
end

local function all_rows(self)
  local out = {}
  for _, name in ipairs(table_names(self.collector)) do out[name] = self:rows(name) end
  return out
end

-- The newest reject id per table: the rejects after it are a run's.
local function reject_marks(self)
  local marks = {}
  for _, name in ipairs(table_names(self.collector)) do
    local newest = self.store:rejects(name, 1)[1]
    marks[name] = newest and newest.id or 0
  end
  return marks
end

local REJECTS_READ = 100000

-- What a run did: its requests, those unmatched and its rejects.
local function run_report(self, first, marks)
  local run = { requests = {}, unmatched = {}, rejects = {} }
  for i = first, #self.log_ do
    local e = self.log_[i]
    run.requests[#run.requests + 1] = e
    if not e.matched then run.unmatched[#run.unmatched + 1] = e end
  end
  for _, name in ipairs(table_names(self.collector)) do
    local list = {}
    for _, r in ipairs(self.store:rejects(name, REJECTS_READ)) do
      if r.id > marks[name] then table.insert(list, 1, r) end -- oldest first
    end
    if #list > 0 then run.rejects[name] = list end
  end
  return run
end

-- The strict problems of a run, as one message, or nil.
local function problems(run)
  local parts = {}
  if #run.unmatched > 0 then
    local list = {}
    for i, e in ipairs(run.unmatched) do list[i] = describe_request(e) end
    parts[#parts + 1] = #list .. " request(s) with no recorded response (answered 404): "
      .. table.concat(list, ", ")
  end
  local names = {}
  for name in pairs(run.rejects) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local list = run.rejects[name]
    parts[#parts + 1] = #list .. " row(s) rejected in " .. name .. ", the first: " .. list[1].reason
      .. " (" .. (json.encode(list[1].row, true) or "?") .. ")"
  end
  if #parts == 0 then return nil end
  return table.concat(parts, "; ")
end

-- The end of collect and backfill: rows, run | nil, err, run.
local function finish(self, ok, err, run)
  local issue = problems(run)
  if not ok then
    return nil, issue and (tostring(err) .. "; " .. issue) or tostring(err), run
  end
  if issue and self.strict_ then return nil, issue, run end
  return all_rows(self), run
end

function Tester:collect()
  local c = self.collector
  if not self.inited_ and c.spec.init then
    local ok, err = xpcall(c.spec.init, debug.traceback, c)
    if not ok then return nil, "init failed: " .. tostring(err), { requests = {}, unmatched = {}, rejects = {} } end
  end
  self.inited_ = true
  local first, marks = #self.log_ + 1, reject_marks(self)
  local ok, result = c:run_once()
  local run = run_report(self, first, marks)
  if ok then run.stored = result end
  return finish(self, ok, result, run)
end

local BACKFILL_OPTIONS = { partitions = "table", force = "boolean" }

function Tester:backfill(from, to, opts)
  options.check("sluice.testing: backfill", opts, BACKFILL_OPTIONS)
  opts = opts or {}
  local first, marks = #self.log_ + 1, reject_marks(self)
  local id = backfill.start({ collector = self.collector, from = from, to = to,
    partitions = opts.partitions, force = opts.force, parallel = 1, shared = false, bar = false })
  local status = backfill.wait(id)
  local run = run_report(self, first, marks)
  run.status, run.stored = status, status.rows
  local err
  if status.state ~= "done" then
    local f = status.failed[1]
    err = "backfill " .. status.state .. ": " .. status.windows_failed .. " window(s) failed"
      .. (f and (", the first [" .. tostring(f.from) .. ", " .. tostring(f.to) .. "): " .. f.error) or "")
  end
  return finish(self, err == nil, err, run)
end

function Tester:close()
  if self.closed_ then return true end
  self.closed_ = true
  local c = self.collector
  if c and self.inited_ and c.spec.close then
    local ok, err = xpcall(c.spec.close, debug.traceback, c)
    if not ok then c.log.error("close failed", { error = tostring(err) }) end
  end
  self.srv_:close()
  if self.own_store_ then self.store:close() end
  return true
end

--- with(opts, fn) -> fn(t)'s results; t is closed whatever fn does.
function _M.with(opts, fn)
  if type(fn) ~= "function" then
    error("sluice.testing.with: bad argument #2 (function expected, got " .. type(fn) .. ")", 2)
  end
  local t = _M.new(opts)
  local res = { pcall(fn, t) }
  t:close()
  if not res[1] then error(res[2], 0) end -- as raised: busted's failures are tables
  return unpack(res, 2, table.maxn(res))
end

return _M
