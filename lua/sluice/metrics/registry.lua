--- sluice.metrics.registry: the metrics registry and the Prometheus text
-- exposition format 0.0.4 it renders. It knows none of the modules whose
-- state is shown (sources bring that, see below); label values go through
-- sluice.redact, and a failing source is logged.
--
-- It owns the registered metrics (counter, gauge, histogram; see
-- sluice.metrics for the user's view) and the sources: families computed
-- from live state each time render() runs. A source is added with
--
--   local src = registry.add_source({ { "gauge", "x_up", "1 when x is up.", { "x" } }, ... },
--     function(f) f.x_up:set(1, "a") end)
--
-- which reserves its family names (counter(), gauge() and histogram()
-- refuse them) until registry.remove_source(src). At each render the
-- families are made afresh, empty, and the collect function fills them
-- through f[name] (inc, set, dec, and set_totals for a summary). Nothing
-- here yields, and a collect function must not: render() reads every
-- source at one moment.
local redact = require "sluice.redact"
local log = require "sluice.log"
local options = require "sluice.options"
local json_number = require("sluice.json").number
local buffer = require "string.buffer"

local _M = {}

local type, tostring, pairs, ipairs, select, next = type, tostring, pairs, ipairs, select, next
local format, concat, sort = string.format, table.concat, table.sort
local huge = math.huge

_M.CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_M.DEFAULT_BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }

-- --- formatting -----------------------------------------------------------

--- format_value(v) -> the exposition's spelling of a number: +Inf, -Inf,
-- NaN, and any other as sluice.json.number writes it (integers without a
-- decimal point, the shortest decimal that reads back exactly otherwise).
-- The spellings of 0..SMALL-1, made once: most samples of a large
-- exposition are small counts, states (0, 1) and bucket counts.
local SMALL = 4096
local small = {}
for i = 0, SMALL - 1 do small[i] = format("%d", i) end
local floor = math.floor

local function fmt(v)
  if v ~= v then return "NaN" end
  if v >= 0 and v < SMALL and v == floor(v) and (v ~= 0 or 1 / v > 0) then return small[v] end
  if v == huge then return "+Inf" end
  if v == -huge then return "-Inf" end
  return json_number(v)
end
_M.format_value = fmt

local LABEL_ESC = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }
local HELP_ESC = { ["\\"] = "\\\\", ["\n"] = "\\n" }

--- escape_label(s) -> s with backslash, double quote and newline escaped.
local function escape_label(s)
  return (s:gsub('[\\"\n]', LABEL_ESC))
end
_M.escape_label = escape_label

local function escape_help(s)
  return (s:gsub("[\\\n]", HELP_ESC))
end

local function label_string(v)
  if type(v) == "number" then return fmt(v) end
  return tostring(v)
end

-- --- metrics ----------------------------------------------------------------

local NAME = "^[a-zA-Z_:][a-zA-Z0-9_:]*$"
local LABEL = "^[a-zA-Z_][a-zA-Z0-9_]*$"

local Metric = {}
Metric.__index = Metric

local registry = {} -- name -> metric registered by register()
local reserved = {} -- names of the sources' families (see add_source)

local function where(m, fname)
  return "sluice.metrics." .. m.type .. "." .. fname .. " '" .. m.name .. "'"
end

-- Finds (or with create, makes) the series of the label values given.
local function series_of(m, level, create, ...)
  local n = m.nlabels
  local first = ...
  if n == 0 then
    if first ~= nil and not (type(first) == "table" and next(first) == nil) then
      error(where(m, "labels") .. " has no labels", level)
    end
    local s = m.series[""]
    if not s and create then
      s = m.new_series("")
      m.series[""] = s
    end
    return s
  end
  local key, parts
  if n == 1 and type(first) ~= "table" and first ~= nil and select("#", ...) == 1 then
    key = label_string(first) -- the common case: one label, given as a value
    parts = { key }
  elseif n == 2 and type(first) ~= "table" and first ~= nil and select(2, ...) ~= nil
    and select("#", ...) == 2 then
    -- two labels, given as values (a built-in family's collector and
    -- status): no tables until a series is made
    local a, b = label_string(first), label_string((select(2, ...)))
    key = a .. "\0" .. b
    local s = m.series[key]
    if s or not create then return s end
    parts = { a, b }
  else
    local values, count
    if type(first) ~= "table" then
      values, count = { ... }, select("#", ...)
    elseif first[1] ~= nil then
      values, count = first, #first
    else
      values, count = {}, n
      for k in pairs(first) do
        if not m.label_index[k] then
          error(where(m, "labels") .. ": unknown label '" .. tostring(k) .. "' (labels: "
            .. concat(m.labels, ", ") .. ")", level)
        end
      end
      for i = 1, n do
        local v = first[m.labels[i]]
        if v == nil then
          error(where(m, "labels") .. ": missing label '" .. m.labels[i] .. "'", level)
        end
        values[i] = v
      end
    end
    if count ~= n then
      error(format("%s: expected %d label value%s (%s), got %d", where(m, "labels"), n,
        n == 1 and "" or "s", concat(m.labels, ", "), count), level)
    end
    parts = {}
    for i = 1, n do
      local v = values[i]
      if v == nil then
        error(where(m, "labels") .. ": label '" .. m.labels[i] .. "' is nil", level)
      end
      parts[i] = label_string(v)
    end
    key = n == 1 and parts[1] or concat(parts, "\0")
  end
  local s = m.series[key]
  if not s and create then
    local pairs_ = {}
    -- the values' escaped text, shared by a render's fresh families (a
    -- collector's name is a label of some 30 of them)
    local memo = m.escaped
    for i = 1, n do
      -- a label shows no credentials (URL user info, configured secrets)
      local p = parts[i]
      local e = memo and memo[p]
      if not e then
        e = escape_label(redact.text(p))
        if memo then memo[p] = e end
      end
      pairs_[i] = m.labels[i] .. '="' .. e .. '"'
    end
    s = m.new_series("{" .. concat(pairs_, ",") .. "}")
    m.series[key] = s
  end
  return s
end

local function check_number(m, fname, v, level)
  if type(v) ~= "number" or v ~= v then
    error(where(m, fname) .. ": bad value (number expected, got " .. (type(v) == "number"
      and "nan" or type(v)) .. ")", level)
  end
end

--- c:inc([n = 1,] labels...) adds n (>= 0 for a counter) to the series.
function Metric:inc(n, ...)
  if n == nil then
    n = 1
  elseif type(n) ~= "number" then
    return self:inc(1, n, ...)
  end
  check_number(self, "inc", n, 3)
  if self.type == "counter" and n < 0 then
    error(where(self, "inc") .. ": a counter cannot decrease (got " .. fmt(n) .. ")", 2)
  end
  local s = series_of(self, 3, true, ...)
  s.value = s.value + n
  return s.value
end

--- g:dec([n = 1,] labels...) (gauges).
function Metric:dec(n, ...)
  if n == nil then
    n = 1
  elseif type(n) ~= "number" then
    return self:dec(1, n, ...)
  end
  check_number(self, "dec", n, 3)
  local s = series_of(self, 3, true, ...)
  s.value = s.value - n
  return s.value
end

--- g:set(v, labels...) (gauges).
function Metric:set(v, ...)
  if type(v) ~= "number" then
    error(where(self, "set") .. ": bad value (number expected, got " .. type(v) .. ")", 2)
  end
  local s = series_of(self, 3, true, ...)
  s.value = v
  return v
end

--- h:observe(v, labels...) (histograms).
function Metric:observe(v, ...)
  check_number(self, "observe", v, 3)
  local s = series_of(self, 3, true, ...)
  local b = self.buckets
  local counts = s.counts
  for i = 1, #b do
    if v <= b[i] then
      counts[i] = counts[i] + 1
      break
    end
  end
  s.count = s.count + 1
  s.sum = s.sum + v
end

--- s:set_totals(sum, count, labels...) (summaries, which only sources
-- make): the series' sum and count, as read from where they are kept.
function Metric:set_totals(sum, count, ...)
  if self.type ~= "summary" then
    error(where(self, "set_totals") .. ": only a summary has totals", 2)
  end
  check_number(self, "set_totals", sum, 3)
  check_number(self, "set_totals", count, 3)
  local s = series_of(self, 3, true, ...)
  s.sum, s.count = sum, count
end

--- m:value(labels...) -> the series' value (nil when it has none yet); a
-- histogram's is {count, sum, buckets = {[le] = cumulative count}}.
function Metric:value(...)
  local s = series_of(self, 3, false, ...)
  if not s then return nil end
  if self.type ~= "histogram" then return s.value end
  local out, acc = { count = s.count, sum = s.sum, buckets = {} }, 0
  for i, le in ipairs(self.le) do
    acc = acc + s.counts[i]
    out.buckets[le] = acc
  end
  out.buckets["+Inf"] = s.count
  return out
end

--- m:remove(labels...) drops one series; m:reset() drops them all.
function Metric:remove(...)
  local s = series_of(self, 3, false, ...)
  if not s then return false end
  for k, v in pairs(self.series) do
    if v == s then self.series[k] = nil end
  end
  return true
end

function Metric:reset()
  self.series = {}
end

-- The options of counter() and gauge(), and of histogram(): label names
-- and bucket order are checked by check_labels and check_buckets.
local LABELS = { type = "table", what = "a list of strings" }
local OPTIONS = { labels = LABELS }
local HISTOGRAM_OPTIONS = {
  labels = LABELS,
  buckets = {
    type = "table", what = "a non-empty list of numbers",
    check = function(b) return b[1] ~= nil end,
    items = { type = "number", what = "a number", check = function(x) return x == x end },
  },
}

-- level: of the caller to blame, counted from here (4: a register() caller).
local function check_labels(fname, labels, kind, level)
  level = level or 4
  if labels == nil then return {} end
  if type(labels) ~= "table" then
    error(fname .. ": option 'labels' must be a list of strings, got " .. type(labels), level)
  end
  local seen, out = {}, {}
  for i, l in ipairs(labels) do
    if type(l) ~= "string" or not l:match(LABEL) or l:sub(1, 2) == "__" then
      error(fname .. ": bad label name '" .. tostring(l)
        .. "' (must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __)", level)
    end
    if kind == "histogram" and l == "le" then
      error(fname .. ": label name 'le' is reserved for histogram buckets", level)
    end
    if seen[l] then error(fname .. ": label '" .. l .. "' given twice", level) end
    seen[l] = true
    out[i] = l
  end
  return out
end

local function check_buckets(fname, buckets)
  if buckets == nil then buckets = _M.DEFAULT_BUCKETS end
  local out = {}
  for i, b in ipairs(buckets) do -- a non-empty list of numbers (HISTOGRAM_OPTIONS)
    if i > 1 and not (b > buckets[i - 1]) then
      error(fname .. ": buckets must be strictly increasing (buckets[" .. i .. "] = "
        .. fmt(b) .. ")", 4)
    end
    if b ~= huge then out[#out + 1] = b end
  end
  return out
end

local function same_list(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do
    if a[i] ~= b[i] then return false end
  end
  return true
end

local function make(kind, name, help, labels, buckets)
  local m = setmetatable({
    name = name, help = help, type = kind, labels = labels, nlabels = #labels,
    label_index = {}, series = {},
  }, Metric)
  for i, l in ipairs(labels) do m.label_index[l] = i end
  if kind == "histogram" then
    m.buckets = buckets
    m.le = {}
    for i, b in ipairs(buckets) do m.le[i] = fmt(b) end
    local nb = #buckets
    m.new_series = function(ls)
      local counts = {}
      for i = 1, nb do counts[i] = 0 end
      return { labels = ls, counts = counts, count = 0, sum = 0 }
    end
  elseif kind == "summary" then
    m.new_series = function(ls) return { labels = ls, count = 0, sum = 0 } end
  else
    m.new_series = function(ls) return { labels = ls, value = 0 } end
  end
  return m
end

local function register(kind, name, help, opts)
  local fname = "sluice.metrics." .. kind
  if type(name) ~= "string" or not name:match(NAME) then
    error(fname .. ": bad metric name '" .. tostring(name) .. "' (must match [a-zA-Z_:][a-zA-Z0-9_:]*)", 3)
  end
  if type(help) ~= "string" or help == "" then
    error(fname .. ": metric '" .. name .. "' needs a help string", 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(fname .. ": bad argument #3 'opts' (table expected, got " .. type(opts) .. ")", 3)
  end
  opts = options.check(fname, opts, kind == "histogram" and HISTOGRAM_OPTIONS or OPTIONS, 3) or {}
  local old = registry[name]
  if old and old.type ~= kind then
    error(fname .. ": '" .. name .. "' is already registered as a " .. old.type, 3)
  end
  if kind == "counter" then
    if not name:match("_total$") then
      error(fname .. ": counter name '" .. name .. "' must end in _total", 3)
    end
  else
    for _, suffix in ipairs({ "_total", "_bucket", "_count", "_sum" }) do
      if name:sub(-#suffix) == suffix then
        error(fname .. ": a " .. kind .. " name must not end in " .. suffix .. " (got '" .. name .. "')", 3)
      end
    end
  end
  if reserved[name] then
    error(fname .. ": '" .. name .. "' is a built-in sluice metric", 3)
  end
  local labels = check_labels(fname, opts.labels, kind)
  local buckets = kind == "histogram" and check_buckets(fname, opts.buckets) or nil
  if old then
    if not same_list(old.labels, labels) then
      error(fname .. ": '" .. name .. "' is already registered with labels ("
        .. concat(old.labels, ", ") .. ")", 3)
    end
    if buckets and not same_list(old.buckets, buckets) then
      error(fname .. ": '" .. name .. "' is already registered with other buckets", 3)
    end
    return old
  end
  local m = make(kind, name, help, labels, buckets)
  registry[name] = m
  return m
end

--- counter(name, help [, {labels = {...}}]) -> counter (inc)
function _M.counter(name, help, opts) return register("counter", name, help, opts) end
--- gauge(name, help [, {labels = {...}}]) -> gauge (set, inc, dec)
function _M.gauge(name, help, opts) return register("gauge", name, help, opts) end
--- histogram(name, help [, {labels = {...}, buckets = {...}}]) -> histogram
-- (observe); buckets default to DEFAULT_BUCKETS, +Inf is implied.
function _M.histogram(name, help, opts) return register("histogram", name, help, opts) end

--- get(name) -> the registered metric of that name, or nil.
function _M.get(name) return registry[name] end

--- unregister(name) -> whether a metric of that name was registered.
function _M.unregister(name)
  local had = registry[name] ~= nil
  registry[name] = nil
  return had
end

-- --- sources: families computed at render time -----------------------------

local SOURCE_KINDS = { counter = true, gauge = true, summary = true }

local sources = {} -- {families = {{kind, name, help, labels}...}, collect = fn}, in order added

--- add_source(families, collect) -> source: families is a list of {type,
-- name, help [, labels]} (type counter, gauge or summary); collect(f) is
-- called at each render() with f[name] a fresh, empty metric of each of
-- them. A collect function that raises is logged; the families render as
-- far as it filled them. The source (a handle) is for remove_source.
function _M.add_source(families, collect)
  local fname = "sluice.metrics.registry.add_source"
  if type(families) ~= "table" then
    error(fname .. ": bad argument #1 'families' (table expected, got " .. type(families) .. ")", 2)
  end
  if type(collect) ~= "function" then
    error(fname .. ": bad argument #2 'collect' (function expected, got " .. type(collect) .. ")", 2)
  end
  local defs, names = {}, {}
  for i, d in ipairs(families) do
    if type(d) ~= "table" then
      error(fname .. ": families[" .. i .. "] must be a table {type, name, help [, labels]}", 2)
    end
    local kind, name, help, labels = d[1], d[2], d[3], d[4]
    if not SOURCE_KINDS[kind] then
      error(fname .. ": families[" .. i .. "]: type must be counter, gauge or summary, got "
        .. tostring(kind), 2)
    end
    if type(name) ~= "string" or not name:match(NAME) then
      error(fname .. ": families[" .. i .. "]: bad metric name '" .. tostring(name) .. "'", 2)
    end
    if reserved[name] or registry[name] or names[name] then
      error(fname .. ": families[" .. i .. "]: '" .. name .. "' is already a metric", 2)
    end
    if type(help) ~= "string" or help == "" then
      error(fname .. ": families[" .. i .. "]: metric '" .. name .. "' needs a help string", 2)
    end
    names[name] = true
    defs[i] = { kind, name, help, check_labels(fname, labels, kind, 3) }
  end
  for name in pairs(names) do reserved[name] = true end
  local source = { families = defs, collect = collect }
  sources[#sources + 1] = source
  return source
end

--- remove_source(source) -> whether it was added (its names are free again).
function _M.remove_source(source)
  for i, s in ipairs(sources) do
    if s == source then
      table.remove(sources, i)
      for _, d in ipairs(s.families) do reserved[d[2]] = nil end
      return true
    end
  end
  return false
end

-- --- rendering -------------------------------------------------------------

local function by_labels(a, b) return a.labels < b.labels end

-- The family's series sorted by their label text. The order is kept (in
-- m.sorted; a source's families, made afresh at each render, keep it in
-- their definition, m.def) and used again while the family has the same
-- label texts: sorting thousands of series at each render was most of its
-- time. Texts sort with the built-in order (a comparison function called
-- from table.sort is not compiled); two series whose texts redaction made
-- the same sort by a comparison of their series.
local function sorted_series(m)
  local by, k, same = {}, 0, false
  for _, s in pairs(m.series) do
    local ls = s.labels
    if by[ls] then same = true end
    by[ls] = s
    k = k + 1
  end
  local keep = m.def or m
  local order = keep.sorted
  local list = {}
  if not same and order and #order == k then
    for i = 1, k do
      local s = by[order[i]]
      if not s then
        list = nil
        break
      end
      list[i] = s
    end
    if list then return list, k end
    list = {}
  end
  if same then
    keep.sorted = nil
    k = 0
    for _, s in pairs(m.series) do
      k = k + 1
      list[k] = s
    end
    sort(list, by_labels)
    return list, k
  end
  order, k = {}, 0
  for ls in pairs(by) do
    k = k + 1
    order[k] = ls
  end
  sort(order)
  keep.sorted = order
  for i = 1, k do list[i] = by[order[i]] end
  return list, k
end

-- Appends the family's text to buf (a string.buffer: a large exposition
-- is written in place, not made of one string per line).
local function render_family(m, buf)
  local name = m.name
  buf:put("# HELP ", name, " ", escape_help(m.help), "\n# TYPE ", name, " ", m.type, "\n")
  local list, k = sorted_series(m)
  local kind = m.type
  if kind == "histogram" then
    local le, nb = m.le, #m.le
    local bucket, sum, count = name .. "_bucket", name .. "_sum", name .. "_count"
    for i = 1, k do
      local s = list[i]
      local ls, counts = s.labels, s.counts
      local prefix = ls == "" and "{le=\"" or (ls:sub(1, -2) .. ",le=\"")
      local acc = 0
      for j = 1, nb do
        acc = acc + counts[j]
        buf:put(bucket, prefix, le[j], "\"} ", fmt(acc), "\n")
      end
      buf:put(bucket, prefix, "+Inf\"} ", fmt(s.count), "\n", sum, ls, " ", fmt(s.sum), "\n",
        count, ls, " ", fmt(s.count), "\n")
    end
  elseif kind == "summary" then
    local sum, count = name .. "_sum", name .. "_count"
    for i = 1, k do
      local s = list[i]
      local ls = s.labels
      buf:put(sum, ls, " ", fmt(s.sum), "\n", count, ls, " ", fmt(s.count), "\n")
    end
  else
    for i = 1, k do
      local s = list[i]
      buf:put(name, s.labels, " ", fmt(s.value), "\n")
    end
  end
end

--- m:render() -> the exposition text of this metric alone.
function Metric:render()
  local buf = buffer.new()
  render_family(self, buf)
  return buf:tostring()
end

local function by_name(a, b) return a.name < b.name end

--- render([opts]) -> the exposition text of every family, sorted by name.
-- opts.builtin = false leaves out the sources' families (those read from
-- live state; registered metrics, the HTTP client's too, stay).
local RENDER_OPTIONS = { builtin = "boolean" }

function _M.render(opts)
  options.check("sluice.metrics.render", opts, RENDER_OPTIONS)
  local fams = {}
  for _, m in pairs(registry) do fams[#fams + 1] = m end
  if not (opts and opts.builtin == false) then
    local escaped = {} -- label value -> its escaped text, for this render only
    for _, source in ipairs(sources) do
      local f = {}
      for _, d in ipairs(source.families) do
        local m = make(d[1], d[2], d[3], d[4], nil)
        m.escaped, m.def = escaped, d
        f[d[2]] = m
        fams[#fams + 1] = m
      end
      local ok, err = pcall(source.collect, f)
      if not ok then
        log.warning("metrics: a built-in source failed", { error = tostring(err) })
      end
    end
  end
  sort(fams, by_name)
  local buf = buffer.new(65536)
  for _, m in ipairs(fams) do render_family(m, buf) end
  return buf:tostring()
end

--- handler(req) -> 200, the exposition, its content type: a sluice.server
-- route handler, srv:route("GET", "/metrics", metrics.handler).
function _M.handler()
  return 200, _M.render(), { ["content-type"] = _M.CONTENT_TYPE }
end

return _M
