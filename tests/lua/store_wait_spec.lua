-- sluice.store: a write that waits for SQLite's write lock (held by another
-- connection: the checkpoint thread's RESTART, another process) waits in
-- its task, not on the loop: timers and other tasks run meanwhile. Callers
-- that cannot wait keep SQLite's blocking wait; the busy timeout ends both
-- with the same error; a task killed while waiting leaves nothing open.
local sluice = require "sluice"
local store = require "sluice.store"
local fx = require "support.store"

local tmpdb, remove_db = fx.tmpdb, fx.remove_db

local T = { name = "t", columns = { k = "integer", v = "text" }, key = { "k" } }

-- Runs cond every 1 ms until it returns true, at most 5 s.
local function wait_for(cond)
  local deadline = sluice.now() + 5
  while not cond() do
    if sluice.now() > deadline then return false end
    sluice.sleep(0.001)
  end
  return true
end

-- A 1 ms timer counting its runs.
local function ticker()
  local t = { n = 0 }
  t.timer = sluice.every(0.001, function() t.n = t.n + 1 end)
  return t
end

-- Whether task t is between tries (asleep, or woken and queued).
local function pending(t)
  local st = sluice.status(t)
  return st == "waiting" or st == "ready"
end

local function open(path, opts)
  local db = assert(store.open(path, opts))
  assert(db:define(T))
  return db
end

-- Another connection of this process holding the write lock.
local function hold(path)
  local other = assert(store.open(path))
  assert(other:exec("BEGIN IMMEDIATE"))
  return other
end

local function rows_of(db)
  return db:query("SELECT k, v FROM t ORDER BY k")
end

describe("sluice.store waiting for the write lock", function()
  it("an upsert in a task waits in its task: timers and tasks run, then its rows are written", function()
    local path = tmpdb()
    local db = open(path)
    local other = hold(path)
    local tick = ticker()
    local writer = sluice.spawn(function()
      return db:upsert("t", { { k = 1, v = "a" }, { k = 2, v = "b" }, { k = 3, v = "c" } })
    end)
    local start = tick.n
    -- the timer runs 20 times while the upsert waits (before: the busy
    -- handler held the loop until the busy timeout, then failed)
    assert.is_true(wait_for(function() return tick.n >= start + 20 end))
    assert.is_true(pending(writer))
    local other_task = sluice.spawn(function() return "ran" end)
    assert.same({ true, "ran" }, { sluice.wait(other_task) })
    assert.same({}, rows_of(db))
    assert(other:exec("COMMIT"))
    assert.same({ true, 3, 0, 0, 0 }, { sluice.wait(writer) })
    assert.same({ { k = 1, v = "a" }, { k = 2, v = "b" }, { k = 3, v = "c" } }, rows_of(db))
    assert.is_false(db:stats().in_transaction)
    tick.timer:cancel()
    other:close()
    db:close()
    remove_db(path)
  end)

  it("db:exec in autocommit and db:transaction wait in their task too", function()
    local path = tmpdb()
    local db = open(path)
    local other = hold(path)
    local tick = ticker()
    local a = sluice.spawn(function() return db:exec("INSERT INTO t (k, v) VALUES (1, 'x')") end)
    local b = sluice.spawn(function()
      return db:transaction(function() return db:exec("INSERT INTO t (k, v) VALUES (2, 'y')") end)
    end)
    local start = tick.n
    assert.is_true(wait_for(function() return tick.n >= start + 10 end))
    assert.is_true(pending(a))
    assert.is_true(pending(b))
    assert(other:exec("COMMIT"))
    assert.same({ true, 1 }, { sluice.wait(a) })
    assert.same({ true, 1 }, { sluice.wait(b) })
    assert.same({ { k = 1, v = "x" }, { k = 2, v = "y" } }, rows_of(db))
    tick.timer:cancel()
    other:close()
    db:close()
    remove_db(path)
  end)

  it("a caller that cannot wait blocks in SQLite's busy handler and succeeds", function()
    local path = tmpdb()
    local db = open(path)
    -- another process holds the lock for 1 s (this loop is blocked
    -- meanwhile, so the holder cannot be a connection of this process)
    local cli = assert(io.popen("(echo 'BEGIN IMMEDIATE;'; sleep 1; echo 'COMMIT;') | sqlite3 '" .. path .. "'"))
    local probe = assert(store.open(path, { busy_timeout = 0 }))
    assert.is_true(wait_for(function()
      -- a callback Lua cannot yield across: its BEGIN fails at once
      local held
      string.gsub("x", "x", function()
        local ok, err = probe:exec("BEGIN IMMEDIATE")
        if ok then probe:exec("ROLLBACK") else held = err end
      end)
      return held == "database is locked"
    end))
    local tick = ticker()
    local n, res
    string.gsub("x", "x", function()
      n = tick.n
      res = { db:upsert("t", { { k = 7, v = "z" } }) }
    end)
    assert.same({ 1, 0, 0, 0 }, res)
    assert.equal(n, tick.n) -- the loop did not run meanwhile
    assert.same({ { k = 7, v = "z" } }, rows_of(db))
    tick.timer:cancel()
    cli:close()
    probe:close()
    db:close()
    remove_db(path)
  end)

  it("the busy timeout ends the wait with SQLite's error, as a blocking caller gets it", function()
    local path = tmpdb()
    local db = open(path, { busy_timeout = 0.05 })
    local other = hold(path)
    local tick = ticker()
    local t0 = sluice.now()
    local res, err = db:upsert("t", { { k = 1, v = "a" } })
    local waited = sluice.now() - t0
    assert.is_nil(res)
    assert.equal("database is locked", err)
    assert.is_true(waited >= 0.05, "waited " .. waited)
    assert.is_true(tick.n > 0, "the timer never ran")
    local res2, err2
    string.gsub("x", "x", function() res2, err2 = db:upsert("t", { { k = 1, v = "a" } }) end)
    assert.is_nil(res2)
    assert.equal(err, err2)
    assert.same({ nil, "database is locked" }, { db:exec("INSERT INTO t (k, v) VALUES (1, 'a')") })
    assert.is_false(db:stats().in_transaction)
    assert(other:exec("COMMIT"))
    assert.same({ 1, 0, 0, 0 }, { db:upsert("t", { { k = 1, v = "a" } }) })
    tick.timer:cancel()
    other:close()
    db:close()
    remove_db(path)
  end)

  it("a task killed while it waits leaves no transaction open and writes nothing", function()
    local path = tmpdb()
    local db = open(path)
    local other = hold(path)
    local writer = sluice.spawn(function() return db:upsert("t", { { k = 1, v = "a" } }) end)
    assert.is_true(wait_for(function() return sluice.status(writer) == "waiting" end))
    assert.is_true(sluice.kill(writer))
    assert.equal("killed", sluice.status(writer))
    assert.is_false(db:stats().in_transaction)
    assert(other:exec("COMMIT"))
    assert.same({ 1, 0, 0, 0 }, { db:upsert("t", { { k = 2, v = "b" } }) })
    assert.same({ { k = 2, v = "b" } }, rows_of(db))
    other:close()
    db:close()
    remove_db(path)
  end)
end)
