--- support.files: temporary directories and files for specs and benches.
--
--   local files = require "support.files"
--   local dir = files.tmpdir()            -- a fresh directory under /tmp
--   files.write(dir .. "/sluice.lua", "return { ... }")
--   local text = files.read(path)         -- nil when there is no such file
--   files.cleanup()                       -- removes every directory tmpdir made
--
-- tmpdir() remembers what it made until cleanup(): call that from a
-- teardown (or finally). Nothing here yields.
local _M = {}

local made = {}

--- tmpdir([prefix]) -> the path of a new empty directory (mktemp -d).
function _M.tmpdir(prefix)
  local p = io.popen("mktemp -d /tmp/" .. (prefix or "sluice-spec") .. ".XXXXXX")
  local dir = p:read("*l")
  p:close()
  assert(dir and dir ~= "", "mktemp -d failed")
  made[#made + 1] = dir
  return dir
end

--- write(path, text): the file holds exactly text (created or replaced).
function _M.write(path, text)
  local f = assert(io.open(path, "wb"))
  assert(f:write(text))
  assert(f:close())
end

--- read(path) -> the file's content, or nil when it cannot be opened.
function _M.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

--- cleanup(): removes every directory tmpdir() made (and what is in them).
function _M.cleanup()
  for _, dir in ipairs(made) do os.execute("rm -rf '" .. dir .. "'") end
  made = {}
end

return _M
