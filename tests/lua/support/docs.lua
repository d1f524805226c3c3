--- support.docs: runs a Markdown document's examples as specs. Every
-- ```lua block is a chunk of its own, run in a task inside sluice, and
-- fails with its own error; a block marked ```lua fragment is not run.
--
--   require("support.docs").describe("docs/onchain.md", { ["Section title"] = 2 })
--
-- minimum: at least this many runnable blocks per section (heading text as
-- written), so that a section cannot lose its examples without anyone
-- noticing. Besides, every section with a ```lua fence has a runnable block.
local sluice = require "sluice"
local log = require "sluice.log"

local _M = {}

-- The document's sections: {title, line, blocks = {{line, code}}, fences}.
-- Raises on a fence it cannot read (a typo in "lua fragment", an
-- unclosed block): such a block would otherwise silently not run.
local function sections(DOC)
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
local function run_block(DOC, b)
  -- line numbers in errors are the document's
  local src = string.rep("\n", b.line) .. table.concat(b.code, "\n")
  local chunk, err = loadstring(src, "@" .. DOC)
  if not chunk then error(err, 0) end
  local task = sluice.spawn(function() return xpcall(chunk, debug.traceback) end)
  local done, ok, msg = sluice.wait(task)
  if not done then error(tostring(ok), 0) end
  if not ok then error(msg, 0) end
end

function _M.describe(DOC, MINIMUM)
  -- busted's functions live in the spec file's environment, not in ours
  local env = getfenv(2)
  local describe, it, before_each, after_each = env.describe, env.it, env.before_each, env.after_each
  local all = sections(DOC)
  describe(DOC, function()
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
      for title, min in pairs(MINIMUM or {}) do
        assert(seen[title], DOC .. ": no section '## " .. title .. "'")
        assert(seen[title] >= min, DOC .. ": section '" .. title .. "' has " .. seen[title]
          .. " runnable blocks, at least " .. min .. " expected")
      end
    end)

    for _, s in ipairs(all) do
      for i, b in ipairs(s.blocks) do
        it(s.title .. " #" .. i .. " (line " .. b.line .. ")", function()
          run_block(DOC, b)
        end)
      end
    end
  end)
end

return _M
