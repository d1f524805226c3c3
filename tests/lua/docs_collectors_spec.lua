-- docs/collectors.md runs: every ```lua block is a chunk of its own, run
-- in a task inside sluice, and fails with its own error; a block marked
-- ```lua fragment is not run. The counts below keep a section from losing
-- its examples without anyone noticing.
local sluice = require "sluice"
local log = require "sluice.log"

local DOC = "docs/collectors.md"

-- At least this many runnable blocks per section (heading text as written).
-- Besides, every section with a ```lua fence has a runnable block.
local MINIMUM = {
  ["The collector file"] = 4,
  ["The request pipeline and verdicts"] = 3,
  ["Testing a collector"] = 2,
}

-- The document's sections: {title, line, blocks = {{line, code}}, fences}.
-- Raises on a fence it cannot read (a typo in "lua fragment", an
-- unclosed block): such a block would otherwise silently not run.
local function sections()
  local f = assert(io.open(DOC))
  local list, current, block = {}, nil, nil
  local n = 0
  for line in f:lines() do
    n = n + 1
    if block then
      if line:match("^```%s*$") then
        if block.run then current.blocks[#current.blocks + 1] = block end
        block = nil
      else
        block.code[#block.code + 1] = line
      end
    elseif line:match("^```") then
      local info = line:match("^```%s*(.-)%s*$")
      if not current then error(DOC .. ":" .. n .. ": a code block before the first section") end
      if info:lower():match("^lua") then
        current.fences = current.fences + 1
        if info ~= "lua" and info ~= "lua fragment" then
          error(DOC .. ":" .. n .. ": unknown block kind '" .. info .. "' (lua or lua fragment)")
        end
      end
      block = { line = n, code = {}, run = info == "lua" }
    else
      local title = line:match("^## (.-)%s*$")
      if title then
        current = { title = title, line = n, blocks = {}, fences = 0 }
        list[#list + 1] = current
      end
    end
  end
  f:close()
  if block then error(DOC .. ":" .. block.line .. ": code block never closed") end
  return list
end

-- Runs one block as a chunk named after its place, in a task of its own.
local function run_block(b)
  -- line numbers in errors are the document's
  local src = string.rep("\n", b.line) .. table.concat(b.code, "\n")
  local chunk, err = loadstring(src, "@" .. DOC)
  if not chunk then error(err, 0) end
  local task = sluice.spawn(function() return xpcall(chunk, debug.traceback) end)
  local done, ok, msg = sluice.wait(task)
  if not done then error(tostring(ok), 0) end
  if not ok then error(msg, 0) end
end

local all = sections()

describe("docs/collectors.md", function()
  before_each(function() log.output("/dev/null") end)
  after_each(function() log.output("-") end)

  it("has its sections with their examples", function()
    local seen = {}
    for _, s in ipairs(all) do
      seen[s.title] = #s.blocks
      if s.fences > 0 then
        assert(#s.blocks > 0, DOC .. ":" .. s.line .. ": section '" .. s.title
          .. "' has code but no runnable ```lua block")
      end
    end
    for title, min in pairs(MINIMUM) do
      assert(seen[title], DOC .. ": no section '## " .. title .. "'")
      assert(seen[title] >= min, DOC .. ": section '" .. title .. "' has " .. seen[title]
        .. " runnable blocks, at least " .. min .. " expected")
    end
  end)

  for _, s in ipairs(all) do
    for i, b in ipairs(s.blocks) do
      it(s.title .. " #" .. i .. " (line " .. b.line .. ")", function()
        run_block(b)
      end)
    end
  end
end)
