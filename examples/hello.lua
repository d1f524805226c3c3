-- hello.lua -- a first look at sluice: tasks, timers and structured logs.
--
--   sluice run examples/hello.lua
--
-- Three "feeds" are polled concurrently on one thread, each on its own
-- schedule with jitter; a slow poll never overlaps the next one. After three
-- seconds the script stops its timers and the process exits by itself
-- (Ctrl-C earlier shuts down gracefully: the on_shutdown handler still runs).
local sluice = require "sluice"
local log = require "sluice.log"

local feeds = {
  { name = "trades", every = 0.5, cost = 0.05 },
  { name = "orderbook", every = 0.25, cost = 0.02 },
  { name = "funding", every = 1.0, cost = 0.6 }, -- slower than its period
}

local polls = {}
local timers = {}

for _, feed in ipairs(feeds) do
  local flog = log.with({ feed = feed.name })
  polls[feed.name] = 0
  timers[#timers + 1] = sluice.every(feed.every, function(premature)
    if premature then
      return -- shutting down: skip the poll
    end
    local started = sluice.now()
    sluice.sleep(feed.cost) -- stands in for an HTTP request
    polls[feed.name] = polls[feed.name] + 1
    flog.info("polled", { n = polls[feed.name], took = sluice.now() - started })
  end, { jitter = 0.1 })
end

sluice.on_shutdown(function()
  log.info("summary", polls)
end)

-- The main task can wait like any other: stop everything after 3 seconds.
sluice.sleep(3)
for _, timer in ipairs(timers) do
  timer:cancel()
end
log.info("stopping", sluice.tasks())
