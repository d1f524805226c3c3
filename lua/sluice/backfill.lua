--- sluice.backfill: plan, run and resume history backfills.
--
-- A collector declares backfill(self, from, to, partition) for one window
-- (epoch seconds, [from, to); partition is one of the partitions it
-- declares -- partitions = a list, or function(self) returning one --, or
-- nil when it declares none),
-- backfill_step (the window length in seconds, or a function(self)
-- returning it) and optionally expect (the cadence rows should have, a
-- table or a function(self) returning one):
--   { every = 60, time_column = "open_time", unit = "ms" | "s",
--     partition = "symbol", where = { interval = "1m" } }
--
-- Coverage lives in the store (sluice_backfill): one row per collector,
-- partition and window, written in the same transaction as the window's
-- rows, so a crash can neither lose a window nor record one as done
-- without its rows. A later run skips done windows, so a restarted or
-- repeated backfill resumes where it stopped.
--
--   backfill.plan{collector = c, from = t0, to = t1, partitions = {...},
--                 force = false, lookback = seconds, shared = s} -> plan
--     (partitions: some of the collector's; symbols = {...} is the same)
--   backfill.start{... as plan ..., parallel = 4, claim_ttl = 30,
--                  done_ttl = 7 * 86400} -> job id
--   backfill.status(id) -> {state, windows_done, windows_failed,
--     windows_elsewhere, windows_total, rows, requests, rate, eta, errors,
--     failed = {...}, claims}
--   backfill.wait(id) -> status, once the job has ended
--   backfill.cancel(id)
--
-- At shutdown (SIGTERM, SIGINT) running jobs start no new window and wait
-- for the windows in flight, before the store closes: a window is
-- committed with its coverage or not at all, one cut short is neither
-- stored nor recorded failed (status.windows_interrupted), and the job ends
-- "cancelled" with status.interrupted and status.next_window (the first
-- window of the plan not done), logged and printed by `sluice backfill`,
-- which then exits 0 (1 if windows failed before). Running it again resumes.
--
-- Several instances, one backfill. With a sluice.shared object (opts.shared,
-- by default the one the collector is attached to when the configuration
-- has `redis = ...`; shared = false turns it off), instances with their
-- own stores share a backfill of the same range without fetching a window
-- twice. Before fetching a window a job claims
-- backfill:{collector}:{partition}:{window_start} in Redis for claim_ttl
-- seconds (renewed every third of it while the window is fetched); after
-- committing it locally it marks the key done for done_ttl seconds (by
-- whom, how many rows); on failure it deletes its claim so that another
-- instance, or a later run, retries the window. A window another live job
-- holds is put aside and looked at again until it is done there (counted
-- in windows_elsewhere), released (then fetched here) or its holder's claim
-- expired (then taken over here). A window already marked done covering it
-- counts in windows_elsewhere, at plan time (plan.elsewhere, reason
-- "elsewhere") or when it is claimed. force, lookback and gap windows are
-- refetched whatever old marks say (a mark made while the job runs, by a
-- concurrent identical request, still counts for force and lookback).
--
-- A window done elsewhere is not local coverage: this store does not have
-- its rows (they reach consumers through the Redis Streams sink, which
-- backfilled rows are published to as collected ones are). It is recorded
-- in sluice_backfill with status "elsewhere" (rows: the other instance's
-- count, error: who), which a later plan treats as missing: skipped again
-- while the done mark lives, fetched here once it has expired. A window
-- done elsewhere is neither a gap nor a failure of this job: windows_done +
-- windows_failed + windows_elsewhere = windows_total when it ends.
-- With Redis unreachable windows are claimed locally only (logged once per
-- job; status.claims = "degraded"): the backfill goes on and loses nothing,
-- at worst a window is fetched by two instances.
local sluice = require "sluice"
local log = require "sluice.log"
local shared = require "sluice.shared"
local claims = require "sluice.backfill.claims"

local _M = {}

local COVERAGE = [[
CREATE TABLE IF NOT EXISTS sluice_backfill (
  collector TEXT NOT NULL, partition TEXT NOT NULL,
  window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,
  covered_from INTEGER NOT NULL,
  status TEXT NOT NULL, rows INTEGER NOT NULL DEFAULT 0, error TEXT,
  updated_at REAL NOT NULL,
  PRIMARY KEY (collector, partition, window_start)) WITHOUT ROWID]]

local jobs = {}
local next_id = 0

local function ensure_schema(db)
  assert(db:exec(COVERAGE))
end

local function resolve(v, c)
  if type(v) == "function" then return v(c) end
  return v
end

local function parse_time(v, what)
  if type(v) == "number" then return v end
  if type(v) == "string" then
    local y, m, d, H, M, S = v:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[T ]?(%d?%d?):?(%d?%d?):?(%d?%d?)Z?$")
    if y then
      -- os.time reads the table as local time: days from the civil date
      -- by hand (H. Hinnant's algorithm), for UTC
      local yy, mm, dd = tonumber(y), tonumber(m), tonumber(d)
      if mm <= 2 then yy = yy - 1 end
      local era = math.floor(yy / 400)
      local yoe = yy - era * 400
      local doy = math.floor((153 * (mm + (mm > 2 and -3 or 9)) + 2) / 5) + dd - 1
      local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
      local days = era * 146097 + doe - 719468
      return days * 86400 + (tonumber(H) or 0) * 3600 + (tonumber(M) or 0) * 60 + (tonumber(S) or 0)
    end
  end
  error("sluice.backfill: '" .. what .. "' must be epoch seconds or a date like 2024-01-31, got "
    .. tostring(v), 3)
end

-- The partitions a plan covers: those asked for, else those the collector
-- declares, else one, "*" (backfill then gets nil).
local function partitions(c, only)
  return only or c:partitions() or { "*" }
end

-- The sluice.shared object claims go through, or nil.
local function shared_of(opts, c)
  local sh = opts.shared
  if sh == false then return nil end
  if sh == nil then return shared.owner(c) end
  if not shared.is_shared(sh) then
    error("sluice.backfill: 'shared' must be a sluice.shared object or false", 3)
  end
  return sh
end

-- The oldest done mark that makes a window "done elsewhere": any for a
-- window missing here; for force and lookback only one made since the job
-- started; never for a gap (its rows are wanted here).
local function since_of(win, started)
  if win.reason == "gap" then return 1e300 end
  if win.reason == "force" or win.reason == "lookback" then return started end
  return 0
end

local function covers(doc, win, since)
  return doc.state == "done" and type(doc.from) == "number" and type(doc.to) == "number"
    and type(doc.at) == "number" and doc.from <= win.from and doc.to >= win.to and doc.at >= since
end

-- Moves the planned windows another instance has marked done to
-- plan.elsewhere (missing and extended windows only: the others want
-- marks newer than the job). Redis unreachable: nothing moves (claims
-- decide later).
local function plan_elsewhere(plan, sh)
  local c = plan.collector
  local keys = {}
  for _, win in ipairs(plan.windows) do
    win.claim_key = claims.key(c.name, win.partition, win.key)
    win.any_mark = win.reason == "missing" or win.reason == "extended"
    if win.any_mark then keys[#keys + 1] = win.claim_key end
  end
  if #keys == 0 then return end
  local states = claims.states(sh, keys)
  if not states then return end
  local keep = {}
  for _, win in ipairs(plan.windows) do
    local doc = states[win.claim_key]
    if doc and win.any_mark and covers(doc, win, 0) then
      plan.elsewhere[#plan.elsewhere + 1] = { partition = win.partition, from = win.from, to = win.to,
        key = win.key, reason = "elsewhere", by = doc.by, rows = doc.rows, claim_key = win.claim_key }
    else
      keep[#keep + 1] = win
    end
  end
  plan.windows = keep
end

-- Rows present per window for row-level gap detection: one query per
-- partition, grouped by window.
local function present_counts(c, exp, part, first, from, stop, step)
  local tname = exp.table or next(c.config.tables or {})
  local scale = exp.unit == "ms" and 1000 or 1
  local sql = { "SELECT CAST((", exp.time_column, " / ", scale, " - ?) / ? AS INTEGER) AS w, COUNT(DISTINCT ",
    exp.time_column, ") AS n FROM ", tname, " WHERE ", exp.time_column, " >= ? AND ",
    exp.time_column, " < ?" }
  local params = { first, step, from * scale, stop * scale }
  if exp.partition and part ~= "*" then
    sql[#sql + 1] = " AND " .. exp.partition .. " = ?"
    params[#params + 1] = part
  end
  for col, val in pairs(exp.where or {}) do
    sql[#sql + 1] = " AND " .. col .. " = ?"
    params[#params + 1] = val
  end
  sql[#sql + 1] = " GROUP BY w"
  local rows = c.store:query(table.concat(sql), unpack(params))
  local out = {}
  for _, r in ipairs(rows or {}) do out[math.floor(r.w)] = r.n end
  return out
end

--- plan(opts) -> { windows = {{partition, from, to, reason}, ...},
--   skipped, elsewhere = {{partition, from, to, reason = "elsewhere", by,
--   rows}, ...}, estimate = {windows, requests, rows, seconds, rate} }
-- With shared state, windows another instance has marked done are in
-- elsewhere, not in windows (nor in the estimate).
function _M.plan(opts)
  if type(opts) ~= "table" or type(opts.collector) ~= "table" then
    error("sluice.backfill.plan: bad argument #1 (table with a collector expected)", 2)
  end
  local c = opts.collector
  if not c.spec.backfill then
    error("sluice.backfill: collector '" .. c.name .. "' has no backfill function", 2)
  end
  if not c.store then
    error("sluice.backfill: collector '" .. c.name .. "' has no store", 2)
  end
  ensure_schema(c.store)
  local step = resolve(c.spec.backfill_step, c) or 86400
  if type(step) ~= "number" or not (step > 0) then
    error("sluice.backfill: backfill_step must be a number of seconds > 0", 2)
  end
  local from = parse_time(opts.from or c.config.beginning_date or c.options.beginning_date, "from")
  local to = opts.to and parse_time(opts.to, "to") or math.floor(sluice.time())
  if not (to > from) then
    error("sluice.backfill: 'to' must be after 'from'", 2)
  end
  local exp = resolve(c.spec.expect, c)
  -- windows are aligned to the step, so runs with different bounds share
  -- their windows (and so their coverage)
  local first = math.floor(from / step) * step
  local lookback_from = opts.lookback and (to - opts.lookback) or math.huge
  local sh = shared_of(opts, c)
  local plan = { collector = c, windows = {}, skipped = 0, elsewhere = {}, from = from, to = to,
    step = step, shared = sh }
  for _, part in ipairs(partitions(c, opts.partitions or opts.symbols)) do
    local done = {}
    for _, r in ipairs(c.store:query(
      "SELECT window_start, window_end, covered_from, status FROM sluice_backfill"
      .. " WHERE collector = ? AND partition = ? AND window_start >= ? AND window_start < ?",
      c.name, part, first, to) or {}) do
      if r.status == "done" then done[r.window_start] = { from = r.covered_from, to = r.window_end } end
    end
    local present = exp and present_counts(c, exp, part, first, from, to, step) or nil
    local w = first
    while w < to do
      local wstart, wend = math.max(w, from), math.min(w + step, to)
      local reason
      if opts.force then
        reason = "force"
      elseif wend > lookback_from then
        reason = "lookback"
      elseif not done[w] or done[w].to < wend or done[w].from > wstart then
        reason = done[w] and "extended" or "missing"
      elseif present then
        local want = math.ceil(wend / exp.every) - math.ceil(wstart / exp.every)
        if (present[(w - first) / step] or 0) < want then reason = "gap" end
      end
      if reason then
        plan.windows[#plan.windows + 1] = { partition = part, from = wstart, to = wend, key = w, reason = reason }
      else
        plan.skipped = plan.skipped + 1
      end
      w = w + step
    end
  end
  if sh then plan_elsewhere(plan, sh) end
  local rate = c.limiter and c.limiter:rate() or nil
  local per_window = resolve(c.spec.backfill_requests, c) or 1
  local requests = #plan.windows * per_window
  local rows = 0
  if exp then
    for _, win in ipairs(plan.windows) do
      rows = rows + math.ceil(win.to / exp.every) - math.ceil(win.from / exp.every)
    end
  end
  plan.estimate = { windows = #plan.windows, requests = requests, rows = exp and rows or nil,
    rate = rate, seconds = rate and requests / rate or nil }
  return plan
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
      from = win.from, to = win.to, error = msg })
    return false
  end
  job.failed[#job.failed + 1] = { partition = win.partition, from = win.from, to = win.to, error = msg }
  job.errors = job.errors + 1
  record(c, win, "failed", 0, msg)
  c.log.warning("backfill window failed", { partition = win.partition, from = win.from,
    to = win.to, error = msg })
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
        { partition = win.partition, from = win.from, to = win.to })
    end
  end
end

-- One window under its claim: fetched here, put aside, or done elsewhere.
local function take_window(job, win)
  local verdict, doc = claim(job, win)
  if verdict == "done" then
    return elsewhere(job, win, doc)
  elseif verdict == "held" then
    if not win.held_by then
      job.blog.debug("backfill window held by another instance", { partition = win.partition,
        from = win.from, by = doc and doc.by })
    end
    win.held_by = doc and doc.by or "?"
    job.deferred[#job.deferred + 1] = { win = win, at = sluice.now() + job.recheck }
    return
  end
  if verdict == "claimed" then
    if win.held_by then
      job.blog.info("backfill window taken over (its holder released it or died)",
        { partition = win.partition, from = win.from, by = win.held_by })
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
    job.rechecking = job.rechecking - 1
    if job.state == "running" then return d.win end
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

local function iso(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

local function status_of(job)
  local elapsed = (job.finished or sluice.now()) - job.started
  local finished = job.done + #job.failed + job.elsewhere
  local nxt = job.state ~= "running" and job.state ~= "done" and next_undone(job) or nil
  local rate = elapsed > 0 and finished / elapsed or 0
  return {
    id = job.id, collector = job.collector.name, state = job.state,
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
  local plan = _M.plan(opts)
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
  blog.info("backfill started", { windows = job.total, skipped = plan.skipped,
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
        io.stdout:write(string.format("\r[%s%s] %d/%d windows, %d rows, %d failed, ETA %s ",
          string.rep("#", filled), string.rep(" ", width - filled), finished, st.windows_total,
          st.rows, st.windows_failed, st.eta and string.format("%.0f s", st.eta) or "?"))
        io.stdout:flush()
      end
      if not bar or ticks % math.max(1, math.floor(period / 0.5)) == 0 then
        blog.info("backfill progress", { done = st.windows_done, failed = st.windows_failed,
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
    if renewer then renewer:cancel() end
    progress:cancel()
    job.finished = sluice.now()
    if bar then io.stdout:write("\n") end
    if job.state == "running" then
      job.state = #job.failed > 0 and "failed" or "done"
    end
    local st = status_of(job)
    blog.info("backfill finished", { state = job.state, done = st.windows_done,
      failed = st.windows_failed, elsewhere = st.windows_elsewhere, rows = st.rows,
      requests = st.requests, seconds = st.elapsed, claims = st.claims })
    if job.interrupted then
      local nw = st.next_window
      blog.warning("backfill stopped by shutdown; running it again resumes", {
        done = st.windows_done, total = st.windows_total, interrupted = st.windows_interrupted,
        next_partition = nw and nw.partition, next_from = nw and iso(nw.from) })
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

local USAGE = [[
usage: sluice backfill CONFIG.lua COLLECTOR --from DATE [--to DATE] [options]

Backfills COLLECTOR (a collector of the configuration) from DATE (epoch
seconds or 2024-01-31[T12:00:00]) to --to (default: now), skipping windows
already stored, and exits 0 when every window is done (1 if some failed;
run it again to retry them).

options:
  --symbols A,B     only these symbols (default: the collector's)
  --force           refetch windows already done (idempotent upserts)
  --lookback S      also refetch the last S seconds before --to
  --parallel N      windows fetched at once (default 4)
  --plan            print the plan and its estimate, fetch nothing
  --claim-ttl S     with Redis: how long a window claim lives unrenewed,
                    so how soon a dead instance's windows are taken over
                    (default 30)

With `redis = "redis://..."` in the configuration, instances backfilling
the same range share it: each window is claimed in Redis before it is
fetched (backfill:COLLECTOR:PARTITION:WINDOW_START), a window another
instance holds is waited for, and one it has done is skipped and reported
as done elsewhere (its rows are in that instance's store and streams).
]]

local function usage_error(msg)
  io.stderr:write("sluice: backfill: ", msg, " (see sluice backfill --help)\n")
  os.exit(2)
end

--- cli(chunk, file, args...): `sluice backfill`.
function _M.cli(chunk, file, ...)
  local args = { ... }
  local o = { parallel = 4 }
  local name
  local i = 1
  local function value(flag)
    i = i + 1
    if args[i] == nil then usage_error(flag .. " needs a value") end
    return args[i]
  end
  while i <= #args do
    local a = args[i]
    if a == "--help" or a == "-h" then
      io.stdout:write(USAGE)
      os.exit(0)
    elseif a == "--from" then o.from = value(a)
    elseif a == "--to" then o.to = value(a)
    elseif a == "--symbols" then
      o.symbols = {}
      for s in value(a):gmatch("[^,]+") do o.symbols[#o.symbols + 1] = s end
    elseif a == "--force" then o.force = true
    elseif a == "--plan" then o.plan_only = true
    elseif a == "--lookback" then o.lookback = tonumber(value(a)) or usage_error("--lookback needs seconds")
    elseif a == "--parallel" then o.parallel = tonumber(value(a)) or usage_error("--parallel needs a number")
    elseif a == "--claim-ttl" then
      o.claim_ttl = tonumber(value(a)) or usage_error("--claim-ttl needs seconds")
      if not (o.claim_ttl > 0) then usage_error("--claim-ttl needs seconds > 0") end
    elseif a:sub(1, 1) == "-" then usage_error("unknown option '" .. a .. "'")
    elseif not name then name = a
    else usage_error("unexpected argument '" .. a .. "'") end
    i = i + 1
  end
  if not name then usage_error("missing COLLECTOR") end
  for _, k in ipairs({ "from", "to" }) do
    if o[k] and not pcall(parse_time, tonumber(o[k]) or o[k], k) then
      usage_error("--" .. k .. " '" .. o[k] .. "': expected epoch seconds or a date like 2024-01-31")
    end
    if o[k] then o[k] = parse_time(tonumber(o[k]) or o[k], k) end
  end
  -- a configuration that cannot start is one line on stderr, exit 1
  local app_mod, tb = require("sluice.app"), nil
  local okc, app = xpcall(function()
    local config = chunk()
    if type(config) ~= "table" then
      error(file .. ": a backfill needs a configuration (a file returning a table)", 0)
    end
    return app_mod.build(config, file)
  end, function(e)
    tb = debug.traceback(tostring(e), 2)
    return e
  end)
  if not okc then return app_mod.startup_failed(app, tb) end
  local c = app.collectors[name]
  if not c then
    local names = {}
    for n in pairs(app.collectors) do names[#names + 1] = n end
    table.sort(names)
    app.store:close()
    return app_mod.startup_failed(file .. ": no collector named '" .. name .. "' (there are: "
      .. table.concat(names, ", ") .. ")")
  end
  o.collector = c
  if o.plan_only then
    local p = _M.plan(o)
    local e = p.estimate
    print(string.format("%s: %d windows to fetch, %d already done", name, #p.windows, p.skipped))
    local reasons = {}
    for _, w in ipairs(p.windows) do reasons[w.reason] = (reasons[w.reason] or 0) + 1 end
    if #p.elsewhere > 0 then reasons.elsewhere = #p.elsewhere end
    for r, n in pairs(reasons) do print(string.format("  %-8s %d", r, n)) end
    print(string.format("estimate: %d requests, %s rows, %s at %s req/s", e.requests,
      e.rows and tostring(e.rows) or "?", e.seconds and string.format("%.1f s", e.seconds) or "?",
      e.rate and string.format("%.1f", e.rate) or "?"))
    sluice.shutdown(0)
    return
  end
  local id = _M.start(o)
  local st = _M.wait(id)
  print(string.format("%s: %s; %d of %d windows done, %d failed, %d skipped; %d rows, %d requests in %.1f s",
    name, st.state, st.windows_done, st.windows_total, st.windows_failed, st.windows_skipped,
    st.rows, st.requests, st.elapsed))
  if st.windows_elsewhere > 0 then
    print(string.format("  elsewhere: %d windows done by other instances (%d rows, not in this store)",
      st.windows_elsewhere, st.rows_elsewhere))
  end
  if st.claims == "degraded" then
    print("  redis was unreachable: some windows were claimed locally only")
  end
  for _, f in ipairs(st.failed) do
    print(string.format("  failed: %s %d..%d: %s", f.partition, f.from, f.to, f.error))
  end
  if st.interrupted then
    local nw = st.next_window
    print(string.format("  stopped by shutdown after %d of %d windows%s; run the same command again "
      .. "to resume (done windows are skipped)", st.windows_done, st.windows_total,
      nw and string.format("; next window: %s from %s (%d)", nw.partition, iso(nw.from), nw.from) or ""))
  end
  sluice.shutdown(st.windows_failed > 0 and 1 or 0)
end

_M.parse_time = parse_time
return _M
