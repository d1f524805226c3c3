--- status_page_cdp.lua: drives headless Chromium over the DevTools
-- protocol (sluice.ws) for status_page.sh, and checks the status page it
-- renders against the admin API's JSON. Run with `sluice run`; the
-- environment names DEVTOOLS (the browser's debugging port), ADMIN (the
-- admin API's base URL) and SHOT (where to write the screenshot). Prints
-- one "ok - ..." or "not ok - ..." line per check; exits 1 when something
-- cannot be driven at all.
local sluice = require "sluice"
local http = require "sluice.http"
local ws = require "sluice.ws"
local json = require "cjson"
local crypto = require "sluice.crypto"

local ADMIN, SHOT = os.getenv("ADMIN"), os.getenv("SHOT")
local DEVTOOLS = "http://127.0.0.1:" .. os.getenv("DEVTOOLS")

local function check(name, cond, detail)
  print((cond and "ok - " or "not ok - ") .. name .. ((not cond and detail) and (" (" .. detail .. ")") or ""))
  io.stdout:flush()
end

local function fetch(method, url)
  local res = assert(http.request({ method = method, url = url, timeout = 10 }))
  assert(res.status == 200, url .. " answered " .. res.status .. ": " .. res.body)
  return json.decode(res.body)
end

-- a tab of its own
local target = fetch("PUT", DEVTOOLS .. "/json/new?about:blank")
local conn = assert(ws.connect(target.webSocketDebuggerUrl, { timeout = 10, max_message = 64 * 2 ^ 20 }))

local errors = {} -- what the page said went wrong: exceptions, console.error, error log entries
local next_id = 0

local function event(m)
  local p = m.params or {}
  if m.method == "Runtime.exceptionThrown" then
    local d = p.exceptionDetails or {}
    errors[#errors + 1] = "exception: " .. tostring(d.exception and d.exception.description or d.text)
  elseif m.method == "Runtime.consoleAPICalled" and (p.type == "error" or p.type == "assert") then
    local parts = {}
    for _, a in ipairs(p.args or {}) do parts[#parts + 1] = tostring(a.value or a.description) end
    errors[#errors + 1] = "console." .. p.type .. ": " .. table.concat(parts, " ")
  elseif m.method == "Log.entryAdded" and p.entry and p.entry.level == "error" then
    errors[#errors + 1] = "log (" .. tostring(p.entry.source) .. "): " .. tostring(p.entry.text)
      .. (p.entry.url and (" " .. p.entry.url) or "")
  end
end

local function cdp(method, params)
  next_id = next_id + 1
  local id = next_id
  assert(conn:send(json.encode({ id = id, method = method, params = params or json.decode("{}") })))
  local deadline = sluice.now() + 30
  while sluice.now() < deadline do
    local data = assert(conn:receive(deadline - sluice.now()))
    local m = json.decode(data)
    if m.id == id then
      if m.error then error(method .. ": " .. json.encode(m.error), 0) end
      return m.result
    elseif m.method then
      event(m)
    end
  end
  error(method .. ": no answer within 30 s", 0)
end

-- evaluates expr in the page: its value (JSON-able)
local function eval(expr)
  local r = cdp("Runtime.evaluate", { expression = expr, returnByValue = true, awaitPromise = true })
  if r.exceptionDetails then error("evaluate: " .. json.encode(r.exceptionDetails), 0) end
  return r.result.value
end

-- until pred() is true (polling the page), at most limit seconds
local function wait(what, limit, pred)
  local deadline = sluice.now() + limit
  while sluice.now() < deadline do
    if pred() then return true end
    sluice.sleep(0.1)
  end
  check(what .. " within " .. limit .. " s", false)
  return false
end

cdp("Runtime.enable")
cdp("Log.enable")
cdp("Page.enable")
cdp("Emulation.setDeviceMetricsOverride", { width = 1280, height = 1500, deviceScaleFactor = 1, mobile = false })
cdp("Page.navigate", { url = ADMIN .. "/" })
local function updates()
  return eval("Number(document.body && document.body.getAttribute('data-updates')) || 0")
end
wait("the page's first refresh", 20, function() return updates() >= 1 end)

-- what the page shows, and what the API says at the same time (the states
-- were settled before the page was loaded: the backfill is stalled)
local DOM = [[
(function () {
  var q = function (s) { return Array.prototype.slice.call(document.querySelectorAll(s)); };
  return JSON.stringify({
    collectors: q("tr[data-collector]").map(function (tr) {
      return { name: tr.getAttribute("data-collector"), status: tr.getAttribute("data-status"),
        failing: tr.classList.contains("failing"), red: getComputedStyle(tr).backgroundColor,
        error: tr.querySelector(".error-text").textContent };
    }),
    timelines: q("svg.timeline").map(function (s) {
      return { name: s.getAttribute("data-breaker"), transitions: q("svg.timeline[data-breaker='" +
        s.getAttribute("data-breaker") + "'] line.transition").map(function (l) {
          return { from: l.getAttribute("data-from"), to: l.getAttribute("data-to"),
            at: Number(l.getAttribute("data-at")) };
        }) };
    }),
    progress: q("progress.backfill").map(function (p) {
      return { job: p.getAttribute("data-job"), value: p.value, max: p.max };
    }),
    charts: q("svg.limiter-chart").map(function (s) { return s.getAttribute("data-limiter"); }),
    imgs: q("img").length + q("b").length,
    xss: window.__xss === undefined ? null : window.__xss,
    live: document.getElementById("config-live")
      && Number(document.getElementById("config-live").getAttribute("data-id"))
  });
})()
]]
local page = json.decode(eval(DOM))
local status = fetch("GET", ADMIN .. "/status")
local hist = fetch("GET", ADMIN .. "/history")

local rows = {}
for _, r in ipairs(page.collectors) do rows[r.name] = r end
local broken, flaky, good = rows.broken or {}, rows.flaky or {}, rows.binance_klines or {}
check("the failing collector is shown as failing (red row, its status)",
  broken.status == "failed" and broken.failing == true and broken.red ~= "rgba(0, 0, 0, 0)"
    and status.collectors.broken.status == "failed", json.encode(broken))
check("its last error is shown as text, markup and all",
  broken.error == status.collectors.broken.last_error
    and broken.error:find("<img src=x onerror=window.__xss=1>", 1, true) ~= nil, broken.error)
check("no markup from an error reached the DOM", page.imgs == 0 and page.xss == json.null,
  "imgs " .. tostring(page.imgs))
check("the circuit-open collector is shown so", flaky.status == "circuit_open" and flaky.failing == true,
  json.encode(flaky))
check("the healthy collector is shown healthy", good.status == "healthy" and good.failing == false,
  json.encode(good))

local tl = {}
for _, t in ipairs(page.timelines) do tl[t.name] = t.transitions end
local want = {}
for _, t in ipairs(hist.breakers.flaky.transitions) do want[#want + 1] = { from = t.from, to = t.to, at = t.at } end
check("the breaker timeline has its transitions",
  #want >= 1 and want[1].to == "open" and json.encode(tl.flaky or {}) == json.encode(want),
  json.encode(tl.flaky) .. " vs " .. json.encode(want))
check("a timeline for every breaker", tl.binance_klines ~= nil and #tl.binance_klines == 0 and tl.broken == nil)

local job_id, job = next(status.backfills or {})
local bar = page.progress[1] or {}
check("the progress bar matches /status", job and #page.progress == 1 and bar.job == job_id
  and bar.value == job.windows_done and bar.max == job.windows_total and job.windows_done == 4
  and job.windows_total == 12, json.encode(bar) .. " vs " .. json.encode(job or {}))
check("a chart for every limiter", #page.charts >= 2, json.encode(page.charts))

-- the rollback button: two clicks (arm, confirm), then configuration 1 is live
check("configuration 2 is live before the rollback", page.live == 2 and status.configuration.id == 2,
  tostring(page.live))
eval("document.getElementById('rollback').click()")
eval("document.getElementById('rollback').click()")
wait("the rollback through the page's button", 20, function()
  return fetch("GET", ADMIN .. "/status").configuration.id == 1
    and eval("Number(document.getElementById('config-live').getAttribute('data-id'))") == 1
end)
local after = fetch("GET", ADMIN .. "/status").configuration
check("the page's rollback made configuration 1 live", after.id == 1 and after.how == "rollback"
  and after.by == "POST /reload", json.encode(after))

-- one more refresh so that late errors show, then the screenshot
local n = updates()
wait("another refresh", 20, function() return updates() > n end)
local shot = cdp("Page.captureScreenshot", { format = "png", captureBeyondViewport = true })
local png = assert(crypto.decode(shot.data, "base64"))
local f = assert(io.open(SHOT, "wb"))
f:write(png)
f:close()
check("a screenshot was saved (" .. SHOT .. ", " .. #png .. " bytes)", png:sub(2, 4) == "PNG" and #png > 10000)
check("no JavaScript errors in the console", #errors == 0, table.concat(errors, "; "))

cdp("Page.close")
conn:close()
