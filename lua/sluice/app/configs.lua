--- sluice.app.configs: the last few configurations a running sluice
-- applied, newest last, for the operator's history and rollback.
--
--   local h = configs.new{ keep = 5 }
--   h:applied{ config = raw, source = text, files = {path = text}, by = "SIGHUP",
--              how = "reload" } -> entry, added
--   h:live() -> the entry in force;  h:get(id) -> the kept entry of that id
--   h:target(steps) -> the entry `steps` before the live one | nil, err
--   h:rolled_back(entry, by) -> entry: the entries after it are dropped and
--                                 it is live again, applied now
--   h:view() -> { live = summary, history = { summary, ... newest first } }
--
-- An entry is what was applied: config (the table the configuration file
-- returned, before sluice.config.prepare: a rollback prepares it again),
-- source (the file's text as read when it was applied; nil when it could
-- not be read, e.g. a configuration given as a table), files (the text of
-- every collector script it loaded, by path: a rollback builds from these,
-- not from what is on disk now), sha256 (of source and files), id (1, 2,
-- ... in order of application), applied_at (epoch seconds it became live),
-- by (who asked: "start", "SIGHUP", "POST /reload", "repl") and how
-- ("start" | "reload" | "rollback"). The object owns its entries; callers
-- read them and never change them. It keeps at most `keep` (5): applying
-- one more drops the oldest. A reload whose source and files are those of
-- the live entry adds nothing (the live entry, applied_at and all, stays),
-- so any number of unchanged reloads never pushes history out.
-- Nothing here yields; clock (a function giving epoch seconds) is for tests.
local sluice = require "sluice"
local crypto = require "sluice.crypto"
local options = require "sluice.options"

local _M = {}
local mt = { __index = _M }

_M.KEEP = 5

local NEW_OPTIONS = { keep = { type = "number", integer = true, min = 1 }, clock = "function" }

--- new([opts]) -> history. opts.keep: entries kept (5); opts.clock.
function _M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("sluice.app.configs.new: bad argument #1 (table expected, got " .. type(opts) .. ")", 2)
  end
  options.check("sluice.app.configs.new", opts, NEW_OPTIONS)
  return setmetatable({ entries = {}, keep = opts.keep or _M.KEEP, clock = opts.clock or sluice.time,
    seq = 0 }, mt)
end

-- The digest of what was applied: the source, then each file by path.
local function digest(source, files)
  local paths = {}
  for p in pairs(files) do paths[#paths + 1] = p end
  table.sort(paths)
  local parts = { source or "" }
  for _, p in ipairs(paths) do
    parts[#parts + 1] = "\0" .. p .. "\0" .. files[p]
  end
  return crypto.digest("sha256", table.concat(parts), "hex")
end

--- h:applied(a) -> entry, added. a: config (table), source (string or
-- nil), files ({path = text}), by, how. added is false when a's source and
-- files are those of the live entry (which is returned, unchanged).
function _M:applied(a)
  if type(a) ~= "table" or type(a.config) ~= "table" then
    error("sluice.app.configs.applied: bad argument #1 (table with a table 'config' expected)", 2)
  end
  local files = {}
  for p, text in pairs(a.files or {}) do files[p] = text end
  local sum = digest(a.source, files)
  local live = self.entries[#self.entries]
  -- (a configuration given as a table, without its text, is never "the same")
  if live and a.source and live.source and live.sha256 == sum then return live, false end
  self.seq = self.seq + 1
  local entry = { id = self.seq, config = a.config, source = a.source, files = files, sha256 = sum,
    applied_at = self.clock(), by = a.by or "start", how = a.how or "start" }
  self.entries[#self.entries + 1] = entry
  while #self.entries > self.keep do table.remove(self.entries, 1) end
  return entry, true
end

--- h:live() -> the live entry, or nil before the first
function _M:live()
  return self.entries[#self.entries]
end

--- h:get(id) -> the kept entry of that id, or nil
function _M:get(id)
  for _, e in ipairs(self.entries) do
    if e.id == id then return e end
  end
  return nil
end

--- h:target(steps) -> the entry steps (1 by default) before the live one,
-- or nil, err when the history does not go back that far.
function _M:target(steps)
  steps = steps or 1
  if type(steps) ~= "number" or steps < 1 or steps ~= math.floor(steps) then
    return nil, "steps must be a whole number >= 1, got " .. tostring(steps)
  end
  local n = #self.entries
  local entry = self.entries[n - steps]
  if not entry then
    local kept = math.max(n - 1, 0)
    return nil, "no configuration " .. steps .. " before the live one to roll back to ("
      .. kept .. (kept == 1 and " earlier configuration is" or " earlier configurations are") .. " kept)"
  end
  return entry
end

--- h:rolled_back(entry, by) -> entry, now live: the entries applied after
-- it are dropped, its applied_at is now, by as given, how "rollback".
function _M:rolled_back(entry, by)
  local at
  for i, e in ipairs(self.entries) do
    if e == entry then at = i end
  end
  if not at then error("sluice.app.configs.rolled_back: bad argument #1 (not an entry of this history)", 2) end
  for i = #self.entries, at + 1, -1 do self.entries[i] = nil end
  entry.applied_at, entry.by, entry.how = self.clock(), by or "rollback", "rollback"
  return entry
end

local function iso(t) return sluice.iso8601(math.floor(t)) end

-- what an operator sees of an entry: no source, no config (they may carry
-- secrets); their sha256 and size tell two apart
local function summary(e, live)
  local paths = {}
  for p in pairs(e.files) do paths[#paths + 1] = p end
  table.sort(paths)
  return { id = e.id, applied_at = iso(e.applied_at), by = e.by, how = e.how, sha256 = e.sha256,
    bytes = e.source and #e.source or nil, files = #paths > 0 and paths or nil, live = live or nil }
end

--- h:view() -> { live = summary, history = { summary, ... } } newest
-- first; a summary is {id, applied_at (ISO 8601, whole seconds), by, how,
-- sha256, bytes (of the source), files (paths), live (true on the live one)}.
function _M:view()
  local out, n = {}, #self.entries
  for i = n, 1, -1 do out[#out + 1] = summary(self.entries[i], i == n) end
  return { live = out[1], history = out }
end

return _M
