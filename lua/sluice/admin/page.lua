--- sluice.admin.page: the status page on the admin server, and the
-- history it draws from.
--
--   GET /               the page: HTML with no inline script or style
--   GET /ui/page.js     its script (sluice.admin.page_js)
--   GET /ui/page.css    its style
--   GET /history        sluice.history's view of the last hour (JSON)
--
-- Self-contained: compiled into the binary, no CDN, no build step; it works
-- offline. The page is a read view: it needs no token itself, and its
-- script reads /status and /logs with the token the operator types in
-- (kept in the tab's sessionStorage) when one is configured; the rollback
-- button is a POST /reload {"rollback": true} under the mutation rules.
-- The page is served with a Content-Security-Policy that allows only its
-- own script, style and API (no inline script, no frames: a collector's
-- error text can never run as code, and no other site can frame the
-- rollback button).
--
-- routes(route, ops): adds the routes through sluice.admin's route(method,
-- path, kind, handler), which applies the access policy; ops is the
-- sluice.operator object. Owns nothing.
local js = require "sluice.admin.page_js"

local _M = {}

_M.HTML = [==[
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sluice status</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/page.css">
<script src="/ui/page.js" defer></script>
</head>
<body data-updates="0">
<header>
  <h1>sluice</h1>
  <div id="summary"></div>
  <div id="updated" class="dim small"></div>
</header>
<noscript><p class="notice bad">This page needs JavaScript; the JSON is at /status, /health and /history.</p></noscript>
<p id="notice" class="notice" hidden></p>
<form id="token-form" hidden>
  <label>Admin token <input id="token" type="password" autocomplete="off"></label>
  <button type="submit">Use</button>
</form>
<section id="configuration">
  <h2>Configuration</h2>
  <p><span id="config"></span> <button id="rollback" type="button" hidden>Roll back</button></p>
</section>
<section id="collectors">
  <h2>Collectors</h2>
  <table>
    <thead><tr><th>Collector</th><th>Health</th><th>Last success</th><th>Rows</th><th>Error rate</th>
      <th>Next run</th><th>Last error</th></tr></thead>
    <tbody id="collectors-body"></tbody>
  </table>
</section>
<section id="breakers">
  <h2>Circuit breakers <span class="dim small">(last hour)</span></h2>
  <table>
    <thead><tr><th>Breaker</th><th>State</th><th>Failures</th><th>Timeline</th></tr></thead>
    <tbody id="breakers-body"></tbody>
  </table>
</section>
<section id="limiters">
  <h2>Rate limiters <span class="dim small">(last hour)</span></h2>
  <table>
    <thead><tr><th>Limiter</th><th>Allowed</th><th>Quota</th><th>Rate against quota</th></tr></thead>
    <tbody id="limiters-body"></tbody>
  </table>
</section>
<section id="backfills" hidden>
  <h2>Backfills</h2>
  <table>
    <thead><tr><th>Collector</th><th>State</th><th>Progress</th><th>Rows</th><th>ETA</th></tr></thead>
    <tbody id="backfills-body"></tbody>
  </table>
</section>
<section id="sinks" hidden>
  <h2>Sinks</h2>
  <table>
    <thead><tr><th>Sink</th><th>Kind</th><th>Outbox depth</th><th>Breaker</th><th>Last error</th></tr></thead>
    <tbody id="sinks-body"></tbody>
  </table>
</section>
<section id="logs">
  <h2>Recent warnings and errors</h2>
  <ol id="logs-list" class="logs"></ol>
</section>
</body>
</html>
]==]

_M.CSS = [==[
:root { --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --dim: #6e7781; --line: #d0d7de;
  --bg: #fff; --fg: #1f2328; }
@media (prefers-color-scheme: dark) {
  :root { --ok: #3fb950; --warn: #d29922; --bad: #f85149; --dim: #8b949e; --line: #30363d;
    --bg: #0d1117; --fg: #e6edf3; }
}
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 0 16px 32px; max-width: 1280px;
  background: var(--bg); color: var(--fg); }
header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; border-bottom: 1px solid var(--line); }
header h1 { font-size: 20px; margin: 12px 0; }
#summary { display: flex; gap: 12px; align-items: baseline; flex-wrap: wrap; flex: 1; }
h2 { font-size: 16px; margin: 20px 0 8px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { font-weight: 600; color: var(--dim); font-size: 12px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.chart { width: 55%; }
.dim { color: var(--dim); }
.small { font-size: 12px; }
.warn { color: var(--warn); }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; border: 1px solid currentColor; }
.st-healthy, .st-closed, .st-done { color: var(--ok); }
.st-degraded, .st-half-open, .st-running { color: var(--warn); }
.st-failed, .st-circuit_open, .st-open, .st-unhealthy, .st-unreachable { color: var(--bad); }
tr.failing { background: rgba(207, 34, 46, 0.12); }
tr.failing th, tr.failing .error-text { color: var(--bad); }
tr[data-collector] { color: inherit; }
.error-text { font-family: ui-monospace, monospace; font-size: 12px; white-space: pre-wrap; word-break: break-word;
  max-width: 420px; }
svg.timeline, svg.limiter-chart { display: block; width: 100%; background: rgba(110, 119, 129, 0.08); }
svg.timeline { height: 22px; }
svg.limiter-chart { height: 80px; }
svg.spark { vertical-align: middle; margin-left: 6px; }
svg.spark polyline { fill: none; stroke: var(--dim); stroke-width: 1; }
rect.seg.st-closed { fill: var(--ok); }
rect.seg.st-open { fill: var(--bad); }
rect.seg.st-half-open { fill: var(--warn); }
rect.seg { fill: var(--dim); opacity: 0.85; }
line.transition { stroke: var(--fg); stroke-width: 2; }
polyline.line { fill: none; stroke-width: 1.5; vector-effect: non-scaling-stroke; }
polyline.sent { stroke: #0969da; }
polyline.rate { stroke: var(--ok); }
polyline.quota { stroke: var(--bad); stroke-dasharray: 4 3; }
polyline.declared { stroke: var(--dim); stroke-dasharray: 1 3; }
circle.throttle { fill: var(--bad); }
rect.ban { fill: var(--bad); opacity: 0.25; }
text.axis { font-size: 10px; fill: var(--dim); }
progress { width: 200px; vertical-align: middle; }
.notice { padding: 6px 10px; border-left: 4px solid var(--ok); }
.notice.bad { border-color: var(--bad); color: var(--bad); }
ol.logs { list-style: none; padding: 0; margin: 0; font-family: ui-monospace, monospace; font-size: 12px; }
ol.logs li { padding: 2px 0; border-bottom: 1px solid var(--line); white-space: pre-wrap; word-break: break-word; }
.log-error, .log-critical { color: var(--bad); }
.log-warning { color: var(--warn); }
.fields { color: var(--dim); }
button { font: inherit; }
]==]

_M.JS = js

-- what every answer of the page carries: no script but its own, no
-- framing, no caching
local POLICY = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
  .. "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

local function asset(ctype, body)
  return function()
    return 200, body, { ["content-type"] = ctype, ["content-security-policy"] = POLICY,
      ["x-content-type-options"] = "nosniff", ["x-frame-options"] = "DENY",
      ["referrer-policy"] = "no-referrer", ["cache-control"] = "no-store" }
  end
end

--- routes(route, ops): see the header.
function _M.routes(route, ops)
  route("GET", "/", "read", asset("text/html; charset=utf-8", _M.HTML))
  route("GET", "/ui/page.js", "read", asset("text/javascript; charset=utf-8", _M.JS))
  route("GET", "/ui/page.css", "read", asset("text/css; charset=utf-8", _M.CSS))
  route("GET", "/history", "read", function()
    local view, err = ops:history()
    if not view then return 503, { error = err } end
    return 200, view
  end)
end

return _M
