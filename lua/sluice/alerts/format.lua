--- sluice.alerts.format: the bodies of alert deliveries, one per format.
--
--   local body = format.render("json" | "slack", delivery, context)
--
-- delivery = {sequence, dropped (deliveries dropped from this webhook's
-- full queue between the one before it and this one), events = {event,
-- ...}}; context = {service, host}. An event is what sluice.alerts makes:
-- {id, event, status ("firing" | "resolved" | "info"), severity, source,
-- message, timestamp, details}.
--
-- json: the document receivers parse (README "## Alerts"):
--   {service, host, timestamp, sequence, dropped, status, summary,
--    alerts = [{id, event, status, severity, source, message, timestamp,
--               details}]}
-- status is "firing" when any event fires, else "resolved" when any
-- resolves, else "info". slack: {"text": "..."}, a summary line and one
-- line per event (at most SLACK_LINES, then "... and N more").
--
-- Every string goes through sluice.redact (no secret of the configuration
-- reaches a receiver through an error message). Owns nothing; no call
-- yields.
local sluice = require "sluice"
local json = require "sluice.json"
local redact = require "sluice.redact"

local _M = {}

local SLACK_LINES = 20
_M.SLACK_LINES = SLACK_LINES

local MARK = { firing = ":rotating_light:", resolved = ":white_check_mark:", info = ":information_source:" }

-- "2 breaker_opened, 1 collector_health_changed" (types in first-seen order)
local function counts(events)
  local n, order = {}, {}
  for _, e in ipairs(events) do
    if not n[e.event] then order[#order + 1] = e.event end
    n[e.event] = (n[e.event] or 0) + 1
  end
  local parts = {}
  for i, t in ipairs(order) do parts[i] = n[t] .. " " .. t end
  return table.concat(parts, ", ")
end

local function overall(events)
  local st = "info"
  for _, e in ipairs(events) do
    if e.status == "firing" then return "firing" end
    if e.status == "resolved" then st = "resolved" end
  end
  return st
end

--- summary(events) -> "3 alerts: 2 breaker_opened, 1 collector_health_changed"
function _M.summary(events)
  return #events .. (#events == 1 and " alert: " or " alerts: ") .. counts(events)
end

local function json_body(d, ctx)
  local alerts = json.array()
  for i, e in ipairs(d.events) do
    alerts[i] = { id = e.id, event = e.event, status = e.status, severity = e.severity,
      source = e.source, message = e.message, timestamp = e.timestamp, details = e.details }
  end
  return json.encode(redact.scrub({
    service = ctx.service, host = ctx.host, timestamp = sluice.iso8601(sluice.time()),
    sequence = d.sequence, dropped = d.dropped, status = overall(d.events),
    summary = _M.summary(d.events), alerts = alerts,
  }), true)
end

local function slack_body(d, ctx)
  local lines = { ("*[%s]* %s%s"):format(ctx.service, _M.summary(d.events),
    ctx.host and (" (" .. ctx.host .. ")") or "") }
  if d.dropped and d.dropped > 0 then
    lines[#lines + 1] = ("_%d earlier deliveries were dropped (queue full)_"):format(d.dropped)
  end
  for i, e in ipairs(d.events) do
    if i > SLACK_LINES then
      lines[#lines + 1] = ("… and %d more"):format(#d.events - SLACK_LINES)
      break
    end
    lines[#lines + 1] = ("• %s %s"):format(MARK[e.status] or MARK.info, e.message)
  end
  return json.encode({ text = redact.text(table.concat(lines, "\n")) })
end

--- render(format, delivery, context) -> the request body (JSON text).
function _M.render(fmt, d, ctx)
  if fmt == "slack" then return slack_body(d, ctx) end
  return json_body(d, ctx)
end

return _M
