--- support.store: fixtures shared by the sluice.store specs.
--
--   local fx = require "support.store"
--   local path = fx.tmpdb()              -- a fresh path for a file database
--   fx.remove_db(path)                   -- the file and its -wal/-shm/-journal
--   fx.err_of(fn, ...)                   -- the message fn raises, no "file:line: "
--   fx.raised_at(fn, ...)                -- "file_spec.lua:line", message
--   fx.count(db, "klines")               -- SELECT count(*)
--   db:define(fx.KLINES); db:upsert("klines", fx.klines(3))  -- fx.kline(i [, close])
local _M = {}

--- err_of(fn, ...) -> the message of the error fn raises, without its
-- "file:line: " prefix; fails the spec when fn does not raise.
function _M.err_of(fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error")
  return (tostring(e):gsub("^[^:]+:%d+: ", ""))
end

--- raised_at(fn, ...) -> "<file>:<line>", message: the place the error fn
-- raises blames (the file's base name) and its message; fails the spec when
-- fn does not raise or the error names no place.
function _M.raised_at(fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error")
  local file, line, msg = tostring(e):match("^([^:]+):(%d+): (.*)$")
  assert(file, "the error names no place: " .. tostring(e))
  return file:match("[^/]*$") .. ":" .. line, msg
end

function _M.tmpdb()
  local path = os.tmpname()
  os.remove(path)
  return path .. ".db"
end

function _M.remove_db(path)
  for _, suffix in ipairs({ "", "-wal", "-shm", "-journal" }) do os.remove(path .. suffix) end
end

function _M.count(db, name)
  return db:query("SELECT count(*) AS n FROM " .. name)[1].n
end

_M.KLINES = {
  name = "klines",
  columns = { symbol = "text", open_time = "integer", open = "real", close = "real",
    volume = "real", trades = "integer" },
  key = { "symbol", "open_time" },
  required = { "close" },
}

function _M.kline(i, close)
  return { symbol = "BTCUSDT", open_time = 1700000000000 + i * 60000, open = 100 + i,
    close = close or 101 + i, volume = i * 0.5, trades = i }
end

function _M.klines(n)
  local rows = {}
  for i = 1, n do rows[i] = _M.kline(i) end
  return rows
end

return _M
