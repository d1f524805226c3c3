-- sluice.config: profiles, environment overrides and validation messages.
local config = require "sluice.config"

local function base()
  return {
    store = "x.db",
    log = { level = "info" },
    collectors = {
      { use = "binance_klines", symbols = { "BTCUSDT" }, interval = 60 },
      { file = "feeds/news.lua", name = "news", enabled = true },
    },
    profiles = { production = { log = { level = "warning", format = "json" }, store = "/var/lib/p.db" } },
  }
end

describe("sluice.config", function()
  it("merges a profile over the file, tables key by key", function()
    local c = config.prepare(base(), "cfg.lua", { profile = "production", env = {} })
    assert.equal("/var/lib/p.db", c.store)
    assert.same({ level = "warning", format = "json" }, c.log)
    assert.is_nil(c.profiles)
  end)

  it("applies SLUICE_ environment overrides with the type of the setting", function()
    local c = config.prepare(base(), "cfg.lua", { env = {
      SLUICE_COLLECTORS__BINANCE_KLINES__INTERVAL = "30",
      SLUICE_COLLECTORS__NEWS__ENABLED = "false",
      SLUICE_LOG__LEVEL = "debug",
      SLUICE_STORE = "env.db",
      SLUICE_UNRELATED = "left alone",
      PATH = "/bin",
    } })
    assert.equal(30, c.collectors[1].interval)
    assert.is_false(c.collectors[2].enabled)
    assert.equal("debug", c.log.level)
    assert.equal("env.db", c.store)
  end)

  it("names the variable and the file when an override is wrong", function()
    assert.has_error(function()
      config.prepare(base(), "cfg.lua", { env = { SLUICE_COLLECTORS__BINANCE_KLINES__INTERVAL = "soon" } })
    end, "cfg.lua: SLUICE_COLLECTORS__BINANCE_KLINES__INTERVAL: must be a number, got 'soon'")
    assert.has_error(function()
      config.prepare(base(), "cfg.lua", { env = { SLUICE_COLLECTORS__NOPE__INTERVAL = "5" } })
    end, "cfg.lua: SLUICE_COLLECTORS__NOPE__INTERVAL: no collector named 'nope'")
    assert.has_error(function()
      config.prepare(base(), "cfg.lua", { env = { SLUICE_LOG__LEVEL = "loud" } })
    end, "cfg.lua: log.level: must be trace, debug, info, warning, error, critical or none, got 'loud'")
  end)

  it("names the file and key of every validation error", function()
    local function err_of(c, opts)
      local ok, e = pcall(config.prepare, c, "cfg.lua", opts or { env = {} })
      assert.is_false(ok)
      return e
    end
    assert.equal("cfg.lua: stor: unknown setting", err_of({ stor = "x" }))
    assert.equal("cfg.lua: store: must be a string, got number", err_of({ store = 1 }))
    assert.equal("cfg.lua: log.colour: unknown setting", err_of({ log = { colour = true } }))
    assert.equal("cfg.lua: log.level: must be a string, got number", err_of({ log = { level = 3 } }))
    assert.equal("cfg.lua: admin.port: must be a number, got string", err_of({ admin = { port = "80" } }))
    assert.equal("cfg.lua: admin.tokn: unknown setting", err_of({ admin = { tokn = "x" } }))
    assert.equal("cfg.lua: log: must be a table, got string", err_of({ log = "debug" }))
    assert.equal("cfg.lua: collectors[1]: needs exactly one of use = \"<shipped collector>\" or file = \"path.lua\"",
      err_of({ collectors = { { interval = 5 } } }))
    assert.equal("cfg.lua: collectors[2]: a second collector named 'a' (set name = ...)",
      err_of({ collectors = { { use = "a" }, { use = "a" } } }))
    assert.equal("cfg.lua: profiles.staging: no such profile", err_of(base(), { profile = "staging", env = {} }))
    assert.equal("cfg.lua: shutdown_timeout: must be a finite number >= 0", err_of({ shutdown_timeout = -1 }))
    assert.equal("cfg.lua: admin.hosts: must be a list of host names (\"name\" or \"name:port\")",
      err_of({ admin = { hosts = { "ok.example", 5 } } }))
    assert.equal("cfg.lua: admin.insecure_loopback_mutations: must be a boolean, got string",
      err_of({ admin = { insecure_loopback_mutations = "yes" } }))
    assert.equal("cfg.lua: redis: must be a redis:// URL, got 'rediss://<redacted>@h:6380'",
      err_of({ redis = "rediss://:pw-123@h:6380" }))
    assert.equal("cfg.lua: collectors[1].enabled: must be true or false, got string",
      err_of({ collectors = { { use = "a", enabled = "no" } } }))
    assert.equal("cfg.lua: start_rate: must be a finite number > 0 (first runs per second at start-up)",
      err_of({ start_rate = 0 }))
    assert.equal("cfg.lua: gc_pause: must be a number from 100 to 1000 (the Lua heap's growth before a collection, %)",
      err_of({ gc_pause = 50 }))
    assert.equal("cfg.lua: gc_pause: must be a number, got string", err_of({ gc_pause = "120" }))
    assert.equal("cfg.lua: gc_stepmul: must be a number from 50 to 1000 (the Lua GC's work per step against "
      .. "what was allocated, %)", err_of({ gc_stepmul = 20 }))
    assert.equal("cfg.lua: gc_stepmul: must be a number, got string", err_of({ gc_stepmul = "100" }))
  end)

  -- found while writing tests/fuzz (fuzz_config): these raised Lua runtime errors
  -- ("attempt to concatenate", "attempt to index") instead of naming the key
  it("names the key of a collector name or profiles table of the wrong type", function()
    local function err_of(c, opts)
      local ok, e = pcall(config.prepare, c, "cfg.lua", opts or { env = {} })
      assert.is_false(ok)
      return e
    end
    assert.equal("cfg.lua: collectors[1].name: must be a string, got boolean",
      err_of({ collectors = { { use = "a", name = true }, { use = "b", name = true } } }))
    assert.equal("cfg.lua: collectors[1].name: must be a string, got table",
      err_of({ collectors = { { use = "a", name = {} } } }))
    assert.equal("cfg.lua: profiles: must be a table, got number",
      err_of({ profiles = 5 }, { profile = "prod", env = {} }))
  end)
end)

describe("sluice.backfill.parse_time", function()
  local parse = require("sluice.backfill").parse_time
  it("reads UTC dates and times, and epoch seconds", function()
    assert.equal(0, parse("1970-01-01"))
    assert.equal(1704067200, parse("2024-01-01"))
    assert.equal(1709251200, parse("2024-03-01"))
    assert.equal(951827400, parse("2000-02-29T12:30:00"))
    assert.equal(951827400, parse("2000-02-29 12:30:00Z"))
    assert.equal(42, parse(42))
    assert.has_error(function() parse("yesterday") end)
  end)
end)
