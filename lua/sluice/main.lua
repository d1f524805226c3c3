--- sluice.main: what `sluice run FILE` runs as its main task. FILE is
-- either a script (it runs, and that is all) or a configuration (it
-- returns a table, which sluice.app runs).
return function(chunk, file, profile, ...)
  local result = chunk(...)
  if type(result) == "table" and not result._is_collector_spec then
    require("sluice.app").run(result, file, { profile = profile })
  elseif profile then
    error(file .. ": --profile needs a configuration (a file returning a table)", 0)
  end
end
