-- support.bench -- how a benchmark reports a figure: the line a person reads
-- and a machine line that tests/bench/run.sh collects into its JSON file.
--
-- Machine line format (one per figure, anywhere in a benchmark's stdout):
--   @figure <name> <value> [unit]
-- name: [a-z0-9_.]+, dotted by benchmark ("http.get_vs_wrk"); value: a number;
-- unit: free text without spaces ("ratio", "rows/s", "MiB", "ms"). Shell
-- benchmarks print the same line with printf.
local _M = {}

local NAME = "^[a-z0-9_%.]+$"

-- Prints "@figure name value unit"; returns value.
function _M.figure(name, value, unit)
  if type(name) ~= "string" or not name:match(NAME) then
    error("bench.figure: name must match [a-z0-9_.]+, got " .. tostring(name), 2)
  end
  if type(value) ~= "number" or value ~= value then
    error("bench.figure: value must be a number, got " .. tostring(value), 2)
  end
  if unit ~= nil and (type(unit) ~= "string" or unit:find("%s")) then
    error("bench.figure: unit must be a word, got " .. tostring(unit), 2)
  end
  io.write(string.format("@figure %s %.6g%s\n", name, value, unit and (" " .. unit) or ""))
  io.flush()
  return value
end

return _M
