-- The configuration history (sluice.app.configs) and rollback: what each
-- entry keeps (the file's text, the collector scripts' texts, when, by
-- whom), rollback from the REPL and POST /reload {"rollback": true} (twice:
-- one step further back each time, building from the kept texts, not the
-- files on disk), /status naming the live one, and a configuration that does
-- not build never becoming live, by reload or by rollback.
local sluice = require "sluice"
local http = require "sluice.http"
local log = require "sluice.log"
local app_mod = require "sluice.app"
local configs = require "sluice.app.configs"
local operator = require "sluice.operator"
local repl = require "sluice.repl"
local files = require "support.files"
local wait_for = require("support.wait").wait_for

local write, read = files.write, files.read

local probe = { refuse = false }
package.loaded["configs_spec_probe"] = probe

-- the collector: its tag (version) is in what it stores
local COLLECTOR = [[
local collector = require "sluice.collector"
if require("configs_spec_probe").refuse then error("refused by the probe", 0) end
return collector.define({
  name = "tagged", interval = 3600, limiter = false, breaker = false, retry = false,
  tables = { tags = { columns = { id = "integer", tag = "text" }, key = { "id" } } },
  collect = function() return { { id = 1, tag = %q } } end,
})
]]

local CONFIG = [[
return {
  store = %q, name = %q,
  admin = { port = 0, insecure_loopback_mutations = true },
  collectors = { { file = "tagged.lua" } },
}
]]

describe("configuration history", function()
  setup(function() log.output("/dev/null") end)
  teardown(function()
    log.output("-")
    files.cleanup()
  end)

  it("keeps the last entries with their ids, times, texts and who applied them", function()
    local now = 100
    local h = configs.new({ keep = 3, clock = function() return now end })
    local e1, added = h:applied({ config = {}, source = "return {1}", files = { ["/c/a.lua"] = "A" } })
    assert.same({ 1, 100, "start", "start", "return {1}", { ["/c/a.lua"] = "A" }, true },
      { e1.id, e1.applied_at, e1.by, e1.how, e1.source, e1.files, added })
    -- the same text and scripts again: nothing added, the live entry unchanged
    now = 105
    local same, again = h:applied({ config = {}, source = "return {1}", files = { ["/c/a.lua"] = "A" }, by = "x" })
    assert.same({ e1, false, 100, "start" }, { same, again, e1.applied_at, e1.by })
    -- a changed script is a new configuration
    now = 110
    local e2 = h:applied({ config = {}, source = "return {1}", files = { ["/c/a.lua"] = "B" }, by = "SIGHUP",
      how = "reload" })
    now = 120
    h:applied({ config = {}, source = "return {3}", files = {}, by = "repl", how = "reload" })
    now = 130
    local e4 = h:applied({ config = {}, source = "return {4}", files = {}, by = "POST /reload", how = "reload" })
    -- keep = 3: the first is gone
    local v = h:view()
    assert.same({ 4, 3, 2 }, { v.history[1].id, v.history[2].id, v.history[3].id })
    assert.same({ id = 4, applied_at = "1970-01-01T00:02:10Z", by = "POST /reload", how = "reload",
      sha256 = e4.sha256, bytes = 10, live = true }, v.live)
    assert.same({ "/c/a.lua" }, v.history[3].files)
    assert.equal(64, #e4.sha256)
    assert.is_true(e2.sha256 ~= e1.sha256)
    assert.is_nil(h:get(1))
    -- two steps back is entry 2; rolled back to, the later ones are dropped
    assert.equal(e2, (h:target(2)))
    assert.same({ nil, "no configuration 3 before the live one to roll back to (2 earlier configurations are kept)" },
      { h:target(3) })
    now = 140
    h:rolled_back(e2, "repl")
    assert.same({ 2, 140, "repl", "rollback" }, { h:live().id, e2.applied_at, e2.by, e2.how })
    assert.same({ 1 }, { #h:view().history })
    assert.same({ nil, "no configuration 1 before the live one to roll back to (0 earlier configurations are kept)" },
      { configs.new():target(1) })
  end)

  it("rolls back twice from the kept texts, shows the live one in /status, and never applies a bad one", function()
    local dir = files.tmpdir()
    local file, script = dir .. "/sluice.lua", dir .. "/tagged.lua"
    local function version(v)
      write(script, COLLECTOR:format(v))
      write(file, CONFIG:format(dir .. "/db.sqlite", "svc-" .. v))
      return read(file), read(script)
    end
    probe.refuse = false
    local src1, col1 = version("v1")
    local t0 = sluice.time()
    local app = app_mod.run(assert(loadfile(file))(), file)
    local t1 = sluice.time()
    finally(function()
      for _, c in ipairs(app.order) do c:stop() end
      app.admin:close()
      app.history:stop()
      app.store:close()
      app_mod.current = nil
    end)
    local base = "http://127.0.0.1:" .. app.admin.port
    local function call(method, path, body)
      local res = assert(http.request({ method = method, url = base .. path,
        headers = { ["Content-Type"] = "application/json" }, body = body and require("cjson").encode(body) or nil }))
      return res.status, res:json()
    end
    local function tag()
      local c = app.collectors.tagged
      local n = c:counters().collections_completed
      assert(c:run_once())
      assert.equal(n + 1, c:counters().collections_completed)
      return app.store:query("SELECT tag FROM tags WHERE id = 1")[1].tag
    end
    local function live_id()
      local _, st = call("GET", "/status")
      return st.configuration.id, st.configuration
    end
    wait_for("the first run", function() return app.collectors.tagged:counters().collections_completed == 1 end)
    -- (/status has each collector's next run: the first came at start, the next an interval later)
    local next_run = app.collectors.tagged:stats().next_run
    local now = sluice.time()
    assert.is_true(next_run:sub(1, 19) .. "Z" >= operator.iso(now + 3590)
      and next_run:sub(1, 19) .. "Z" <= operator.iso(now + 3600), next_run)

    -- entry 1: the file's text and the script's, applied at start
    local e1 = app.configs:live()
    assert.same({ 1, src1, { [script] = col1 }, "start", "start" }, { e1.id, e1.source, e1.files, e1.by, e1.how })
    assert.is_true(e1.applied_at >= t0 and e1.applied_at <= t1)
    local _, st = call("GET", "/status")
    assert.same({ id = 1, applied_at = operator.iso(e1.applied_at), by = "start", how = "start",
      sha256 = e1.sha256, bytes = #src1, files = { script }, live = true }, st.configuration)

    -- 2 and 3 by reloads (the REPL's, then POST /reload)
    local src2, col2 = version("v2")
    t0 = sluice.time()
    assert(app_mod.reload("repl"))
    local e2 = app.configs:live()
    assert.same({ 2, src2, { [script] = col2 }, "repl", "reload" }, { e2.id, e2.source, e2.files, e2.by, e2.how })
    assert.is_true(e2.applied_at >= t0 and e2.applied_at <= sluice.time())
    version("v3")
    local status, body = call("POST", "/reload")
    assert.same({ 200, "reloaded", 3, "POST /reload" }, { status, body.status, body.configuration.id,
      body.configuration.by })
    assert.equal("v3", tag())
    -- an unchanged reload adds nothing
    assert(app_mod.reload("repl"))
    assert.same({ 3, 3 }, { live_id(), #app.configs:view().history })

    -- a configuration that does not build never becomes live
    write(file, "return {\n  store = ,\n}\n")
    status, body = call("POST", "/reload")
    assert.same({ 422, "refused", file .. ":2: unexpected symbol near ','" }, { status, body.status, body.error })
    assert.same({ 3, 3, "v3" }, { live_id(), #app.configs:view().history, tag() })

    -- rollback 1: POST /reload {"rollback": true} -> 2, built from its kept
    -- texts (the file on disk is broken, the script on disk is v3)
    t0 = sluice.time()
    status, body = call("POST", "/reload", { rollback = true })
    assert.same({ 200, "rolled_back", 2, "POST /reload", "rollback" }, { status, body.status, body.configuration.id,
      body.configuration.by, body.configuration.how })
    assert.equal("v2", tag())
    assert.equal("svc-v2", app.config.name)
    assert.is_true(e2.applied_at >= t0 and e2.applied_at <= sluice.time())
    local id, conf = live_id()
    assert.same({ 2, operator.iso(e2.applied_at) }, { id, conf.applied_at })

    -- rollback 2, from the REPL -> 1
    local s = repl.session()
    local r = repl.eval(s, "rollback()")
    assert.is_true(r.ok, r.output)
    assert.matches("id = 1,", r.output, 1, true)
    assert.same({ 1, "v1", "svc-v1", "repl" }, { live_id(), tag(), app.config.name, app.configs:live().by })
    assert.same({ 1 }, { #app.configs:view().history })
    r = repl.eval(s, "config(1)")
    assert.same({ true, src1 .. "\n" }, { r.ok, r.output })

    -- nothing further back: refused, 1 stays
    r = repl.eval(s, "rollback()")
    assert.same({ false, "no configuration 1 before the live one to roll back to (0 earlier configurations are kept)\n" },
      { r.ok, r.output })
    status, body = call("POST", "/reload", { rollback = true })
    assert.same({ 422, "refused" }, { status, body.status })
    assert.equal(1, live_id())

    -- a kept configuration that no longer builds is refused and changes nothing
    version("v4")
    assert(app_mod.reload("repl"))
    assert.same({ 4, "v4" }, { live_id(), tag() })
    probe.refuse = true
    status, body = call("POST", "/reload", { rollback = true })
    assert.same({ 422, "refused", file .. ": collectors[1].file: refused by the probe" },
      { status, body.status, body.error })
    assert.same({ 4, "v4", 2 }, { live_id(), tag(), #app.configs:view().history })
    probe.refuse = false

    -- bad requests
    status, body = call("POST", "/reload", { rollback = "yes" })
    assert.same({ 400, "field 'rollback' must be true or false" }, { status, body.error })
    status, body = call("POST", "/reload", { steps = 2 })
    assert.same({ 400, 'field \'steps\' goes with "rollback": true' }, { status, body.error })
    status, body = call("POST", "/reload", { rollback = true, steps = 0 })
    assert.same({ 400, "steps must be a whole number >= 1" }, { status, body.error })
    status, body = call("POST", "/reload", { rollback = true, why = 1 })
    assert.same({ 400, "unknown field 'why'" }, { status, body.error })
    assert.equal(4, live_id())
  end)
end)
