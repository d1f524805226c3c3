-- store_stall.lua -- sluice.store: how long a commit blocks the loop at a
-- paced write rate, and upserts into a big table against an empty one.
--   sluice run --lua-path tests/lua tests/bench/store_stall.lua \
--     [-- RATE SECONDS BATCH BIG_ROWS]
-- Defaults: 300000 rows/s for 5 s in 300-row batches; a 10,000,000-row table
-- (0: part 1 alone).
--
-- Part 1 (stalls): a task upserts BATCH-row batches of 10 columns paced to
-- RATE rows/s, each batch in its own transaction (BEGIN IMMEDIATE, upsert,
-- COMMIT); the BEGIN IMMEDIATE alone (the wait for the write lock, which a
-- RESTART checkpoint holds: in its task since the store waits there, so the
-- BEGINs during which the 1 ms timer never ran are the ones that held the
-- loop, "loop held"), the COMMIT alone and the whole batch are timed, and a 1 ms
-- sluice.every timer records its lateness (gap between runs - 1 ms) while
-- the writer runs. Both checkpoint modes run in the same process: "inline"
-- (SQLite's autocheckpoint on the loop's commit, the old behaviour: the
-- before figure), "background" (the checkpoint thread: the after figure)
-- and "none" (no checkpoint anywhere: the anchor, what the commits cost
-- by themselves on this machine; p99 ratios are to it).
--
-- Part 2 (big table): the sqlite3 CLI builds a BIG_ROWS-row klines table in
-- one transaction (its rate is the raw anchor), then sluice upserts 200,000
-- new rows into it and into an empty table; the CLI does the same upsert as
-- one INSERT ... SELECT on both (raw SQLite's own big/empty ratio).
local sluice = require "sluice"
local store = require "sluice.store"
local fx = require "support.store"
local bench = require "support.bench"

local arg1, arg2, arg3, arg4 = ...
local RATE = tonumber(arg1) or 300000
local SECONDS = tonumber(arg2) or 5
local BATCH = tonumber(arg3) or 300
local BIG = tonumber(arg4) or 10000000
local NEW = 200000

local floor, format = math.floor, string.format

local KLINES = {
  name = "klines",
  columns = { symbol = "text", open_time = "integer", open = "real", high = "real", low = "real",
    close = "real", volume = "real", close_time = "integer", quote_volume = "real", trades = "integer" },
  key = { "symbol", "open_time" },
  required = { "close" },
}

local SYMBOLS = { "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT" }
-- Row k: symbol k % 4, open_time by k / 4 (the CLI script below makes the
-- same rows, so both sides write one key space).
local function make_batch(first, n)
  local rows = {}
  for i = 0, n - 1 do
    local k = first + i
    local price = 100 + (k % 977) * 0.01
    local t = 1500000000000 + floor(k / 4) * 60000
    rows[i + 1] = {
      symbol = SYMBOLS[k % 4 + 1], open_time = t, open = price, high = price + 1, low = price - 1,
      close = price + 0.5, volume = k * 0.25, close_time = t + 59999, quote_volume = price * k,
      trades = k % 1000,
    }
  end
  return rows
end

local function pct(sorted, p)
  if #sorted == 0 then return 0 end
  return sorted[math.max(1, math.min(#sorted, math.ceil(#sorted * p)))]
end

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return 0 end
  local n = f:seek("end")
  f:close()
  return n
end

-- --- part 1: stalls at RATE rows/s -----------------------------------------

-- mode "none": inline with SQLite's autocheckpoint off, so no checkpoint
-- runs at all (the WAL grows without bound): the floor a commit costs.
local function stalls(mode)
  local path = fx.tmpdb()
  fx.remove_db(path)
  -- (a build without the option, main before the checkpoint thread, is "inline")
  local ok, db = pcall(store.open, path, { checkpoint = mode == "none" and "inline" or mode })
  if not ok then db = assert(store.open(path)) end
  if mode == "none" then assert(db:exec("PRAGMA wal_autocheckpoint = 0")) end
  assert(db:define(KLINES))
  local commits, batches, late, begins, held = {}, {}, {}, {}, {}
  local writing, last, ticks = true, nil, 0
  local ticker = sluice.every(0.001, function()
    local now = sluice.now()
    ticks = ticks + 1
    if last and writing then late[#late + 1] = math.max(0, now - last - 0.001) end
    last = now
  end)
  local nbatches = floor(RATE * SECONDS / BATCH)
  local wal_max = 0
  local t0 = sluice.now()
  local writer = sluice.spawn(function()
    for b = 0, nbatches - 1 do
      local due = t0 + b * BATCH / RATE
      local now = sluice.now()
      if due > now then sluice.sleep(due - now) else sluice.yield() end
      local rows = make_batch(b * BATCH, BATCH)
      local s, k = sluice.now(), ticks
      assert(db:exec("BEGIN IMMEDIATE"))
      begins[#begins + 1] = sluice.now() - s
      -- the timer did not run: the BEGIN held the loop all along (a BEGIN
      -- that waited in its task let it run)
      if ticks == k then held[#held + 1] = begins[#begins] end
      local ins, err = db:upsert("klines", rows)
      assert(ins == BATCH, err)
      local c = sluice.now()
      assert(db:exec("COMMIT"))
      local e = sluice.now()
      commits[#commits + 1] = e - c
      batches[#batches + 1] = e - s
      if b % 100 == 0 then wal_max = math.max(wal_max, file_size(path .. "-wal")) end
    end
  end)
  assert(sluice.wait(writer))
  local elapsed = sluice.now() - t0
  writing = false
  ticker:cancel()
  wal_max = math.max(wal_max, file_size(path .. "-wal"))
  local st = db:stats()
  if st.checkpoint then
    print(format("  checkpointer: %d passive, %d restart, %d busy, %d errors, WAL %d pages (%d copied)",
      st.checkpoint.checkpoints, st.checkpoint.restarts, st.checkpoint.busy, st.checkpoint.errors,
      st.checkpoint.wal_pages, st.checkpoint.copied_pages))
  end
  db:close()
  fx.remove_db(path)
  table.sort(commits)
  table.sort(batches)
  table.sort(late)
  table.sort(begins)
  table.sort(held)
  local over = 0
  for _, c in ipairs(commits) do if c > 0.005 then over = over + 1 end end
  local r = {
    over = over, n = #commits,
    rate = nbatches * BATCH / elapsed,
    commit = { pct(commits, 0.5), pct(commits, 0.99), commits[#commits] },
    batch = { pct(batches, 0.5), pct(batches, 0.99), batches[#batches] },
    late = { pct(late, 0.5), pct(late, 0.99), late[#late] or 0 },
    begin = { pct(begins, 0.5), pct(begins, 0.99), begins[#begins] },
    held = held[#held] or 0, yielded = #begins - #held,
    wal_max = wal_max, checkpoints = st.checkpoint and st.checkpoint.checkpoints or 0,
  }
  print(format("%-10s %8.0f rows/s  commit p50 %.2f p99 %.2f max %.2f ms"
    .. " | BEGIN p99 %.2f max %.2f ms, loop held max %.2f ms (%d let the timer run) | batch p50 %.2f p99 %.2f"
    .. " max %.2f ms | 1ms-timer late p50 %.2f p99 %.2f max %.2f ms | WAL max %.1f MiB, %d bg checkpoints"
    .. " | %d of %d commits > 5 ms",
    mode, r.rate, r.commit[1] * 1e3, r.commit[2] * 1e3, r.commit[3] * 1e3, r.begin[2] * 1e3, r.begin[3] * 1e3,
    r.held * 1e3, r.yielded, r.batch[1] * 1e3,
    r.batch[2] * 1e3, r.batch[3] * 1e3, r.late[1] * 1e3, r.late[2] * 1e3, r.late[3] * 1e3,
    wal_max / 2 ^ 20, r.checkpoints, over, #commits))
  return r
end

print(format("sluice.store stall benchmark: %d rows/s for %g s in %d-row batches, SQLite %s",
  RATE, SECONDS, BATCH, store.sqlite_version))
-- The noise floor: the same timer with nothing written (other processes
-- share the machine).
local function idle(seconds)
  local late, last = {}, nil
  local ticker = sluice.every(0.001, function()
    local now = sluice.now()
    if last then late[#late + 1] = math.max(0, now - last - 0.001) end
    last = now
  end)
  sluice.sleep(seconds)
  ticker:cancel()
  table.sort(late)
  print(format("%-10s 1ms-timer late p50 %.2f p99 %.2f max %.2f ms (nothing written)", "idle",
    pct(late, 0.5) * 1e3, pct(late, 0.99) * 1e3, (late[#late] or 0) * 1e3))
  return late
end

local quiet = idle(2)
bench.figure("store.timer_late_p99_idle_ms", pct(quiet, 0.99) * 1e3, "ms")
local before = stalls("inline")
local after = stalls("background")
local floor_run = stalls("none")
local names = { "p50", "p99", "max" }
for i, q in ipairs(names) do
  bench.figure("store.commit_" .. q .. "_ms", after.commit[i] * 1e3, "ms")
  bench.figure("store.commit_" .. q .. "_inline_ms", before.commit[i] * 1e3, "ms")
  bench.figure("store.timer_late_" .. q .. "_ms", after.late[i] * 1e3, "ms")
  bench.figure("store.timer_late_" .. q .. "_inline_ms", before.late[i] * 1e3, "ms")
end
bench.figure("store.batch_max_ms", after.batch[3] * 1e3, "ms")
bench.figure("store.begin_max_ms", after.begin[3] * 1e3, "ms")
bench.figure("store.begin_max_inline_ms", before.begin[3] * 1e3, "ms")
bench.figure("store.begin_max_no_checkpoint_ms", floor_run.begin[3] * 1e3, "ms")
bench.figure("store.begin_loop_held_max_ms", after.held * 1e3, "ms")
bench.figure("store.begin_loop_held_max_inline_ms", before.held * 1e3, "ms")
bench.figure("store.begin_loop_held_max_no_checkpoint_ms", floor_run.held * 1e3, "ms")
bench.figure("store.commits_over_5ms", after.over, "commits")
bench.figure("store.commits_over_5ms_inline", before.over, "commits")
bench.figure("store.commit_max_vs_inline", after.commit[3] / before.commit[3], "ratio")
bench.figure("store.commit_p99_vs_no_checkpoint", after.commit[2] / floor_run.commit[2], "ratio")
bench.figure("store.commit_p99_inline_vs_no_checkpoint", before.commit[2] / floor_run.commit[2], "ratio")
bench.figure("store.commits_over_5ms_no_checkpoint", floor_run.over, "commits")
bench.figure("store.paced_rate_vs_target", after.rate / RATE, "ratio")
bench.figure("store.wal_max_mib", after.wal_max / 2 ^ 20, "MiB")

-- --- part 2: a BIG-row table against an empty one --------------------------

if BIG == 0 then return end -- BIG_ROWS 0: part 1 alone

local function sh(cmd)
  local ok = os.execute(cmd)
  assert(ok == 0 or ok == true, "failed: " .. cmd)
end

-- The CLI script that inserts rows first..first+n-1 (make_batch's rows).
local function cli_insert(first, n)
  return format([[
WITH RECURSIVE c(k) AS (SELECT %d UNION ALL SELECT k + 1 FROM c WHERE k < %d)
INSERT INTO klines (symbol, open_time, open, high, low, close, volume, close_time, quote_volume, trades)
SELECT CASE k %% 4 WHEN 0 THEN 'BTCUSDT' WHEN 1 THEN 'ETHUSDT' WHEN 2 THEN 'BNBUSDT' ELSE 'SOLUSDT' END,
  1500000000000 + (k / 4) * 60000, 100 + (k %% 977) * 0.01, 101 + (k %% 977) * 0.01,
  99 + (k %% 977) * 0.01, 100.5 + (k %% 977) * 0.01, k * 0.25, 1500000000000 + (k / 4) * 60000 + 59999,
  (100 + (k %% 977) * 0.01) * k, k %% 1000 FROM c WHERE true
ON CONFLICT DO UPDATE SET close = excluded.close;
]], first, first + n - 1)
end

local function cli(path, sql)
  local script = path .. ".sql"
  local f = assert(io.open(script, "w"))
  f:write(".bail on\nPRAGMA journal_mode = WAL;\nPRAGMA synchronous = NORMAL;\nBEGIN;\n", sql, "COMMIT;\n")
  f:close()
  local t = sluice.now()
  sh(format("sqlite3 %q < %q > /dev/null", path, script))
  local dt = sluice.now() - t
  os.remove(script)
  return dt
end

-- A fresh klines database as sluice.store makes it; BIG rows when big.
local function prepare(big)
  local path = fx.tmpdb()
  fx.remove_db(path)
  local db = assert(store.open(path))
  assert(db:define(KLINES))
  db:close()
  local dt = big and cli(path, cli_insert(0, BIG)) or 0
  -- the CLI's checkpoint at exit leaves ~1 GiB of dirty pages that the
  -- kernel would write back while sluice measures (every fsync waits)
  sh("sync")
  return path, dt
end

local function sluice_upsert(path, first)
  local db = assert(store.open(path))
  assert(db:define(KLINES))
  local t, total = 0, 0
  for b = 0, NEW / 1000 - 1 do
    local rows = make_batch(first + b * 1000, 1000)
    local s = sluice.now()
    local ins = db:upsert("klines", rows)
    t = t + sluice.now() - s
    total = total + ins
    if b % 20 == 19 then sluice.yield() end
  end
  db:close()
  assert(total == NEW, "inserted " .. tostring(total))
  return NEW / t
end

local big_path, build = prepare(true)
print(format("built %d rows with the sqlite3 CLI in %.1f s (%.0f rows/s), file %.0f MiB", BIG, build,
  BIG / build, file_size(big_path) / 2 ^ 20))
local empty_path = prepare(false)
local s_big = sluice_upsert(big_path, BIG)
local s_empty = sluice_upsert(empty_path, 0)
local c_big = NEW / cli(big_path, cli_insert(BIG + NEW, NEW))
local c_empty = NEW / cli(empty_path, cli_insert(NEW, NEW))
print(format("sluice upsert: %.0f rows/s into %d rows, %.0f rows/s into empty: %.2fx", s_big, BIG, s_empty,
  s_big / s_empty))
print(format("sqlite3 CLI  : %.0f rows/s into %d rows, %.0f rows/s into empty: %.2fx", c_big, BIG, c_empty,
  c_big / c_empty))
bench.figure("store.upsert_big_vs_empty", s_big / s_empty, "ratio")
bench.figure("store.cli_big_vs_empty", c_big / c_empty, "ratio")
bench.figure("store.upsert_big_vs_cli_big", s_big / c_big, "ratio")
bench.figure("store.upsert_empty_vs_cli_empty", s_empty / c_empty, "ratio")
fx.remove_db(big_path)
fx.remove_db(empty_path)
