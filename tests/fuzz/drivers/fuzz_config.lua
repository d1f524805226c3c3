-- fuzz_config: the configuration loader's validation (sluice.config.prepare)
-- on configurations decoded from JSON.
--
-- Input: JSON. An array [config, env, profile] gives the configuration
-- table, the environment overrides (name -> value, values as strings) and
-- the --profile name; any other JSON object is the configuration itself.
-- Invariant: prepare returns a table that validates again, or raises a
-- string "fuzz.lua: <key>: <message>" -- never a Lua runtime error.
local cjson = require "cjson.safe"
local config = require "sluice.config"

local FILE = "fuzz.lua"

local function finding(msg, detail)
  error("invariant broken: " .. msg .. (detail and (": " .. tostring(detail)) or ""), 0)
end

local function strings(t)
  local out = {}
  if type(t) ~= "table" then return out end
  for k, v in pairs(t) do
    if type(v) ~= "table" and v ~= cjson.null then out[tostring(k)] = tostring(v) end
  end
  return out
end

return function(input)
  local v = cjson.decode(input)
  if type(v) ~= "table" then return end
  local cfg, env, profile = v, {}, nil
  if v[1] ~= nil then
    cfg, env = v[1], strings(v[2])
    if type(v[3]) == "string" then profile = v[3] end
    if type(cfg) ~= "table" then return end
  end
  local ok, res = pcall(config.prepare, cfg, FILE, { env = env, profile = profile })
  if ok then
    if type(res) ~= "table" then finding("prepare returned a " .. type(res)) end
    local ok2, err2 = pcall(config.validate, res, FILE)
    if not ok2 then finding("a prepared configuration does not validate", err2) end
    return
  end
  if type(res) ~= "string" then finding("prepare raised a " .. type(res)) end
  -- "fuzz.lua: key: message"; a runtime error ("attempt to index ...",
  -- "stack overflow") has "file.lua:line:" in front instead
  if res:sub(1, #FILE + 2) ~= FILE .. ": " or not res:find(": ", #FILE + 3, true) then
    finding("prepare raised an error that names no key", res)
  end
end
