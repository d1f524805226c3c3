--- sluice.main: what `sluice run FILE` runs as its main task. FILE is
-- either a script (it runs, and that is all) or a configuration (it
-- returns a table, which sluice.app runs).
require "sluice.metrics" -- set up first: it counts the HTTP client's requests from the start
local collector = require "sluice.collector"
return function(chunk, file, profile, ...)
  local result = chunk(...)
  if type(result) == "table" and not collector.is_spec(result) then
    -- a configuration that cannot start is one line on stderr, exit 1
    local app, tb = require("sluice.app"), nil
    local ok, err = xpcall(app.run, function(e)
      tb = debug.traceback(tostring(e), 2)
      return e
    end, result, file, { profile = profile })
    if not ok then app.startup_failed(err, tb) end
  elseif profile then
    error(file .. ": --profile needs a configuration (a file returning a table)", 0)
  end
end
