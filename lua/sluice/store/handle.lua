--- sluice.store.handle: the fields of a db object, and the checks every db
-- method starts with.
--
-- Owns a db's private fields: _c (the sluice._store connection), _defs
-- (table name -> the compiled definition sluice.store.schema made),
-- _closed and _gone (the reason once the file was deleted or replaced).
-- db.path is public and read-only. The other parts of sluice.store reach
-- these only through the functions below. No call yields.
--
-- Misuse raises "sluice.store.<method>: <message>" naming the caller's
-- line: conn and check_type blame the caller of the function that calls
-- them, so a db method calls them itself (or from a function it tail-calls);
-- fail takes the level that reaches the method's caller.
local log = require "sluice.log"

local type, error, setmetatable, pairs, format = type, error, setmetatable, pairs, string.format

local _M = {}

--- new(c, path, mt) -> a db object with metatable mt on connection c.
function _M.new(c, path, mt)
  return setmetatable({ _c = c, _defs = {}, path = path }, mt)
end

--- fail(fname, msg [, level]): raises "sluice.store.<fname>: <msg>" at
-- `level` relative to fail's caller (2, the default: the caller of the
-- function calling fail).
local function fail(fname, msg, level)
  error("sluice.store." .. fname .. ": " .. msg, (level or 2) + 1)
end
_M.fail = fail

--- check_type(fname, n, v, want): raises "bad argument #n (want expected,
-- got ...)" at the caller of the method calling check_type.
function _M.check_type(fname, n, v, want)
  if type(v) ~= want then
    fail(fname, format("bad argument #%d (%s expected, got %s)", n, want, type(v)), 3)
  end
end

--- conn(db) -> the connection, or raises "sluice.store: database is
-- closed" at the caller of the method calling conn.
function _M.conn(self)
  if self._closed then error("sluice.store: database is closed", 3) end
  return self._c
end

--- is_closed(db) -> true once db:close() ran (a part checks again after
-- running user code that may have closed it).
function _M.is_closed(self)
  return self._closed == true
end

--- close(db) -> true when it closed the connection, false when it was
-- already closed (later calls do nothing).
function _M.close(self)
  if self._closed then return false end
  self._closed = true
  self._c:close()
  return true
end

--- table_names(db) -> the names of the tables defined on db, sorted.
function _M.table_names(self)
  local names = {}
  for name in pairs(self._defs) do names[#names + 1] = name end
  table.sort(names)
  return names
end

--- in_transaction(db) -> whether a transaction is open (false once closed).
function _M.in_transaction(self)
  return not self._closed and self._c:in_transaction()
end

--- table_def(db, name) -> the compiled definition of table name, or nil.
function _M.table_def(self, name)
  return self._defs[name]
end

--- set_table_def(db, name, d): records (or replaces) name's definition.
function _M.set_table_def(self, name, d)
  self._defs[name] = d
end

--- file_gone(db, c) -> nil while the database file is where it was opened;
-- once it is deleted or replaced, the reason (for good: the handle writes
-- into an unlinked file). Said once, loudly, at error level.
function _M.file_gone(self, c)
  if self._gone then return self._gone end
  local ok, why = c:file_check()
  if ok then return nil end
  self._gone = why .. " (rows written now are lost at exit; restart sluice)"
  log.error("store: " .. why, { path = self.path })
  return self._gone
end

return _M
