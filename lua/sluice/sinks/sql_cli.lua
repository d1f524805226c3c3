--- sluice.sinks.sql_cli: `sluice sql`, reading a sink's tables back.
--
--   sluice sql CONFIG.lua --sink postgres "SELECT count(*) FROM trades"
--   sluice sql --url postgresql://u@host/db "SELECT ..."
--   sluice sql CONFIG.lua --sink clickhouse "SELECT count() FROM trades FINAL"
--
-- cli(args...) is what the host runs as the command's main task
-- (runtime/host/main.c). It loads CONFIG.lua (a configuration returns a
-- table; nothing in it is started), takes sinks[NAME] (a sink of kind
-- "postgres": kind = "postgres" or the name "postgres"; or of kind
-- "clickhouse", through sluice.sinks.clickhouse's query), runs the one
-- statement on it and prints the result as psql -A does: the column names,
-- then one line per row, fields separated by "|", NULL as an empty field;
-- a statement without rows prints its command tag ("INSERT 0 3"). Exit 0;
-- 1 when the statement fails (the server's message with its SQLSTATE on
-- stderr); 2 on bad usage. A leaf: nothing requires it but the host.
local sluice = require "sluice"
local pg = require "sluice.pg"
local json = require "sluice.json"

local _M = {}

local USAGE = [[
usage: sluice sql CONFIG.lua --sink NAME [--timeout S] SQL
       sluice sql --url URL [--timeout S] SQL

Runs one SQL statement on a sink of the configuration (its url) or on the
PostgreSQL server at URL, and prints the result: the column names, then one
line per row, fields separated by "|" (NULL empty). Sinks of kind postgres
or clickhouse.
]]

local function usage(msg)
  io.stderr:write("sluice sql: ", msg, "\n", USAGE)
  sluice.shutdown(2)
end

local function text(v)
  if v == nil then return "" end
  if type(v) == "number" then return json.number(v) or tostring(v) end
  if type(v) == "boolean" then return v and "t" or "f" end
  return json.int64_text(v) or json.numeral_text(v) or tostring(v)
end

local function url_of(config, name)
  local chunk, err = loadfile(config)
  if not chunk then return nil, err end
  local ok, cfg = pcall(chunk)
  if not ok then return nil, tostring(cfg) end
  if type(cfg) ~= "table" or type(cfg.sinks) ~= "table" then return nil, config .. ": no sinks in the configuration" end
  local s = cfg.sinks[name]
  if type(s) ~= "table" then return nil, config .. ": no sink named '" .. name .. "'" end
  local kind = s.kind or name
  if kind ~= "postgres" and kind ~= "clickhouse" then
    return nil, "sink '" .. name .. "' is not of kind postgres or clickhouse"
  end
  if type(s.url) ~= "string" then return nil, "sink '" .. name .. "' has no url" end
  return s.url, kind, s
end

-- The statement on a ClickHouse sink: its settings (url, database, user,
-- password) make the connection.
local function clickhouse(settings, sql, timeout)
  local ch = require "sluice.sinks.clickhouse"
  local conf = {}
  for _, k in ipairs { "url", "database", "user", "password" } do conf[k] = settings[k] end
  conf.timeout = timeout
  local ok, sink = pcall(ch.new, "sql", conf)
  if not ok then return nil, tostring(sink) end
  return sink:query(sql)
end

function _M.cli(...)
  local args, config, sink, url, timeout, sql = { ... }, nil, nil, nil, 30, nil
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "-h" or a == "--help" then
      io.stdout:write(USAGE)
      return sluice.shutdown(0)
    elseif a == "--sink" or a == "--url" or a == "--timeout" then
      local v = args[i + 1]
      if not v then return usage(a .. " needs a value") end
      if a == "--sink" then sink = v elseif a == "--url" then url = v else timeout = tonumber(v) end
      if a == "--timeout" and not (timeout and timeout > 0) then return usage("--timeout must be a positive number") end
      i = i + 2
    elseif a:sub(1, 2) == "--" then
      return usage("unknown option '" .. a .. "'")
    elseif not config and not url and not sql and a:match("%.lua$") then
      config = a
      i = i + 1
    elseif not sql then
      sql = a
      i = i + 1
    else
      return usage("unexpected argument '" .. a .. "'")
    end
  end
  if not sql then return usage("missing SQL") end
  local kind, settings = "postgres", nil
  if not url then
    if not config or not sink then return usage("give CONFIG.lua --sink NAME, or --url URL") end
    local err
    url, err, settings = url_of(config, sink)
    if not url then
      io.stderr:write("sluice sql: ", err, "\n")
      return sluice.shutdown(1)
    end
    kind = err
  end
  local res, qerr, state, _
  if kind == "clickhouse" then
    res, qerr = clickhouse(settings, sql, timeout)
  else
    local conn, err = pg.connect { url = url, timeout = timeout }
    if not conn then
      io.stderr:write("sluice sql: ", err, "\n")
      return sluice.shutdown(1)
    end
    res, qerr, _, state = conn:query(sql)
    conn:close()
  end
  if not res then
    io.stderr:write("sluice sql: ", state and (state .. " ") or "", qerr, "\n")
    return sluice.shutdown(1)
  end
  if #res.fields == 0 then
    io.stdout:write(res.command, "\n")
    return sluice.shutdown(0)
  end
  local out = { table.concat(res.fields, "|") }
  for _, r in ipairs(res.rows) do
    local f = {}
    for j, name in ipairs(res.fields) do f[j] = text(r[name]) end
    out[#out + 1] = table.concat(f, "|")
  end
  io.stdout:write(table.concat(out, "\n"), "\n")
  return sluice.shutdown(0)
end

return _M
