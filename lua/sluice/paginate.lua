--- sluice.paginate: fetching every page of a paged API through a collector.
--
-- Three shapes, each one call that requests page after page through the
-- collector's pipeline (self:get: limiter, breaker, retry apply to every
-- page) and returns all the rows, in the order the pages brought them:
--
--   -- a time cursor (Binance klines): startTime advances to the last row's time + 1
--   local rows = assert(paginate.time(self, "/api/v3/klines", {
--     query = { symbol = "BTCUSDT", interval = "1h" },
--     from = 1706628191000, to = 1706641199999, limit = 1000, time = 1,
--   }))
--   -- an opaque cursor (Bybit v5): cursor=<result.nextPageCursor> until it is empty
--   local rows = assert(paginate.cursor(self, "/v5/market/instruments-info", {
--     query = { category = "option", limit = 500 },
--     rows = "result.list", next = "result.nextPageCursor",
--   }))
--   -- a descending integer cursor (MEV-Boost relay Data API): cursor=<lowest slot seen - 1>
--   local rows = assert(paginate.descending(self,
--     "/relay/v1/data/bidtraces/proposer_payload_delivered",
--     { limit = 200, key = "slot", floor = 9000000 }))
--
-- paginate.time(c, path, opts) -> rows, info | nil, err, kind, partial
--   opts.from (required) the first page's start, sent as start_param
--   ("startTime"); opts.to, when given, is sent as end_param ("endTime")
--   on every page and bounds the rows (a row after it is dropped and ends
--   the walk). opts.time: where a row's time is (a key, default 1, as in
--   Binance's kline arrays, or a function(row) -> time); its value is a
--   number or decimal digits. The next page starts at the last row's time +
--   opts.step (1). Rows before the page's start (or not after the last
--   row kept) are dropped, so no row comes twice. The walk ends on an empty
--   page, a page shorter than opts.limit, or when the next start passes to.
-- paginate.cursor(c, path, opts) -> rows, info | nil, err, kind, partial
--   Each page's opts.next (required: a dotted path into the page's data,
--   "result.nextPageCursor", or a function(data, res)) is sent as
--   opts.param ("cursor") on the next request; the first request sends
--   opts.from when given, else no cursor. The walk ends when the next
--   cursor is nil, "" or JSON null; a cursor that comes back again is an
--   error (kind "protocol": the API would loop). opts.key (optional: a key
--   or function(row)) names a row's identity: a row whose identity came
--   already is dropped.
-- paginate.descending(c, path, opts) -> rows, info | nil, err, kind, partial
--   For APIs that page backwards by an integer (a relay's slot): the first
--   request sends opts.from as opts.param ("cursor") when given (else no
--   cursor: the newest page), every next one the lowest key seen minus 1.
--   opts.key (required: a key, "slot", or a function(row)) is a row's
--   integer, a number or decimal digits; it must be unique per row (one
--   delivered payload per slot), since the next page starts below the
--   lowest. Rows above the cursor sent, or already seen, are dropped;
--   rows below opts.floor are dropped and end the walk. The walk ends on
--   an empty page, a page shorter than opts.limit, or below floor.
-- Options of all three: opts.query (the request's other parameters, the
-- same on every page), opts.limit (the page size, sent as limit_param,
-- "limit", unless limit_param = false; required for time and descending:
-- a short page is the last), opts.rows (where a page's rows are: a dotted
-- path, a function(data, res), default the data itself, which must be a
-- list), opts.max_pages (100), opts.request (other request options:
-- headers, endpoint, cost, timeout, classify).
--
-- rows, info: every row, in page order; info = { pages = n } (the pages
-- fetched).
-- nil, err, kind, partial: a page failed (kind: the pipeline's, e.g.
-- "throttled" once retries are spent, "circuit_open"), or a page was not
-- what the shape expects (kind "protocol": no rows list, a row without a
-- time or key, a full page that brings nothing new, a cursor repeated), or
-- opts.max_pages pages were fetched before the end (kind "max_pages").
-- The rows fetched so far are never returned as if complete: partial = {
-- rows = the rows of the pages before, pages = n, cursor = the value the
-- next request would send (resume there) }.
--
-- The calls yield (collector requests): call them in a task (collect). The
-- module owns no state.
local json = require "sluice.json"
local options = require "sluice.options"

local _M = {}

local null = json.null
local merge = options.merge

local REQUEST_OPTIONS = {
  headers = "table", endpoint = "string", cost = { finite = true, gt = 0 },
  timeout = { finite = true, gt = 0 }, classify = "function", pools = "table",
}

local WHERE = { type = "string|function", what = "a dotted path or a function" }
local KEY = { type = "string|number|function", what = "a key or a function" }

local COMMON = {
  query = "table",
  limit = { integer = true, min = 1 },
  limit_param = { type = "string|boolean", what = "a string or false",
    check = function(v) return v ~= true end },
  rows = WHERE,
  max_pages = { integer = true, min = 1 },
  request = { type = "table", fields = REQUEST_OPTIONS },
}

local function schema(extra)
  local s = merge(COMMON, nil)
  for k, v in pairs(extra) do s[k] = v end
  return s
end

local TIME = schema{
  from = { type = "number|string", required = true },
  to = "number|string",
  time = KEY,
  step = { finite = true, gt = 0 },
  start_param = "string",
  end_param = "string",
}
TIME.limit = { integer = true, min = 1, required = true }

local CURSOR = schema{
  next = merge(WHERE, { required = true }),
  from = "string|number",
  param = "string",
  key = KEY,
}

local DESCENDING = schema{
  key = merge(KEY, { required = true }),
  from = "number|string",
  floor = "number|string",
  param = "string",
}
DESCENDING.limit = { integer = true, min = 1, required = true }

-- A dotted path ("result.list") or a function, read from a page.
local function reader(where)
  if type(where) == "function" then return where end
  local keys = {}
  for k in where:gmatch("[^.]+") do keys[#keys + 1] = k end
  return function(data)
    local v = data
    for _, k in ipairs(keys) do
      if type(v) ~= "table" then return nil end
      v = v[k]
    end
    return v
  end
end

-- A row's value at key (a key or a function) as a number, or nil.
local function number_at(key, row)
  local v
  if type(key) == "function" then
    v = key(row)
  elseif type(row) == "table" then
    v = row[key]
  end
  if type(v) == "string" and v:match("^%-?%d+%.?%d*$") then return tonumber(v) end
  if type(v) == "number" and v == v then return v end
  return nil
end

local function check(fname, c, path, opts, spec)
  if type(c) ~= "table" or type(c.get) ~= "function" then
    error("sluice.paginate." .. fname .. ": bad argument #1 (a collector instance expected, got "
      .. type(c) .. ")", 3)
  end
  if type(path) ~= "string" then
    error("sluice.paginate." .. fname .. ": bad argument #2 'path' (string expected, got " .. type(path) .. ")", 3)
  end
  if type(opts) ~= "table" then
    error("sluice.paginate." .. fname .. ": bad argument #3 (table of options expected, got " .. type(opts) .. ")", 3)
  end
  options.check("sluice.paginate." .. fname, opts, spec, 4)
end

-- The walk shared by the three shapes. shape(state, list, data, res) takes
-- one page's rows into state.rows and returns whether the walk goes on (and
-- sets state.cursor), or nil, err for a page that is not what it expects.
local function walk(c, path, opts, state, shape)
  local rows_of = opts.rows and reader(opts.rows) or function(data) return data end
  local max_pages = opts.max_pages or 100
  local limit_param = opts.limit_param == nil and "limit" or opts.limit_param
  state.rows, state.pages = {}, 0
  local function partial() return { rows = state.rows, pages = state.pages, cursor = state.cursor } end
  while true do
    if state.pages >= max_pages then
      return nil, "paginate: " .. path .. ": stopped after " .. max_pages .. " pages (max_pages) "
        .. "before the last page", "max_pages", partial()
    end
    local query = merge(opts.query, state.params())
    if opts.limit and limit_param then query[limit_param] = opts.limit end
    local data, res, kind = c:get(path, merge(opts.request, { query = query }))
    if data == nil then
      return nil, res, kind, partial()
    end
    local list = rows_of(data, res)
    if type(list) ~= "table" or (next(list) ~= nil and list[1] == nil) then
      return nil, "paginate: " .. path .. ": page " .. (state.pages + 1) .. " has no list of rows",
        "protocol", partial()
    end
    local before = #state.rows
    local more, err = shape(state, list)
    if more == nil then
      for i = #state.rows, before + 1, -1 do state.rows[i] = nil end -- not this page's
      return nil, "paginate: " .. path .. ": " .. err, "protocol", partial()
    end
    state.pages = state.pages + 1
    if more and opts.limit and #list >= opts.limit and #state.rows == before then
      return nil, "paginate: " .. path .. ": page " .. state.pages .. " is full but brings no new row",
        "protocol", partial()
    end
    if not more or #list == 0 or (opts.limit and #list < opts.limit) then
      return state.rows, { pages = state.pages }
    end
  end
end

function _M.time(c, path, opts)
  check("time", c, path, opts, TIME)
  local start = tonumber(opts.from)
  local stop = opts.to ~= nil and tonumber(opts.to) or nil
  if not start or (opts.to ~= nil and not stop) then
    error("sluice.paginate.time: options 'from' and 'to' must be numbers or decimal digits", 2)
  end
  local key, step = opts.time or 1, opts.step or 1
  local start_param, end_param = opts.start_param or "startTime", opts.end_param or "endTime"
  local last -- the time of the last row kept
  local state = { cursor = start }
  state.params = function()
    local q = { [start_param] = state.cursor }
    if stop then q[end_param] = stop end
    return q
  end
  return walk(c, path, opts, state, function(st, list)
    local out = st.rows
    for i, row in ipairs(list) do
      local t = number_at(key, row)
      if not t then return nil, "page " .. (st.pages + 1) .. " row " .. i .. " has no time" end
      if stop and t > stop then
        st.cursor = nil
        return false
      end
      if t >= st.cursor and (last == nil or t > last) then
        out[#out + 1] = row
        last = t
      end
    end
    if last then st.cursor = math.max(st.cursor, last + step) end
    return not (stop and st.cursor > stop)
  end)
end

local function empty_cursor(v)
  return v == nil or v == null or v == "" or v == false
end

function _M.cursor(c, path, opts)
  check("cursor", c, path, opts, CURSOR)
  local next_of = reader(opts.next)
  local param = opts.param or "cursor"
  local key = opts.key
  local seen_cursor, seen_key = {}, {}
  local state = { cursor = opts.from }
  state.params = function()
    if empty_cursor(state.cursor) then return nil end
    return { [param] = state.cursor }
  end
  local last_data
  local shape = function(st, list)
    local out = st.rows
    for _, row in ipairs(list) do
      local id = key and (type(key) == "function" and key(row) or (type(row) == "table" and row[key]))
      if id == nil or not seen_key[id] then
        if id ~= nil then seen_key[id] = true end
        out[#out + 1] = row
      end
    end
    local nxt = next_of(last_data)
    if empty_cursor(nxt) then
      st.cursor = nil
      return false
    end
    if seen_cursor[nxt] or nxt == st.cursor then
      return nil, "the cursor " .. tostring(nxt) .. " came back (the API would loop)"
    end
    if st.cursor ~= nil then seen_cursor[st.cursor] = true end
    st.cursor = nxt
    return true
  end
  -- the cursor is in the page's data, not in its rows: keep the data
  local rows_of = opts.rows and reader(opts.rows) or function(data) return data end
  local o = merge(opts, { rows = function(data, res)
    last_data = data
    return rows_of(data, res)
  end })
  -- limit is sent (when given) but a short page does not end an opaque walk
  o.limit = nil
  if opts.limit and opts.limit_param ~= false then
    o.query = merge(opts.query, { [opts.limit_param or "limit"] = opts.limit })
  end
  return walk(c, path, o, state, shape)
end

function _M.descending(c, path, opts)
  check("descending", c, path, opts, DESCENDING)
  local from = opts.from ~= nil and tonumber(opts.from) or nil
  local floor = opts.floor ~= nil and tonumber(opts.floor) or nil
  if (opts.from ~= nil and not from) or (opts.floor ~= nil and not floor) then
    error("sluice.paginate.descending: options 'from' and 'floor' must be numbers or decimal digits", 2)
  end
  local key, param = opts.key, opts.param or "cursor"
  local seen = {}
  local state = { cursor = from }
  state.params = function()
    if state.cursor == nil then return nil end
    return { [param] = state.cursor }
  end
  return walk(c, path, opts, state, function(st, list)
    local out = st.rows
    local low
    local below = false
    for i, row in ipairs(list) do
      local k = number_at(key, row)
      if not k then return nil, "page " .. (st.pages + 1) .. " row " .. i .. " has no integer key" end
      if floor and k < floor then
        below = true
      elseif (st.cursor == nil or k <= st.cursor) and not seen[k] then
        seen[k] = true
        out[#out + 1] = row
      end
      if low == nil or k < low then low = k end
    end
    if low == nil then return false end
    st.cursor = low - 1
    if below or (floor and st.cursor < floor) then return false end
    return true
  end)
end

return _M
