--- sluice.store.state: named state snapshots and collector checkpoints,
-- stored as exact JSON.
--
-- Owns the internal tables sluice_state (kind, name -> a table: breaker
-- and limiter snapshots, shared state) and sluice_checkpoints (collector,
-- key -> any JSON value: cursors, backfill progress); _M.SCHEMA creates
-- them. No call yields.
--
-- db:save_state(kind, name, tbl) -> true | nil, err
-- db:load_state(kind, name) -> tbl | nil; db:states(kind) -> {name = tbl}
-- db:delete_state(kind, name) -> true
-- db:set_checkpoint(collector, key, value) -> true | nil, err (value: any
--   JSON-encodable value; nil deletes); db:get_checkpoint(collector, key)
--   -> value | nil; db:checkpoints(collector) -> {key = value}
-- A value that does not encode (a function, nan) raises: it is the
-- caller's bug, not an operational failure. save_state and set_checkpoint
-- return nil, reason once the database file was deleted or replaced.
local json = require "sluice.json"
local handle = require "sluice.store.handle"
local task = require "sluice._task"

local ipairs = ipairs
local encode_json, decode = json.encode, json.decode
local now = task.time

local conn, check_type, fail, file_gone = handle.conn, handle.check_type, handle.fail, handle.file_gone

local _M = {}
local methods = {}
_M.methods = methods

_M.SCHEMA = [[
CREATE TABLE IF NOT EXISTS sluice_state (
  kind TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL,
  updated_at REAL NOT NULL, PRIMARY KEY (kind, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sluice_checkpoints (
  collector TEXT NOT NULL, key TEXT NOT NULL, value TEXT,
  updated_at REAL NOT NULL, PRIMARY KEY (collector, key)) WITHOUT ROWID;
]]

local function decode_or_nil(s)
  if s == nil then return nil end
  return (decode(s))
end

function methods:save_state(kind, name, tbl)
  local c = conn(self)
  check_type("save_state", 1, kind, "string")
  check_type("save_state", 2, name, "string")
  check_type("save_state", 3, tbl, "table")
  local gone = file_gone(self, c)
  if gone then return nil, gone end
  local data, err = encode_json(tbl)
  if not data then fail("save_state", "cannot encode state: " .. err) end
  local ok, e = c:exec("INSERT INTO sluice_state (kind, name, data, updated_at) VALUES (?, ?, ?, ?) "
    .. "ON CONFLICT (kind, name) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
    kind, name, data, now())
  if not ok then return nil, e end
  return true
end

function methods:load_state(kind, name)
  local c = conn(self)
  check_type("load_state", 1, kind, "string")
  check_type("load_state", 2, name, "string")
  local rows, err = c:query("SELECT data FROM sluice_state WHERE kind = ? AND name = ?", kind, name)
  if not rows then return nil, err end
  if not rows[1] then return nil end
  return decode_or_nil(rows[1].data)
end

function methods:states(kind)
  local c = conn(self)
  check_type("states", 1, kind, "string")
  local rows, err = c:query("SELECT name, data FROM sluice_state WHERE kind = ?", kind)
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do out[r.name] = decode_or_nil(r.data) end
  return out
end

function methods:delete_state(kind, name)
  local c = conn(self)
  check_type("delete_state", 1, kind, "string")
  check_type("delete_state", 2, name, "string")
  local ok, err = c:exec("DELETE FROM sluice_state WHERE kind = ? AND name = ?", kind, name)
  if not ok then return nil, err end
  return true
end

function methods:set_checkpoint(collector, key, value)
  local c = conn(self)
  check_type("set_checkpoint", 1, collector, "string")
  check_type("set_checkpoint", 2, key, "string")
  local gone = file_gone(self, c)
  if gone then return nil, gone end
  local ok, err
  if value == nil then
    ok, err = c:exec("DELETE FROM sluice_checkpoints WHERE collector = ? AND key = ?", collector, key)
  else
    local data, e = encode_json(value)
    if not data then fail("set_checkpoint", "cannot encode value: " .. e) end
    ok, err = c:exec("INSERT INTO sluice_checkpoints (collector, key, value, updated_at) "
      .. "VALUES (?, ?, ?, ?) ON CONFLICT (collector, key) DO UPDATE SET "
      .. "value = excluded.value, updated_at = excluded.updated_at", collector, key, data, now())
  end
  if not ok then return nil, err end
  return true
end

function methods:get_checkpoint(collector, key)
  local c = conn(self)
  check_type("get_checkpoint", 1, collector, "string")
  check_type("get_checkpoint", 2, key, "string")
  local rows, err = c:query("SELECT value FROM sluice_checkpoints WHERE collector = ? AND key = ?",
    collector, key)
  if not rows then return nil, err end
  if not rows[1] then return nil end
  return decode_or_nil(rows[1].value)
end

function methods:checkpoints(collector)
  local c = conn(self)
  check_type("checkpoints", 1, collector, "string")
  local rows, err = c:query("SELECT key, value FROM sluice_checkpoints WHERE collector = ?", collector)
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do out[r.key] = decode_or_nil(r.value) end
  return out
end

return _M
