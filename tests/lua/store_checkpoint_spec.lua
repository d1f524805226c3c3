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
end)
