--- sluice.collector.secret: secrets read from the environment when used.
--
-- collector.env("NAME") returns one: a value that prints as "<secret>", so
-- that it cannot leak into logs or status output, and that reveal() turns
-- into the variable's value (os.getenv at each use, so a changed
-- environment is seen at the next request). This module owns the secrets'
-- metatable and requires nothing: modules below the collector framework
-- (sluice.redact, which sluice.log uses) can tell secrets without loading
-- it. Nothing here yields.
local _M = {}

local secret_mt = {
  __tostring = function() return "<secret>" end,
}

--- env(name [, default]) -> a secret resolved from the environment when
-- used (default when the variable is not set).
function _M.env(name, default)
  if type(name) ~= "string" then
    error("sluice.collector.env: bad argument #1 (string expected, got " .. type(name) .. ")", 2)
  end
  return setmetatable({ env = name, default = default }, secret_mt)
end

--- is_secret(v) -> whether v came from env().
function _M.is_secret(v)
  return getmetatable(v) == secret_mt
end

--- reveal(v) -> a secret's value now; any other value as it is.
function _M.reveal(v)
  if getmetatable(v) == secret_mt then
    return os.getenv(v.env) or v.default
  end
  return v
end

return _M
