--- soak/census.lua -- a census of the Lua heap: every table reachable from
-- the registry, _G and package.loaded (through keys, values, metatables,
-- function upvalues and environments, and suspended coroutines' locals),
-- named by the first path that reaches it breadth-first, with its element
-- count. Two censuses of the same process, minutes apart, diffed by path,
-- say which tables grow (issue 22: the soak's Lua heap rose ~750 KiB/min).
--
-- In a running process, through its control socket:
--   sluice repl SOCKET -e 'return dofile("tests/bench/soak/census.lua").write("/tmp/c1.txt", true)'
-- writes one line per table, "<elements> <string bytes> <path>", biggest
-- first, and returns a summary. Then diff two files:
--   sluice run tests/bench/soak/census.lua --control none -- /tmp/c1.txt /tmp/c2.txt
-- prints the paths whose element count changed most (summed over tables
-- with the same path text).
local _M = {}

local function key_text(k)
  local tk = type(k)
  if tk == "string" then
    if #k > 40 then return "[" .. string.format("%q", k:sub(1, 40) .. "...") .. "]" end
    return k:match("^[%a_][%w_]*$") and ("." .. k) or ("[" .. string.format("%q", k) .. "]")
  end
  if tk == "number" then return "[#]" end -- array slots: one path for all
  return "[<" .. tk .. ">]"
end

--- Walks the heap; returns the list of { path, n, bytes } for every table,
-- and a tally of what else is reachable: functions (closures), their
-- distinct prototypes and an estimate of their bytecode and constants,
-- userdata, threads, and distinct strings with their bytes.
function _M.take()
  local seen = {}
  local queue, head, tail = {}, 1, 0
  local rows = {}
  local tally = { functions = 0, protos = 0, proto_bytes = 0, userdata = 0, threads = 0, strings = 0,
    string_bytes = 0 }
  local protos = {}
  local funcinfo = require("jit.util").funcinfo
  local function push(v, path)
    local tv = type(v)
    if tv == "string" then
      if not seen[v] then
        seen[v] = true
        tally.strings = tally.strings + 1
        tally.string_bytes = tally.string_bytes + #v + 17 -- GCstr header and terminator
      end
      return
    end
    if (tv == "table" or tv == "function" or tv == "userdata" or tv == "thread") and not seen[v] then
      seen[v] = true
      tail = tail + 1
      queue[tail] = { v, path }
    end
  end
  seen[seen] = true
  seen[queue] = true
  seen[rows] = true
  push(debug.getregistry(), "REG")
  push(_G, "_G")
  push(package.loaded, "loaded")
  while queue[head] do
    local item = queue[head]
    queue[head] = nil
    head = head + 1
    local v, path = item[1], item[2]
    local tv = type(v)
    if tv == "table" then
      local n, bytes = 0, 0
      local mt = debug.getmetatable(v)
      local weak = type(mt) == "table" and rawget(mt, "__mode")
      for k, x in next, v do
        n = n + 1
        if type(k) == "string" then bytes = bytes + #k end
        if type(x) == "string" then bytes = bytes + #x end
        local kt = key_text(k)
        if not (weak and weak:find("k")) then push(k, path .. "{key}") end
        if not (weak and weak:find("v")) then push(x, path .. kt) end
      end
      rows[#rows + 1] = { path, n, bytes }
      if mt then push(mt, path .. "<mt>") end
    elseif tv == "function" then
      tally.functions = tally.functions + 1
      local fi = funcinfo(v)
      if fi.source then -- a Lua function: its prototype, by where it is defined
        local key = fi.source .. ":" .. fi.linedefined .. ":" .. fi.lastlinedefined
        if not protos[key] then
          protos[key] = true
          tally.protos = tally.protos + 1
          -- instructions, constants and line info, roughly
          tally.proto_bytes = tally.proto_bytes + 104 + 4 * fi.bytecodes + 8 * (fi.nconsts + fi.gcconsts)
            + 2 * fi.bytecodes
        end
      end
      local i = 1
      while true do
        local name, x = debug.getupvalue(v, i)
        if not name then break end
        push(x, path .. "^" .. (name ~= "" and name or tostring(i)))
        i = i + 1
      end
      local env = debug.getfenv(v)
      if env ~= _G then push(env, path .. "<env>") end
    elseif tv == "userdata" then
      tally.userdata = tally.userdata + 1
      local mt = debug.getmetatable(v)
      if mt then push(mt, path .. "<mt>") end
      local env = debug.getfenv(v)
      if env then push(env, path .. "<env>") end
    elseif tv == "thread" then
      tally.threads = tally.threads + 1
      if coroutine.status(v) == "suspended" then
        for level = 0, 200 do
          local info = debug.getinfo(v, level, "f")
          if not info then break end
          push(info.func, path .. "@" .. level)
          for i = 1, 250 do
            local name, x = debug.getlocal(v, level, i)
            if not name then break end
            push(x, path .. "@" .. level .. "." .. name)
          end
        end
      end
    end
  end
  table.sort(rows, function(a, b) return a[2] > b[2] end)
  return rows, tally
end

--- Takes a census and writes it to FILE; returns a one-line summary.
-- gc: two full collections first, so that what is counted is held, not
-- garbage (weak tables keep their dead entries until a cycle ends).
function _M.write(file, gc)
  if gc then
    collectgarbage()
    collectgarbage()
  end
  local heap = collectgarbage("count")
  local rows, t = _M.take()
  local f = assert(io.open(file, "w"))
  local total = 0
  for _, r in ipairs(rows) do
    total = total + r[2]
  end
  local summary = string.format("heap %d KiB: %d tables (%d elements), %d functions (%d prototypes, ~%d KiB),"
    .. " %d userdata, %d threads, %d strings (~%d KiB)", heap, #rows, total, t.functions, t.protos,
    t.proto_bytes / 1024, t.userdata, t.threads, t.strings, t.string_bytes / 1024)
  f:write("# ", summary, "\n") -- (not a row: diff skips it)
  for _, r in ipairs(rows) do
    f:write(r[2], " ", r[3], " ", r[1], "\n")
  end
  f:close()
  return summary
end

-- A table's size, roughly: its header, a slot per element, the bytes of
-- the strings it holds directly (a string shared by many tables is counted
-- in each). Enough to rank what grows.
local function estimate(n, bytes)
  return 56 + 16 * n + bytes
end

local function load_census(file)
  local by = {}
  for line in io.lines(file) do
    if line:sub(1, 2) == "# " then by[0] = line:sub(3) end -- write()'s summary
    local n, bytes, path = line:match("^(%d+) (%d+) (.*)$")
    if n then
      -- the soak's collectors (c0001...) folded into one path, and tasks'
      -- stacks (@level) left out: they come and go with the runs in flight
      path = path:gsub("%.c%d%d%d%d", ".cNNNN"):gsub('%["c%d%d%d%d"%]', ".cNNNN")
      if not path:find("@") then
        local r = by[path] or { 0, 0 }
        by[path] = r
        r[1], r[2] = r[1] + tonumber(n), r[2] + estimate(tonumber(n), tonumber(bytes))
      end
    end
  end
  return by
end

--- Diffs two census files: the paths whose estimated size changed, biggest
-- change first (at most LIMIT of them), with their element counts.
function _M.diff(a_file, b_file, limit)
  local a, b = load_census(a_file), load_census(b_file)
  local head = { "before: " .. tostring(a[0]), "after:  " .. tostring(b[0]) }
  a[0], b[0] = nil, nil
  local none = { 0, 0 }
  local out, total = {}, 0
  for path, r in pairs(b) do
    local was = a[path] or none
    if r[2] ~= was[2] then out[#out + 1] = { path, was, r } end
    total = total + r[2] - was[2]
  end
  for path, was in pairs(a) do
    if not b[path] then
      out[#out + 1] = { path, was, none }
      total = total - was[2]
    end
  end
  table.sort(out, function(x, y) return math.abs(x[3][2] - x[2][2]) > math.abs(y[3][2] - y[2][2]) end)
  local lines = { head[1], head[2],
    string.format("estimated change over all tables: %+d KiB", math.floor(total / 1024)),
    "  bytes (est)   elements before -> after  path" }
  for i = 1, math.min(#out, limit or 60) do
    local r = out[i]
    lines[#lines + 1] = string.format("%+12d %+8d %8d -> %8d  %s", r[3][2] - r[2][2], r[3][1] - r[2][1],
      r[2][1], r[3][1], r[1])
  end
  return table.concat(lines, "\n")
end

local args = rawget(_G, "arg")
if type(args) == "table" and tostring(args[0]):match("census%.lua$") and args[1] and args[2] then
  print(_M.diff(args[1], args[2], tonumber(args[3])))
  return
end

return _M
