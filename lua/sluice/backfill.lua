--- sluice.backfill: plan, run and resume history backfills.
--
-- The entry point of three modules: sluice.backfill.plan (which windows,
-- and the coverage table), sluice.backfill.runner (jobs) and
-- sluice.backfill.claims (windows claimed in Redis); `sluice backfill` is
-- sluice.backfill.cli. plan() yields with shared state (it asks Redis),
-- wait() and a job's work yield; status, cancel and jobs do not.
--
-- A collector declares backfill(self, from, to, partition) for one window
-- (epoch seconds, [from, to); partition is one of the partitions it
-- declares, partitions = a list or a function(self) returning one, or nil
-- when it declares none), backfill_step (the window length in seconds, or
-- a function(self) returning it) and optionally expect (the cadence rows
-- should have, a table or a function(self) returning one):
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
--   backfill.jobs() -> {id = status} of every job of this process
--   backfill.parse_time(v, what) -> epoch seconds of a date like 2024-01-31
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
local planner = require "sluice.backfill.plan"
local runner = require "sluice.backfill.runner"

local _M = {}

_M.plan = planner.plan
_M.parse_time = planner.parse_time
_M.start = runner.start
_M.status = runner.status
_M.wait = runner.wait
_M.cancel = runner.cancel
_M.jobs = runner.jobs

return _M
