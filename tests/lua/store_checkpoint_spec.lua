-- sluice.store's background WAL checkpoints (runtime/core/checkpoint.c):
-- commits on the loop never checkpoint, a thread with its own connection
-- does, the WAL starts over afterwards and stays bounded under writes that
-- never pause, and close joins the thread (even mid-checkpoint).
local sluice = require "sluice"
local store = require "sluice.store"
local core = require "sluice._store"
local fx = require "support.store"

local tmpdb, remove_db, err_of = fx.tmpdb, fx.remove_db, fx.err_of

-- ~1 KiB of text per row: 200 rows are about 50 WAL pages.
local FILLER = string.rep("x", 1000)

-- Runs cond every 10 ms until it returns true, at most `seconds` (5).
local function wait_for(cond, seconds)
  local deadline = sluice.now() + (seconds or 5)
  while not cond() do
    if sluice.now() > deadline then return false end
    sluice.sleep(0.01)
  end
  return true
end

-- n transactions of 200 new rows into t (x, pad) starting at key first.
local function write(c, first, n)
  for b = 0, n - 1 do
    assert(c:exec("BEGIN IMMEDIATE"))
    for i = 1, 200 do assert(c:exec("INSERT INTO t VALUES (?, ?)", first + b * 200 + i, FILLER)) end
    assert(c:exec("COMMIT"))
  end
  return first + n * 200
end

describe("sluice.store background checkpoints", function()
  it("checkpoint on a thread, and the WAL starts over after it", function()
    local path = tmpdb()
    local db = assert(store.open(path))
    assert.same({ checkpoints = 0, restarts = 0, busy = 0, errors = 0, wal_pages = 0, copied_pages = 0,
      wal_frames = 0 }, db:stats().checkpoint)
    assert(db:exec("CREATE TABLE t (id INTEGER PRIMARY KEY, pad TEXT)"))
    -- 40 transactions, ~2000 WAL pages: twice SQLite's autocheckpoint
    -- threshold, which an inline checkpoint would have reset at 1000.
    local next_id = write(db, 0, 40)
    local st
    assert.is_true(wait_for(function()
      st = db:stats().checkpoint
      -- every frame the last commit left in the WAL is copied
      return st.checkpoints >= 1 and st.wal_frames > 1000 and st.copied_pages == st.wal_frames
    end), "no complete background checkpoint")
    assert.equal(0, st.errors)
    assert.is_nil(st.last_error)
    -- everything was copied: the next commit starts the WAL over
    write(db, next_id, 1)
    st = db:stats().checkpoint
    assert.is_true(st.wal_frames > 0 and st.wal_frames < 100, "WAL frames after the restart: " .. st.wal_frames)
    assert.equal(8200, db:query("SELECT count(*) AS n FROM t")[1].n)
    db:close()
    remove_db(path)
  end)

  it("keeps the WAL bounded under writes that never let it start over", function()
    local path = tmpdb()
    local c = assert(core.open(path, 5000))
    assert.equal("wal", c:query("PRAGMA journal_mode = WAL")[1].journal_mode)
    assert(c:exec("PRAGMA synchronous = NORMAL"))
    assert(c:exec("CREATE TABLE t (id INTEGER PRIMARY KEY, pad TEXT)"))
    -- wake at 50 pages, RESTART once a checkpoint leaves 200 or more
    assert.is_true(c:start_checkpointer(50, 200, 5, 100))
    local next_id, st = 0
    -- keep writing back to back (~50 pages a transaction) until a RESTART
    -- happened and a commit found the WAL started over: with a pause
    -- between the writes the thread's passive checkpoint catches up and
    -- the WAL starts over by itself (a slow build: no RESTART ever needed)
    local deadline, bounded = sluice.now() + 30
    repeat
      next_id = write(c, next_id, 1)
      st = c:checkpoint_stats()
      bounded = st.restarts >= 1 and st.wal_frames < 200
    until bounded or sluice.now() > deadline
    assert.is_true(bounded, "no RESTART bounded the WAL")
    assert.equal(0, st.errors)
    assert.equal(next_id, c:query("SELECT count(*) AS n FROM t")[1].n)
    c:close()
    remove_db(path)
  end)

  it("close stops and joins the thread, even while it checkpoints", function()
    local path = tmpdb()
    for round = 1, 3 do
      local db = assert(store.open(path))
      assert(db:exec("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, pad TEXT)"))
      write(db, (round - 1) * 8000, 40) -- wakes the thread (>= 1000 pages)
      assert.is_true(db:close())
      assert.is_nil(db:stats().checkpoint)
    end
    -- the last connection closed checkpointed and removed the WAL: the
    -- thread's connection was closed before it
    assert.is_nil(io.open(path .. "-wal", "rb"))
    local db = assert(store.open(path))
    assert.equal(24000, db:query("SELECT count(*) AS n FROM t")[1].n)
    assert.equal("ok", db:query("PRAGMA integrity_check")[1].integrity_check)
    db:close()
    remove_db(path)
  end)

  it("has no thread inline, in memory, or twice", function()
    local path = tmpdb()
    local db = assert(store.open(path, { checkpoint = "inline" }))
    assert.is_nil(db:stats().checkpoint)
    db:close()
    db = assert(store.open(":memory:"))
    assert.is_nil(db:stats().checkpoint)
    db:close()
    local c = assert(core.open(path, 5000))
    assert(c:query("PRAGMA journal_mode = WAL"))
    assert.is_true(c:start_checkpointer(1000, 16384, 50, 100))
    assert.equal("sluice.store: checkpointer already started", err_of(c.start_checkpointer, c, 1, 2, 3, 4))
    c:close()
    remove_db(path)
    assert.equal("sluice.store.open: option 'checkpoint' must be 'background' or 'inline', got 'later'",
      err_of(store.open, path, { checkpoint = "later" }))
  end)
  it("refuses PRAGMA wal_autocheckpoint, which would stop the thread, and allows it inline", function()
    local REFUSED = "PRAGMA wal_autocheckpoint is refused: this database checkpoints on a background thread,"
      .. " which the pragma would turn off (open it with checkpoint = \"inline\" to use SQLite's autocheckpoint)"
    local path = tmpdb()
    local db = assert(store.open(path))
    assert(db:exec("CREATE TABLE t (id INTEGER PRIMARY KEY, pad TEXT)"))
    assert.same({ nil, REFUSED }, { db:exec("PRAGMA wal_autocheckpoint = 100") })
    assert.same({ nil, REFUSED }, { db:exec("pragma MAIN.Wal_AutoCheckpoint(0)") })
    assert.same({ nil, REFUSED }, { db:script("SELECT 1; PRAGMA wal_autocheckpoint = 0;") })
    -- reading it is allowed: SQLite's own hook is not installed
    assert.same({ { wal_autocheckpoint = 0 } }, db:query("PRAGMA wal_autocheckpoint"))
    -- other errors keep their own message
    assert.same({ nil, "no such table: nope" }, { db:exec("INSERT INTO nope VALUES (1)") })
    -- and the thread still checkpoints (~2000 WAL pages)
    write(db, 0, 40)
    assert.is_true(wait_for(function() return db:stats().checkpoint.checkpoints >= 1 end), "no checkpoint")
    db:close()
    db = assert(store.open(path, { checkpoint = "inline" }))
    assert.equal(0, db:exec("PRAGMA wal_autocheckpoint = 100"))
    assert.same({ { wal_autocheckpoint = 100 } }, db:query("PRAGMA wal_autocheckpoint"))
    db:close()
    remove_db(path)
  end)

  it("shows checkpoint errors and RESTARTs of every open db in the metrics", function()
    local ffi = require "ffi"
    local metrics = require "sluice.metrics"
    pcall(ffi.cdef, [[
      struct sl_spec_rlimit { unsigned long cur, max; };
      int getrlimit(int, struct sl_spec_rlimit *);
      int setrlimit(int, const struct sl_spec_rlimit *);
      void *signal(int, void *);
    ]])
    local RLIMIT_FSIZE, SIGXFSZ = 1, 25
    local function sample(text, series)
      local v = text:match("\n" .. series:gsub("%p", "%%%0") .. " (%S+)\n")
      return v and tonumber(v)
    end
    local function size(p)
      local f = assert(io.open(p, "rb"))
      local n = f:seek("end")
      f:close()
      return n
    end
    local path = tmpdb()
    local db = assert(store.open(path))
    local series = '{path="' .. path .. '"}'
    local text = metrics.render()
    assert.truthy(text:find("# TYPE sluice_store_checkpoint_errors_total counter\n", 1, true))
    assert.truthy(text:find("# TYPE sluice_store_checkpoint_restarts_total counter\n", 1, true))
    assert.equal(0, sample(text, "sluice_store_checkpoint_errors_total" .. series))
    assert.equal(0, sample(text, "sluice_store_checkpoint_restarts_total" .. series))
    -- ~20 MiB of rows, all in the database file once it is closed (the
    -- last connection's close checkpoints and removes the WAL)
    assert(db:exec("CREATE TABLE t (id INTEGER PRIMARY KEY, pad TEXT)"))
    local next_id = write(db, 0, 100)
    db:close()
    db = assert(store.open(path))
    -- then files may not grow past the database's size: the new WAL
    -- (~8 MiB below) stays below it; the checkpoint that grows the
    -- database fails (EFBIG, SIGXFSZ ignored)
    local old = ffi.new("struct sl_spec_rlimit")
    assert.equal(0, ffi.C.getrlimit(RLIMIT_FSIZE, old))
    local prev_handler = ffi.C.signal(SIGXFSZ, ffi.cast("void *", 1))
    local lim = ffi.new("struct sl_spec_rlimit", { size(path) + 65536, old.max })
    assert.equal(0, ffi.C.setrlimit(RLIMIT_FSIZE, lim))
    local ok, err = pcall(function()
      next_id = write(db, next_id, 40) -- ~8 MiB more: wakes the thread
      assert.is_true(wait_for(function() return db:stats().checkpoint.errors >= 1 end), "no checkpoint error")
    end)
    assert.equal(0, ffi.C.setrlimit(RLIMIT_FSIZE, old))
    ffi.C.signal(SIGXFSZ, prev_handler)
    assert(ok, err)
    -- the limit lifted, the next retry succeeds and the errors stop
    assert.is_true(wait_for(function()
      local st = db:stats().checkpoint
      return st.copied_pages == st.wal_frames and st.wal_frames > 0
    end), "no checkpoint after the errors")
    local st = db:stats().checkpoint
    assert.truthy(st.last_error:find("disk I/O error", 1, true), st.last_error)
    text = metrics.render()
    assert.equal(st.errors, sample(text, "sluice_store_checkpoint_errors_total" .. series))
    assert.equal(st.restarts, sample(text, "sluice_store_checkpoint_restarts_total" .. series))
    assert.equal(next_id, db:query("SELECT count(*) AS n FROM t")[1].n)
    db:close()
    -- a closed db has no series
    text = metrics.render()
    assert.is_nil(sample(text, "sluice_store_checkpoint_errors_total" .. series))
    remove_db(path)
  end)
end)
