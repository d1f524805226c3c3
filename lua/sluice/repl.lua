--- sluice.repl: what the REPL evaluates and how it shows the results.
-- The control socket (runtime/host/repl_server.c) runs each request as a task that
-- calls _serve(conn, payload, framed); `sluice run -i` does the same with
-- the terminal. A session is one attached client: its environment (globals
-- assigned at the prompt, the helpers, a print that writes to the client)
-- lives as long as the connection.
--
-- It owns the sessions (one per connection, weakly keyed) and the
-- presentation: the pretty printer and the helpers (breakers(), trip(),
-- collect(), ...), which show sluice.operator's views and run its
-- operations on the running configuration (sluice.app's current one).
-- Evaluation runs in the calling task and yields when the chunk does;
-- collect() and reload() yield while they wait.
--
-- Protocol (one JSON object per line each way):
--   request  {"chunk": "lua source"}
--   response {"ok": bool, "output": "text", "incomplete": bool}
-- incomplete = true: the chunk is unfinished (`for i = 1, 3 do`); the client
-- reads more lines and sends the whole chunk again.
local json = require "sluice.json"
local redact = require "sluice.redact"
local operator = require "sluice.operator"
local app_mod = require "sluice.app"

local _M = {}

-- --- pretty printer ---------------------------------------------------------

local KEYWORDS = {}
for w in ([[and break do else elseif end false for function goto if in local
  nil not or repeat return then true until while]]):gmatch("%a+") do
  KEYWORDS[w] = true
end

local ESCAPES = { ["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r", ['"'] = '\\"', ["\\"] = "\\\\" }

local function quote(s)
  return '"' .. (s:gsub('[%c"\\]', function(c)
    return ESCAPES[c] or string.format("\\%03d", c:byte())
  end)) .. '"'
end

local function number(n)
  if n ~= n then return "nan" end
  if n == math.huge then return "inf" end
  if n == -math.huge then return "-inf" end
  if n == math.floor(n) and math.abs(n) < 2 ^ 53 then return string.format("%d", n) end
  return string.format("%.14g", n)
end

local TYPE_ORDER = { number = 1, string = 2, boolean = 3 }

-- Numbers, then strings, then booleans, then the rest by type and text.
local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    local oa, ob = TYPE_ORDER[ta] or 4, TYPE_ORDER[tb] or 4
    if oa ~= ob then return oa < ob end
    return ta < tb
  end
  if ta == "number" or ta == "string" then return a < b end
  if ta == "boolean" then return not a and b end
  return tostring(a) < tostring(b)
end

local DEFAULTS = { depth = 5, width = 78, max_items = 200 }

local render

local function render_key(k)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") and not KEYWORDS[k] then return k end
  if type(k) == "string" then return "[" .. quote(k) .. "]" end
  if type(k) == "number" then return "[" .. number(k) .. "]" end
  return "[" .. tostring(k) .. "]"
end

local function has_tostring(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__tostring") ~= nil
end

-- A table prints on one line when it fits and holds no non-empty table;
-- otherwise one item per line, indented two spaces per level.
function render(v, o, depth, path)
  local tv = type(v)
  if tv == "string" then return quote(v) end
  if tv == "number" then return number(v) end
  if tv ~= "table" or has_tostring(v) then return tostring(v) end
  if path[v] then return "<cycle>" end
  if next(v) == nil then return "{}" end
  if depth >= o.depth then return "{...}" end
  path[v] = true
  local items, nested = {}, false
  -- shown: how the value printed; an expanded table makes this one nested
  local function add(prefix, shown)
    items[#items + 1] = prefix .. shown
    if shown:sub(1, 1) == "{" and shown ~= "{}" and shown ~= "{...}" then nested = true end
  end
  local seq = 0
  while rawget(v, seq + 1) ~= nil do
    seq = seq + 1
    if #items < o.max_items then add("", render(rawget(v, seq), o, depth + 1, path)) end
  end
  local keys = {}
  for k in next, v do
    if not (type(k) == "number" and k >= 1 and k <= seq and k == math.floor(k)) then
      keys[#keys + 1] = k
    end
  end
  table.sort(keys, key_less)
  for _, k in ipairs(keys) do
    if #items < o.max_items then
      add(render_key(k) .. " = ", render(rawget(v, k), o, depth + 1, path))
    end
  end
  path[v] = nil
  local total = seq + #keys
  if total > #items then items[#items + 1] = "... (" .. (total - #items) .. " more)" end
  local one = "{ " .. table.concat(items, ", ") .. " }"
  if not nested and not one:find("\n", 1, true) and 2 * depth + #one <= o.width then
    return one
  end
  local pad = string.rep("  ", depth + 1)
  return "{\n" .. pad .. table.concat(items, ",\n" .. pad) .. "\n" .. string.rep("  ", depth) .. "}"
end

--- pretty(value [, opts]) -> string. Tables sorted by key and indented;
-- opts: depth (5; deeper tables print as {...}), width (78), max_items
-- (200 per table). A table already being printed shows as <cycle>; a
-- table or userdata with __tostring prints as tostring says.
function _M.pretty(value, opts)
  local o = DEFAULTS
  if opts then
    o = {}
    for k, d in pairs(DEFAULTS) do o[k] = opts[k] or d end
  end
  return render(value, o, 0, {})
end

-- A value that prints as its text, unquoted (helpers' messages).
local text_mt = { __tostring = function(t) return t.text end }
local function text(s) return setmetatable({ text = s }, text_mt) end
_M.text = text

-- --- evaluation ---------------------------------------------------------------

--- incomplete(err) -> whether a load error means "more input would fix it":
-- the parser ran out of input. A short string cannot continue on the next
-- line, so an unfinished one is an error at once.
function _M.incomplete(err)
  return type(err) == "string" and err:sub(-7) == "'<eof>'"
    and not err:find("unfinished string near", 1, true)
end

--- compile(chunk) -> fn | nil, err, incomplete. An expression is tried as
-- `return <chunk>` first, so `1 + 1` and `breakers()` show their value.
function _M.compile(chunk)
  local fn = loadstring("return " .. chunk, "=repl")
  if fn then return fn end
  local err
  fn, err = loadstring(chunk, "=repl")
  if fn then return fn end
  return nil, err, _M.incomplete(err)
end

local function pack(...) return { n = select("#", ...), ... } end

local function on_error(e)
  if type(e) == "string" then return e end
  return "error: " .. _M.pretty(e)
end

--- session() -> a session: env (globals of the prompt, over _G), with the
-- helpers and a print that writes to the evaluation's output.
function _M.session()
  local s = {}
  local env = setmetatable({}, { __index = _G })
  for name, fn in pairs(_M.helpers) do env[name] = fn end
  env.print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    local line = table.concat(parts, "\t") .. "\n"
    if s.out then s.out[#s.out + 1] = line else io.stdout:write(line) end
  end
  s.env = env
  return s
end

--- eval(session, chunk) -> {ok, output, incomplete}. Runs the chunk in the
-- calling task (it may yield). output ends with a newline unless empty.
function _M.eval(session, chunk)
  if type(chunk) ~= "string" then
    error("sluice.repl.eval: bad argument #2 (string expected, got " .. type(chunk) .. ")", 2)
  end
  local fn, err, more = _M.compile(chunk)
  if not fn then
    -- the message is shown only if no more input comes (`repl -e`)
    if more then return { ok = false, incomplete = true, output = err .. "\n" } end
    return { ok = false, incomplete = false, output = err .. "\n" }
  end
  setfenv(fn, session.env)
  local out = {}
  session.out = out
  local r = pack(xpcall(fn, on_error))
  if session.out == out then session.out = nil end
  if r[1] then
    local shown = {}
    for i = 2, r.n do shown[#shown + 1] = _M.pretty(r[i]) end
    if #shown > 0 then out[#out + 1] = table.concat(shown, "\t") .. "\n" end
  else
    out[#out + 1] = tostring(r[2]) .. "\n"
  end
  return { ok = r[1], incomplete = false, output = table.concat(out) }
end

local sessions = setmetatable({}, { __mode = "k" })

--- _serve(conn, payload, framed): one request of a control connection, in
-- its own task. framed: payload is a JSON request line; otherwise it is
-- the chunk itself (the in-process terminal).
function _M._serve(conn, payload, framed)
  local s = sessions[conn]
  if not s then
    s = _M.session()
    sessions[conn] = s
  end
  local r
  local chunk = payload
  if framed then
    local req = json.decode(payload)
    chunk = type(req) == "table" and req.chunk or nil
    if type(chunk) ~= "string" then
      r = { ok = false, incomplete = false, output = 'bad request: expected {"chunk": "..."}\n' }
    end
  end
  r = r or _M.eval(s, chunk)
  conn:reply(r.ok, r.output, r.incomplete, json.encode(r, true) .. "\n")
end

-- --- helpers ------------------------------------------------------------------

local ops = operator.new({ current = function() return app_mod.current end, reload = app_mod.reload,
  rollback = app_mod.rollback })

local helpers = {}
local help_lines = {}
local function helper(name, line, fn)
  helpers[name] = fn
  help_lines[#help_lines + 1] = string.format("  %-14s %s", name, line)
end

-- An operation's failure as an error at the prompt, "who: message",
-- pointing at the chunk that called the helper.
local function fail(who, err, kind)
  if kind == "invalid" then err = "bad argument #1 (" .. err .. ")" end
  error(who .. ": " .. err, 3)
end

-- The helpers' views and results go through sluice.redact (errors, last
-- errors and URLs may carry credentials). What any other expression shows is
-- the operator's own doing: the socket is the live VM.
local function scrubbed(...)
  local n = select("#", ...)
  local r = { ... }
  for i = 1, n do r[i] = redact.scrub(r[i]) end
  return unpack(r, 1, n)
end

-- view(name, line, fn, empty): fn's table, or the text empty when it has
-- nothing (or the reason it could not be built)
local function view(name, line, fn, empty)
  helper(name, line, function()
    local out, err = fn()
    if not out then out = text(err) elseif next(out) == nil then out = text(empty) end
    return scrubbed(out)
  end)
end

view("breakers()", "every breaker: state, failures, next attempt, health score",
  function() return ops:breakers_brief() end, "no breakers")
view("limiters()", "every limiter: rate, requests, violations, tasks waiting",
  function() return ops:limiters_brief() end, "no limiters")
view("collectors()", "the running configuration's collectors and their health",
  function() return ops:collectors_brief() end, "the configuration has no collectors")
-- the stream collectors' live books (sluice.stream.exchange): {collector = {symbol = status}}
view("books()", "the stream collectors' live order books: best bid/ask, spread, depth, update id, resyncs",
  function()
    local a = app_mod.current
    if not a then return nil, "no configuration is running" end
    local out = {}
    for _, c in ipairs(a.order) do
      local st = c:stats().stream
      if st and st.books then out[c.name] = st.books end
    end
    return out
  end, "no stream collector keeps a book")
view("backfills()", "backfill jobs of this process and their progress",
  function() return ops:backfills() end, "no backfills")

-- who: the helper's name; action as ops:breaker has it
local function breaker_helper(who, action)
  return function(name)
    local st, err, kind = ops:breaker(name, action)
    if not st then fail(who, err, kind) end
    return text("breaker '" .. name .. "' is " .. st.state)
  end
end

helper("trip(name)", "force the breaker open", breaker_helper("trip", "open"))
helper("reset(name)", "reset the breaker to closed, counters cleared", breaker_helper("reset", "reset"))

-- The collection's own result, as the collector's run_once returns it:
-- true, rows or false, err, and "joined" when it waited for a run in
-- flight. A disabled collector (dataset) runs too: the operator asked for
-- it. collect(name, dataset) runs that dataset of a collector with datasets.
helper("collect(name)", "run one collection of the collector now; its result "
    .. "(collect(name, dataset): of that dataset)", function(name, dataset)
  local run, err, kind = ops:collect(name, { run_disabled = true, dataset = dataset })
  if not run then fail("collect", err, kind) end
  local result = run.ok and run.records or run.error
  if run.joined then return scrubbed(run.ok, result, "joined") end
  return scrubbed(run.ok, result)
end)

helper("reload()", "re-read the configuration and collector scripts", function()
  local ok, err = ops:reload("repl")
  -- refused: an error, so that `sluice repl -e 'reload()'` exits 1
  if not ok then error(scrubbed(err), 0) end
  return scrubbed(ok)
end)

-- sql(query [, {sink = name, timeout = s}]): one statement on a sink of
-- kind postgres or clickhouse of the running configuration (the only such
-- sink when sink is not given), on a connection of its own made for it:
-- the rows (a list of {column = value}, values exact: as sluice.pg reads
-- them; from ClickHouse, integers as numbers or int64/uint64 cdata beyond
-- 2^53, everything else as its JSONCompact value) or, for a statement
-- without rows, its command tag ("OK" from ClickHouse). Yields while it
-- runs. Errors are scrubbed like the other helpers' results (credentials
-- never show: a ClickHouse sink sends them as headers); the rows are the
-- data the operator asked for and are shown as they are.
local SQL_KINDS = { postgres = true, clickhouse = true }

local function sql_sink(name)
  local a = app_mod.current
  local sinks = a and a.config and a.config.sinks
  if type(sinks) ~= "table" then return nil, "the running configuration has no sinks" end
  if name == nil then
    for n, st in pairs(sinks) do
      if type(st) == "table" and SQL_KINDS[st.kind or n] then
        if name then return nil, "several postgres or clickhouse sinks: give {sink = name}" end
        name = n
      end
    end
    if not name then return nil, "the running configuration has no postgres or clickhouse sink" end
  end
  local st = sinks[name]
  if type(st) ~= "table" then return nil, "no sink named '" .. tostring(name) .. "'" end
  local kind = st.kind or name
  if not SQL_KINDS[kind] then return nil, "sink '" .. name .. "' is not of kind postgres or clickhouse" end
  return st, kind
end

local function sql_postgres(st, query, timeout)
  local pg = require "sluice.pg"
  local conn, cerr = pg.connect { url = st.url, timeout = timeout }
  if not conn then return nil, cerr end
  local res, qerr, _, state = conn:query(query)
  conn:close()
  if not res then return nil, (state and (state .. " ") or "") .. qerr end
  return res
end

local function sql_clickhouse(st, query, timeout)
  local ch = require "sluice.sinks.clickhouse"
  local conf = { timeout = timeout }
  for _, k in ipairs { "url", "database", "user", "password" } do conf[k] = st[k] end
  local ok, sink = pcall(ch.new, "sql", conf)
  if not ok then return nil, tostring(sink) end
  return sink:query(query)
end

helper("sql(query)", "run one SQL statement on the postgres or clickhouse sink: its rows "
    .. "(sql(query, {sink = name}): on that sink)", function(query, opts)
  if type(query) ~= "string" then fail("sql", "string expected, got " .. type(query), "invalid") end
  if opts ~= nil and type(opts) ~= "table" then
    error("sql: bad argument #2 (table expected, got " .. type(opts) .. ")", 2)
  end
  opts = opts or {}
  local st, kind = sql_sink(opts.sink)
  if not st then fail("sql", scrubbed(kind)) end
  local res, err = (kind == "clickhouse" and sql_clickhouse or sql_postgres)(st, query, opts.timeout or 30)
  if not res then fail("sql", scrubbed(err)) end
  if #res.fields == 0 then return text(res.command) end
  return res.rows -- what the operator asked for, as the server has it (not scrubbed)
end)

-- the configuration history (sluice.app.configs)
view("configs()", "the last configurations applied, newest first: id, applied_at, by, how, sha256",
  function() return ops:configs() end, "no configuration is running")

helper("config(id)", "the text of configuration id (as configs() lists them), scrubbed of secrets",
    function(id)
  local a = app_mod.current
  local e = a and a.configs and a.configs:get(id)
  if e then return text(redact.text(e.source or "(given as a table: no text)")) end
  fail("config", "no configuration " .. tostring(id) .. " is kept (see configs())", "not_found")
end)

helper("rollback()", "apply the configuration before the live one again (rollback(n): n back)",
    function(steps)
  local live, err, kind = ops:rollback("repl", steps)
  if kind == "invalid" then fail("rollback", err, kind) end
  -- refused: an error, so that `sluice repl -e 'rollback()'` exits 1
  if not live then error(scrubbed(err), 0) end
  return scrubbed(live)
end)

helper("help()", "this list", function()
  return text("helpers:\n" .. table.concat(help_lines, "\n") ..
    "\nAny Lua works too: expressions show their value; globals you set stay for the session.")
end)

-- "breakers()" -> "breakers"
_M.helpers = {}
for sig, fn in pairs(helpers) do _M.helpers[sig:match("^[%w_]+")] = fn end

return _M
