--- sluice.backfill.runner: backfill jobs, window by window.
--
-- start(opts) plans (sluice.backfill.plan) and runs a job in a task of its
-- own: `parallel` workers take the plan's windows in order, each under its
-- claim when the job shares its backfill through Redis
-- (sluice.backfill.claims), call the collector's backfill for it and
-- store its rows with the collector's store path (collector:store_rows),
-- in one transaction with the window's coverage record. The module owns
-- the jobs of this process (status, wait, cancel, jobs) and, once a job
-- has started, a shutdown handler that stops them cleanly. wait() and a
-- job's work yield; start, status, cancel and jobs do not (start spawns),
-- but start plans first, which asks Redis for done marks with shared state.
local sluice = require "sluice"
local log = require "sluice.log"
local planner = require "sluice.backfill.plan"
local claims = require "sluice.backfill.claims"
local units = require "sluice.backfill.unit"

local _M = {}

local jobs = {}
local next_id = 0

-- The oldest done mark that makes a window "done elsewhere": any for a
-- window missing here; for force and lookback only one made since the job
-- started; never for a gap (its rows are wanted here).
local function since_of(win, started)
  if win.reason == "gap" then return 1e300 end
  if win.reason == "force" or win.reason == "lookback" then return started end
  return 0
end

-- A window's coverage: [covered_from, window_end) of the aligned window
-- starting at window_start. A refetch that starts later than an earlier
-- one keeps the earlier start (both are stored).
local function record(c, win, status, nrows, err)
  return c.store:exec([[INSERT INTO sluice_backfill
      (collector, partition, window_start, window_end, covered_from, status, rows, error, updated_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT (collector, partition, window_start) DO UPDATE SET
      window_end = MAX(excluded.window_end, CASE WHEN status = 'done' THEN window_end ELSE 0 END),
      covered_from = CASE WHEN status = 'done' THEN MIN(covered_from, excluded.covered_from)
                          ELSE excluded.covered_from END,
      status = excluded.status, rows = excluded.rows,
      error = excluded.error, updated_at = excluded.updated_at]],
    c.name, win.partition, win.key, win.to, win.from, status, nrows, err, sluice.time())
end

-- A window done by another instance: recorded, but not as coverage, and
-- never over this store's own done record.
local function record_elsewhere(c, win, doc)
  return c.store:exec([[INSERT INTO sluice_backfill
      (collector, partition, window_start, window_end, covered_from, status, rows, error, updated_at)
      VALUES (?, ?, ?, ?, ?, 'elsewhere', ?, ?, ?)
      ON CONFLICT (collector, partition, window_start) DO UPDATE SET
      window_end = excluded.window_end, covered_from = excluded.covered_from,
      status = excluded.status, rows = excluded.rows, error = excluded.error,
      updated_at = excluded.updated_at WHERE status <> 'done']],
    c.name, win.partition, win.key, win.to, win.from, tonumber(doc.rows) or 0,
    "done elsewhere by " .. tostring(doc.by), sluice.time())
end

-- Fetches one window and commits its rows with its coverage record (its
-- rows then go to the collector's sinks). -> true | false.
local function run_window(job, win)
  local c = job.collector
  local part = win.partition ~= "*" and win.partition or nil
  local ok, result = xpcall(c.spec.backfill, debug.traceback, c, win.from, win.to, part)
  if ok then
    -- the collector's store path, the window's coverage record in the
    -- rows' transaction; the sinks get the rows after its commit
    ok, result = pcall(c.store_rows, c, result, { what = "backfill", within = function(count)
      assert(record(c, win, "done", count))
    end })
    if ok then
      job.rows = job.rows + result
      job.done = job.done + 1
      win.rows = result
      win.done = true
      return true
    end
  end
  local msg = tostring(result):match("^[^\n]*")
  if sluice.stopping() then
    -- shutdown cut the window short: nothing of it was committed and it is
    -- not a failure; it stays missing, so the next run fetches it
    job.cut = job.cut + 1
    c.log.info("backfill window interrupted by shutdown", { partition = win.partition,
      window = units.range(job.plan.unit, win.from, win.to), from = win.from, to = win.to, error = msg })
    return false
  end
  job.failed[#job.failed + 1] = { partition = win.partition, from = win.from, to = win.to, error = msg }
  job.errors = job.errors + 1
  record(c, win, "failed", 0, msg)
  c.log.warning("backfill window failed", { partition = win.partition,
    window = units.range(job.plan.unit, win.from, win.to), from = win.from, to = win.to, error = msg })
  return false
end

-- --- claims -----------------------------------------------------------------

local function elsewhere(job, win, doc)
  job.elsewhere = job.elsewhere + 1
  job.rows_elsewhere = job.rows_elsewhere + (tonumber(doc.rows) or 0)
  record_elsewhere(job.collector, win, doc)
end

-- Redis could not be reached: claims are local for a couple of seconds.
local function claims_degraded(job, err)
  job.local_until = sluice.now() + 2
  if not job.degraded then
    job.degraded = true
    job.blog.warning("redis unreachable: backfill windows are claimed locally only",
      { error = tostring(err) })
  end
end

-- -> "claimed" (in Redis) | "local" (no Redis) | "held", doc | "done", doc
local function claim(job, win)
  local sh = job.shared
  if not sh or (job.local_until and sluice.now() < job.local_until) then return "local" end
  win.claim_key = win.claim_key or claims.key(job.collector.name, win.partition, win.key)
  local verdict, doc, raw = claims.claim(sh, win.claim_key, job.token, job.claim_ttl,
    { from = win.from, to = win.to, since = since_of(win, job.started_wall) })
  if not verdict then
    claims_degraded(job, doc)
    return "local"
  end
  if verdict == "claimed" then
    win.prev, win.prev_raw = nil, nil
    if doc and doc.state == "done" then win.prev, win.prev_raw = doc, raw end
  end
  return verdict, doc
end

-- Keeps the job's claims alive while their windows are fetched.
local function renew_claims(job)
  local keys = {}
  for key in pairs(job.held) do keys[#keys + 1] = key end
  for _, key in ipairs(keys) do
    local ok = claims.renew(job.shared, key, job.token, job.claim_ttl)
    local win = job.held[key]
    if ok == false and win then
      job.held[key] = nil
      job.blog.warning("backfill claim lost (expired or taken): the window may be fetched twice",
        { partition = win.partition, window = units.range(job.plan.unit, win.from, win.to),
          from = win.from, to = win.to })
    end
  end
end

-- One window under its claim: fetched here, put aside, or done elsewhere.
local function take_window(job, win)
  local verdict, doc = claim(job, win)
  if win.rechecking then
    win.rechecking = nil
    job.rechecking = job.rechecking - 1
  end
  if verdict == "done" then
    return elsewhere(job, win, doc)
  elseif verdict == "held" then
    if not win.held_by then
      job.blog.debug("backfill window held by another instance", { partition = win.partition,
        window = units.range(job.plan.unit, win.from, win.to), from = win.from, by = doc and doc.by })
    end
    win.held_by = doc and doc.by or "?"
    job.deferred[#job.deferred + 1] = { win = win, at = sluice.now() + job.recheck }
    return
  end
  if verdict == "claimed" then
    if win.held_by then
      job.blog.info("backfill window taken over (its holder released it or died)",
        { partition = win.partition, window = units.range(job.plan.unit, win.from, win.to),
          from = win.from, by = win.held_by })
    end
    job.held[win.claim_key] = win
  end
  local ok = run_window(job, win)
  if verdict ~= "claimed" then return end
  job.held[win.claim_key] = nil
  local sh = job.shared
  if ok then
    local from, to = win.from, win.to
    -- a done mark this one replaced and overlaps: keep the union
    local p = win.prev
    if p and type(p.from) == "number" and type(p.to) == "number" and p.from <= to and p.to >= from then
      from, to = math.min(from, p.from), math.max(to, p.to)
    end
    local okd, err = claims.done(sh, win.claim_key, { job = job.id, rows = win.rows, from = from, to = to },
      job.done_ttl)
    if not okd then claims_degraded(job, err) end
  else
    -- (a done mark the claim replaced, as for a forced refetch, is put back)
    local okr, err = claims.release(sh, win.claim_key, job.token, win.prev_raw, job.done_ttl)
    if okr == nil then claims_degraded(job, err) end
  end
end

-- The next window a worker should take: the plan's next, else the window
-- put aside longest ago, once its recheck time has come. nil: none left.
local function next_window(job)
  while job.state == "running" do
    local win = job.plan.windows[job.next]
    if win then
      job.next = job.next + 1
      return win
    end
    local d = table.remove(job.deferred, 1)
    if not d then return nil end
    job.rechecking = job.rechecking + 1
    local wait = d.at - sluice.now()
    if wait > 0 then sluice.sleep(wait) end
    if job.state == "running" then
      -- still waiting until its claim answers (take_window uncounts it)
      d.win.rechecking = true
      return d.win
    end
    job.rechecking = job.rechecking - 1
  end
  return nil
end

-- The first window of the plan not done yet (nil when none is left).
local function next_undone(job)
  for _, win in ipairs(job.plan.windows) do
    if not win.done then return win end
  end
  return nil
end


local function status_of(job)
  local elapsed = (job.finished or sluice.now()) - job.started
  local finished = job.done + #job.failed + job.elsewhere
  local nxt = job.state ~= "running" and job.state ~= "done" and next_undone(job) or nil
  local rate = elapsed > 0 and finished / elapsed or 0
  return {
    id = job.id, collector = job.collector.name, state = job.state,
    unit = job.plan.unit, from = job.plan.from, to = job.plan.to, step = job.plan.step,
    windows_total = job.total, windows_done = job.done, windows_failed = #job.failed,
    windows_skipped = job.plan.skipped, rows = job.rows,
    windows_elsewhere = job.elsewhere, rows_elsewhere = job.rows_elsewhere,
    windows_waiting = #job.deferred + job.rechecking,
    claims = not job.shared and "local" or job.degraded and "degraded" or "redis",
    requests = job.collector:counters().total_requests - job.requests0,
    elapsed = elapsed,
    rate = job.collector.limiter and job.collector.limiter:rate() or nil,
    eta = rate > 0 and (job.total - finished) / rate or nil,
    errors = job.errors, failed = job.failed,
    interrupted = job.interrupted or nil, windows_interrupted = job.cut,
    next_window = nxt and { partition = nxt.partition, from = nxt.from, to = nxt.to } or nil,
  }
end

-- At shutdown, before the store closes (handlers run newest first, and
-- this one is registered after the app's): running jobs start no new
-- window, and the windows in flight end (committed whole, or not at all).
local hooked = false
local function stop_on_shutdown()
  local stopping = {}
  for _, job in pairs(jobs) do
    if job.state == "running" then
      job.state = "cancelled"
      job.interrupted = true
      stopping[#stopping + 1] = job
    end
  end
  for _, job in ipairs(stopping) do sluice.wait(job.runner) end
end

--- start(opts) -> id. opts as plan, plus parallel (4), progress
-- (seconds between progress log lines, 5), and with shared state claim_ttl
-- (seconds, 30) and done_ttl (seconds, 7 days).
function _M.start(opts)
  local plan = planner.plan(opts)
  local parallel = opts.parallel or 4
  if type(parallel) ~= "number" or parallel < 1 then
    error("sluice.backfill.start: 'parallel' must be a number >= 1", 2)
  end
  local claim_ttl, done_ttl = opts.claim_ttl or 30, opts.done_ttl or 7 * 86400
  if type(claim_ttl) ~= "number" or not (claim_ttl > 0) then
    error("sluice.backfill.start: 'claim_ttl' must be a number of seconds > 0", 2)
  end
  if type(done_ttl) ~= "number" or not (done_ttl >= 1) then
    error("sluice.backfill.start: 'done_ttl' must be a number of seconds >= 1", 2)
  end
  next_id = next_id + 1
  local id = string.format("bf-%d-%d", math.floor(sluice.time()), next_id)
  local job = {
    id = id, plan = plan, collector = plan.collector, state = "running",
    total = #plan.windows + #plan.elsewhere, done = 0, rows = 0, errors = 0, failed = {},
    elsewhere = 0, rows_elsewhere = 0, deferred = {}, rechecking = 0, held = {}, cut = 0,
    requests0 = plan.collector:counters().total_requests,
    started = sluice.now(), started_wall = sluice.time(), next = 1, workers = {},
    shared = plan.shared, claim_ttl = claim_ttl, done_ttl = done_ttl,
    recheck = math.min(2, math.max(0.05, claim_ttl / 10)),
  }
  if job.shared then job.token = job.shared.id .. "/" .. id end
  jobs[id] = job
  if not hooked then
    hooked = true
    sluice.on_shutdown(stop_on_shutdown)
  end
  local blog = log.with({ collector = job.collector.name, backfill = id })
  job.blog = blog
  for _, win in ipairs(plan.elsewhere) do elsewhere(job, win, win) end
  blog.info("backfill started", { range = units.range(plan.unit, plan.from, plan.to), unit = plan.unit,
    step = plan.step, windows = job.total, skipped = plan.skipped,
    elsewhere = #plan.elsewhere, requests = plan.estimate.requests,
    estimate_seconds = plan.estimate.seconds, claims = job.shared and "redis" or "local" })
  local function worker()
    while true do
      local win = next_window(job)
      if not win then return end
      take_window(job, win)
    end
  end
  job.runner = sluice.spawn(function()
    -- a progress line every few seconds in the log, and a bar redrawn
    -- every half second when stdout is a terminal
    local bar = opts.bar ~= false and log.is_terminal()
    local range = units.range(plan.unit, plan.from, plan.to)
    local ticks = 0
    local period = opts.progress or 5
    local progress = sluice.every(bar and 0.5 or period, function(premature)
      if premature then return end
      local st = status_of(job)
      ticks = ticks + 1
      if bar then
        local finished = st.windows_done + st.windows_failed + st.windows_elsewhere
        local width = 30
        local filled = st.windows_total > 0 and math.floor(width * finished / st.windows_total) or width
        io.stdout:write(string.format("\r[%s%s] %d/%d windows of %s, %d rows, %d failed, ETA %s ",
          string.rep("#", filled), string.rep(" ", width - filled), finished, st.windows_total, range,
          st.rows, st.windows_failed, st.eta and string.format("%.0f s", st.eta) or "?"))
        io.stdout:flush()
      end
      if not bar or ticks % math.max(1, math.floor(period / 0.5)) == 0 then
        blog.info("backfill progress", { range = range, done = st.windows_done, failed = st.windows_failed,
          elsewhere = st.windows_elsewhere, waiting = st.windows_waiting,
          total = st.windows_total, rows = st.rows, eta = st.eta })
      end
    end)
    local renewer = job.shared and sluice.every(claim_ttl / 3, function(premature)
      if not premature then renew_claims(job) end
    end)
    for i = 1, math.min(parallel, math.max(1, #plan.windows)) do
      job.workers[i] = sluice.spawn(worker)
    end
    for _, w in ipairs(job.workers) do sluice.wait(w) end
    job.deferred = {} -- (a cancelled job's windows put aside stay undone)
    job.rechecking = 0
    if renewer then renewer:cancel() end
    progress:cancel()
    job.finished = sluice.now()
    if bar then io.stdout:write("\n") end
    if job.state == "running" then
      job.state = #job.failed > 0 and "failed" or "done"
    end
    local st = status_of(job)
    blog.info("backfill finished", { range = range, state = job.state, done = st.windows_done,
      failed = st.windows_failed, elsewhere = st.windows_elsewhere, rows = st.rows,
      requests = st.requests, seconds = st.elapsed, claims = st.claims })
    if job.interrupted then
      local nw = st.next_window
      blog.warning("backfill stopped by shutdown; running it again resumes", {
        done = st.windows_done, total = st.windows_total, interrupted = st.windows_interrupted,
        next_partition = nw and nw.partition,
        next_from = nw and (units.is_integer(plan.unit) and nw.from or sluice.iso8601(nw.from)),
        next_window = nw and units.range(plan.unit, nw.from, nw.to) })
    end
  end)
  return id
end

--- status(id) -> the job's progress, or nil, "no such backfill"
function _M.status(id)
  local job = jobs[id]
  if not job then return nil, "no such backfill '" .. tostring(id) .. "'" end
  return status_of(job)
end

--- wait(id) -> status, when the job has ended.
function _M.wait(id)
  local job = jobs[id]
  if not job then return nil, "no such backfill '" .. tostring(id) .. "'" end
  sluice.wait(job.runner)
  return status_of(job)
end

--- cancel(id) -> true: no new windows start; those in flight finish.
function _M.cancel(id)
  local job = jobs[id]
  if not job then return nil, "no such backfill '" .. tostring(id) .. "'" end
  if job.state == "running" then job.state = "cancelled" end
  return true
end

--- jobs() -> { id = status } of every job of this process.
function _M.jobs()
  local out = {}
  for id, job in pairs(jobs) do out[id] = status_of(job) end
  return out
end
return _M
