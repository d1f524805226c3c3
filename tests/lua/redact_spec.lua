-- sluice.redact: the configuration's view, and free text scrubbed of
-- credentials (log lines, metric labels, REPL views, config errors).
local redact = require "sluice.redact"
local collector = require "sluice.collector"
local config = require "sluice.config"
local log = require "sluice.log"

describe("sluice.redact", function()
  it("url() drops user info always and credential-like query values", function()
    assert.equal("redis://<redacted>@127.0.0.1:6379/0", redact.url("redis://:hunter2@127.0.0.1:6379/0"))
    assert.equal("https://<redacted>@h.example/x", redact.url("https://u:p@ss@h.example/x"))
    assert.equal("https://h.example/k?symbol=BTC&api_key=<redacted>&sig=1",
      redact.url("https://h.example/k?symbol=BTC&api_key=abc123&sig=1"))
    assert.equal("https://h.example/k?access_token=<redacted>",
      redact.url("https://h.example/k?access_token=zz"))
    assert.equal("http://127.0.0.1:8080/health", redact.url("http://127.0.0.1:8080/health"))
  end)

  it("classify() shows an allow-listed view and remembers what it hides", function()
    local c = config.prepare({
      redis = "redis://:rds-pass-1@127.0.0.1:6379/0",
      admin = { port = 0, token = "adm-token-1" },
      collectors = { {
        use = "binance_klines", base_url = "https://user:url-pass-1@api.example",
        headers = { ["X-Api-Key"] = "hdr-key-1", Accept = "application/json", ["X-Tenant"] = "tenant-7" },
        auth = { header = "X-MBX-APIKEY", value = collector.env("SLUICE_REDACT_NOPE", "env-val-1") },
        api_secret = "own-secret-1",
        symbols = { "BTCUSDT" },
        sort_key = "symbol-x",
      } },
    }, "test.lua", { env = {} })
    local v = redact.classify(c)
    assert.equal(v, redact.classify(c)) -- once per configuration
    assert.equal("redis://<redacted>@127.0.0.1:6379/0", v.redis)
    assert.equal("<redacted>", v.admin.token)
    local e = v.collectors[1]
    assert.equal("https://<redacted>@api.example", e.base_url)
    assert.same({ ["X-Api-Key"] = "<redacted>", Accept = "application/json", ["X-Tenant"] = "<redacted>" },
      e.headers)
    assert.same({ header = "X-MBX-APIKEY", value = "<secret>" }, e.auth)
    assert.equal("<redacted>", e.api_secret)
    assert.same({ "BTCUSDT" }, e.symbols)
    -- the configuration itself is untouched
    assert.equal("hdr-key-1", c.collectors[1].headers["X-Api-Key"])
    -- free text never shows what the view hid
    for _, secret in ipairs({ "rds-pass-1", "adm-token-1", "url-pass-1", "hdr-key-1", "env-val-1",
      "own-secret-1" }) do
      assert.equal("a <redacted> b", redact.text("a " .. secret .. " b"), secret)
    end
    -- a non-credential header's value, or a setting only loosely named like
    -- a secret, is hidden in the view but not scrubbed from text
    assert.equal("<redacted>", e.sort_key)
    assert.equal("tenant-7 symbol-x", redact.text("tenant-7 symbol-x"))
  end)

  it("remember() takes a table's secrets as classify() does and keeps no view of it", function()
    local settings = { base_url = "https://u:rem-pass-1@api.example", api_key = "rem-key-1",
      headers = { Authorization = "rem-auth-1" },
      auth = { header = "X-Key", value = collector.env("SLUICE_REDACT_NOPE", "rem-env-1") } }
    redact.remember(settings)
    for _, secret in ipairs({ "rem-pass-1", "rem-key-1", "rem-auth-1", "rem-env-1" }) do
      assert.equal("a <redacted> b", redact.text("a " .. secret .. " b"), secret)
    end
    assert.has_error(function() redact.remember("x") end,
      "sluice.redact.remember: bad argument #1 (table expected, got string)")
  end)

  it("a database URL's lone user is a name, not a secret: text keeps it; a password is still one", function()
    -- postgresql://postgres@db remembered "postgres" and blanked it in every
    -- line: the sink named postgres showed as <redacted> in /status
    local v = redact.classify(config.prepare({
      sinks = { postgres = { url = "postgresql://postgres@127.0.0.1:5432/market" },
                mq = { kind = "rabbitmq", url = "amqp://guest:mq-pass-1@127.0.0.1:5672" } },
    }, "test.lua", { env = {} }))
    assert.equal("postgresql://<redacted>@127.0.0.1:5432/market", v.sinks.postgres.url)
    assert.equal("sink postgres (postgres) up", redact.text("sink postgres (postgres) up"))
    assert.equal("a <redacted> b", redact.text("a mq-pass-1 b"))
    -- elsewhere a lone user is often the credential itself
    redact.classify(config.prepare({ collectors = { { use = "binance_klines",
      base_url = "https://tok-lone-1@api.example" } } }, "test2.lua", { env = {} }))
    assert.equal("a <redacted> b", redact.text("a tok-lone-1 b"))
  end)

  it("a collector.env value shows as <secret> wherever it sits", function()
    local v = redact.classify({ collectors = { { use = "x", options = { deep = { collector.env("HOME") } } } } })
    assert.equal("<secret>", v.collectors[1].options.deep[1])
  end)

  it("a bad redis URL's error does not echo its password", function()
    local ok, err = pcall(config.prepare, { redis = "http://:err-pass-1@h:6379" }, "t.lua", { env = {} })
    assert.is_false(ok)
    assert.equal("t.lua: redis: must be a redis:// URL, got 'http://<redacted>@h:6379'", err)
  end)

  it("log lines are scrubbed: message and fields", function()
    redact.register("log-secret-1")
    log.output("/dev/null")
    log.level("info")
    log.info("connecting to redis://:log-pw@10.0.0.1:6379 with log-secret-1",
      { url = "https://u:pw2@x.example/a?token=t1", note = "log-secret-1" })
    local e = log.recent(1)[1]
    log.output("-")
    assert.equal("connecting to redis://<redacted>@10.0.0.1:6379 with <redacted>", e.msg)
    assert.equal("https://<redacted>@x.example/a?token=<redacted>", e.url)
    assert.equal("<redacted>", e.note)
  end)

  it("lines written from C (a task's error) are scrubbed of remembered secrets", function()
    local sluice = require "sluice"
    redact.register("task-secret-1")
    log.output("/dev/null")
    log.level("info")
    local t = sluice.spawn(function() error("failed with task-secret-1 inside", 0) end)
    sluice.wait(t)
    local e = log.recent(1)[1]
    log.output("-")
    assert.equal("task failed", e.msg)
    assert.is_nil(require("cjson").encode(e):find("task-secret-1", 1, true))
    assert.truthy(e.error:find("failed with <redacted> inside", 1, true))
  end)

  it("metric labels are scrubbed when the series is made", function()
    local metrics = require "sluice.metrics"
    redact.register("label-secret-1")
    local c = metrics.counter("redact_spec_total", "test", { labels = { "where" } })
    c:inc(1, "https://u:label-pw@h.example/x")
    c:inc(1, "label-secret-1")
    local text = metrics.render()
    assert.is_nil(text:find("label-pw", 1, true))
    assert.is_nil(text:find("label-secret-1", 1, true))
    assert.truthy(text:find('redact_spec_total{where="https://<redacted>@h.example/x"} 1', 1, true))
    assert.truthy(text:find('redact_spec_total{where="<redacted>"} 1', 1, true))
  end)

  it("the REPL's views are scrubbed", function()
    local repl = require "sluice.repl"
    local breaker = require "sluice.breaker"
    redact.register("repl-secret-1")
    local cb = breaker.new({ name = "https://u:repl-pw@h.example" })
    local s = repl.session()
    local r = repl.eval(s, "breakers()")
    assert.is_true(r.ok)
    assert.is_nil(r.output:find("repl-pw", 1, true))
    assert.truthy(r.output:find("https://<redacted>@h.example", 1, true))
    assert.equal("closed", cb:state())
  end)

  it("keeps json numerals, int64 cdata and json.array markers in views and scrubbed copies", function()
    local json = require "sluice.json"
    local MAX256 = "115792089237316195423570985008687907853269984665640564039457584007913129639935"
    local cfg = { collectors = { { name = "x", params = json.array(),
      expect = { a = 9223372036854775807LL, b = 18446744073709551615ULL, c = json.numeral(MAX256),
        d = json.numeral("0.00001234") } } } }
    local want = '{"collectors":[{"expect":{"a":9223372036854775807,"b":18446744073709551615,"c":'
      .. MAX256 .. ',"d":0.00001234},"name":"x","params":[]}]}'
    assert.equal(want, json.encode(redact.classify(cfg)))
    assert.equal(want, json.encode(redact.scrub(cfg)))
  end)
end)
