--- sluice.shared.stream: a sink appending committed rows to Redis Streams.
--
-- sink(sh, {stream = "sluice:{table}", maxlen = 1e6}) -> a sink, both for
-- collector:add_sink and as the outbox's redis_stream kind
-- (sluice.outbox.redis_stream): its publish(table, rows) appends each row
-- to the stream (XADD with approximate MAXLEN trimming, one pipeline per
-- batch); write(table, rows) does the same with the outbox's results
-- (true | nil, err, "unavailable"), ensure(table) has nothing to create;
-- fields flattened: numbers as the shortest text that reads back as the
-- same double (json.number), tables as sluice.json's exact JSON, other
-- values by tostring. With Redis away the rows are not
-- published (they are in SQLite); the shared object sh is told
-- (sh:unreachable), which logs it once per outage. The sink owns nothing
-- but its options; publish yields (call it in a task).
local json = require "sluice.json"

local _M = {}

--- sink(sh, opts) -> {publish = function(self, table_name, rows) -> true | nil, err,
--   write = ..., ensure = ...}
function _M.sink(sh, opts)
  local pattern = opts.stream or "sluice:{table}"
  local maxlen = tostring(math.floor(opts.maxlen or 1e6))
  local sink
  sink = {
    ensure = function() return true end,
    write = function(self, tname, rows)
      local ok, err = sink.publish(self, tname, rows)
      if ok then return true end
      return nil, err, "unavailable"
    end,
    publish = function(_, tname, rows)
      if #rows == 0 then return true end
      local stream = pattern:gsub("{table}", tname)
      local cmds = {}
      for i, row in ipairs(rows) do
        local cmd = { "XADD", stream, "MAXLEN", "~", maxlen, "*" }
        local keys = {}
        for k in pairs(row) do keys[#keys + 1] = k end
        table.sort(keys)
        for _, k in ipairs(keys) do
          local v = row[k]
          cmd[#cmd + 1] = k
          local t = type(v)
          if t == "table" then
            v = json.encode(v, true) or ""
          elseif t == "number" then
            v = json.number(v) or tostring(v) -- nan, inf: no JSON text
          else
            v = tostring(v)
          end
          cmd[#cmd + 1] = v
        end
        cmds[i] = cmd
      end
      local res, err = sh.redis:pipeline(cmds)
      if not res then
        sh:unreachable("redis unreachable: rows are not published to streams", err)
        return nil, err
      end
      return true
    end,
  }
  return sink
end

return _M
