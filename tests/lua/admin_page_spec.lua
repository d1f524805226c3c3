-- sluice.admin.page: GET / and its assets served exactly, with a policy
-- that allows no inline script and no framing, under the admin API's token
-- rules (the page and /history open, /status and rollback need the token).
local http = require "sluice.http"
local log = require "sluice.log"
local app_mod = require "sluice.app"
local page = require "sluice.admin.page"
local files = require "support.files"

describe("the status page", function()
  local app, base

  setup(function()
    log.output("/dev/null")
    local dir = files.tmpdir()
    files.write(dir .. "/sluice.lua", ([[
return { store = %q, admin = { port = 0, token = "page-spec-t0ken" }, collectors = {} }
]]):format(dir .. "/db.sqlite"))
    app = app_mod.run(assert(loadfile(dir .. "/sluice.lua"))(), dir .. "/sluice.lua")
    base = "http://127.0.0.1:" .. app.admin.port
  end)

  teardown(function()
    app.admin:close()
    app.history:stop()
    app.store:close()
    app_mod.current = nil
    files.cleanup()
    log.output("-")
  end)

  local function get(path, token)
    return assert(http.request({ url = base .. path,
      headers = token and { Authorization = "Bearer " .. token } or nil }))
  end

  it("serves the page, its script and style as compiled in, without a token", function()
    for path, want in pairs({ ["/"] = { page.HTML, "text/html; charset=utf-8" },
      ["/ui/page.js"] = { page.JS, "text/javascript; charset=utf-8" },
      ["/ui/page.css"] = { page.CSS, "text/css; charset=utf-8" } }) do
      local res = get(path)
      assert.same({ 200, want[1], want[2] }, { res.status, res.body, res.headers["content-type"] })
      assert.equal("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        .. "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        res.headers["content-security-policy"])
      assert.same({ "nosniff", "DENY", "no-store" }, { res.headers["x-content-type-options"],
        res.headers["x-frame-options"], res.headers["cache-control"] })
    end
    -- no inline script or style for the policy to refuse
    assert.is_nil(page.HTML:find("<script>", 1, true))
    assert.is_nil(page.HTML:find("style=", 1, true))
    -- the script never parses text as markup
    assert.is_nil(page.JS:find("innerHTML", 1, true))
    assert.is_nil(page.JS:find("insertAdjacentHTML", 1, true))
  end)

  it("keeps the token rules: /history open, /status and rollback need the token", function()
    local res = get("/history")
    assert.same({ 200, 10, 3600 }, { res.status, res:json().interval, res:json().span })
    assert.equal(401, get("/status").status)
    local st = get("/status", "page-spec-t0ken"):json()
    assert.same({ 1, "start" }, { st.configuration.id, st.configuration.how })
    res = assert(http.request({ method = "POST", url = base .. "/reload", body = '{"rollback": true}',
      headers = { ["Content-Type"] = "application/json" } }))
    assert.equal(401, res.status)
    res = assert(http.request({ method = "POST", url = base .. "/reload", body = '{"rollback": true}',
      headers = { ["Content-Type"] = "application/json", Authorization = "Bearer page-spec-t0ken" } }))
    assert.same({ 422, "no configuration 1 before the live one to roll back to (0 earlier configurations are kept)" },
      { res.status, res:json().error })
  end)
end)
