-- sluice.metrics: the registry, the text exposition format (checked against
-- golden strings and, when it is installed, promtool), and the built-in
-- families read from breakers, limiters, collectors, tasks, the process and
-- the HTTP client.
local sluice = require "sluice"
local metrics = require "sluice.metrics"
local server = require "sluice.server"
local http = require "sluice.http"
local breaker = require "sluice.breaker"
local limiter = require "sluice.limiter"
local procinfo = require "sluice.procinfo"
local registry = require "sluice.metrics.registry"

local function errmsg(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok)
  return (tostring(err):gsub("^[^:]*:%d+: ", ""))
end

-- Every metric a test registers is unregistered after it.
local registered = {}
local function reg(kind, name, help, opts)
  local m = metrics[kind](name, help, opts)
  registered[#registered + 1] = name
  return m
end

local servers = {}
local function listen()
  local srv = assert(server.listen{})
  srv:route("GET", "/metrics", metrics.handler)
  srv:route("GET", "/hello", function() return 200, "hi" end)
  servers[#servers + 1] = srv
  return srv
end

after_each(function()
  for _, name in ipairs(registered) do metrics.unregister(name) end
  registered = {}
  for _, srv in ipairs(servers) do srv:close() end
  servers = {}
end)

-- The lines of an exposition that start with prefix.
local function lines_of(text, prefix)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, #prefix) == prefix then out[#out + 1] = line end
  end
  return out
end

local function sample(text, series)
  for line in text:gmatch("[^\n]+") do
    local value = line:match("^(.-) ([^ ]+)$")
    if value == series then return tonumber(line:match(" ([^ ]+)$")) end
  end
  return nil
end

describe("sluice.metrics exposition", function()
  it("renders a counter without labels", function()
    local c = reg("counter", "test_jobs_total", "Jobs done.")
    assert.equal("# HELP test_jobs_total Jobs done.\n# TYPE test_jobs_total counter\n",
      c:render())
    c:inc()
    c:inc(2.5)
    assert.equal("# HELP test_jobs_total Jobs done.\n"
      .. "# TYPE test_jobs_total counter\n"
      .. "test_jobs_total 3.5\n", c:render())
    assert.equal(3.5, c:value())
  end)

  it("renders a labelled counter, series sorted, labels by value or by name", function()
    local c = reg("counter", "test_req_total", "Requests.", { labels = { "status", "method" } })
    c:inc(1, "success", "GET")
    c:inc(2, { method = "POST", status = "error" })
    c:inc({ "success", "GET" })
    c:inc("success", "GET")
    assert.equal("# HELP test_req_total Requests.\n"
      .. "# TYPE test_req_total counter\n"
      .. 'test_req_total{status="error",method="POST"} 2\n'
      .. 'test_req_total{status="success",method="GET"} 3\n', c:render())
    assert.equal(3, c:value("success", "GET"))
    assert.equal(2, c:value({ status = "error", method = "POST" }))
    assert.is_nil(c:value("error", "GET"))
  end)

  it("renders a gauge: set, inc, dec, numeric labels and special values", function()
    local g = reg("gauge", "test_temperature_celsius", "Temperature.", { labels = { "room" } })
    g:set(21.5, "kitchen")
    g:inc(2, "kitchen")
    g:dec("kitchen")
    g:set(-1 / 0, "cellar")
    g:set(0.1, 7)
    assert.equal("# HELP test_temperature_celsius Temperature.\n"
      .. "# TYPE test_temperature_celsius gauge\n"
      .. 'test_temperature_celsius{room="7"} 0.1\n'
      .. 'test_temperature_celsius{room="cellar"} -Inf\n'
      .. 'test_temperature_celsius{room="kitchen"} 22.5\n', g:render())
    assert.equal("NaN", metrics.format_value(0 / 0))
    assert.equal("+Inf", metrics.format_value(1 / 0))
    assert.equal("1e+21", metrics.format_value(1e21))
    assert.equal("12345678901234", metrics.format_value(12345678901234))
    assert.equal("0.3333333333333333", metrics.format_value(1 / 3))
    assert.equal(1 / 3, tonumber(metrics.format_value(1 / 3)))
    -- the one formatter, sluice.json.number: -Inf, and -0 keeps its sign
    assert.equal("-Inf", metrics.format_value(-1 / 0))
    assert.equal("-0", metrics.format_value(-0.0))
    assert.equal("9.223372036854776e+18", metrics.format_value(2 ^ 63))
    assert.equal("0.30000000000000004", metrics.format_value(0.1 + 0.2))
  end)

  it("renders a histogram: cumulative buckets, +Inf, _sum and _count", function()
    local h = reg("histogram", "test_latency_seconds", "Latency.",
      { labels = { "host" }, buckets = { 0.25, 0.5, 1 } })
    for _, v in ipairs({ 0.125, 0.25, 0.375, 0.75, 2, 0.0625 }) do h:observe(v, "a") end
    h:observe(5, { host = "b" })
    assert.equal("# HELP test_latency_seconds Latency.\n"
      .. "# TYPE test_latency_seconds histogram\n"
      .. 'test_latency_seconds_bucket{host="a",le="0.25"} 3\n'
      .. 'test_latency_seconds_bucket{host="a",le="0.5"} 4\n'
      .. 'test_latency_seconds_bucket{host="a",le="1"} 5\n'
      .. 'test_latency_seconds_bucket{host="a",le="+Inf"} 6\n'
      .. 'test_latency_seconds_sum{host="a"} 3.5625\n'
      .. 'test_latency_seconds_count{host="a"} 6\n'
      .. 'test_latency_seconds_bucket{host="b",le="0.25"} 0\n'
      .. 'test_latency_seconds_bucket{host="b",le="0.5"} 0\n'
      .. 'test_latency_seconds_bucket{host="b",le="1"} 0\n'
      .. 'test_latency_seconds_bucket{host="b",le="+Inf"} 1\n'
      .. 'test_latency_seconds_sum{host="b"} 5\n'
      .. 'test_latency_seconds_count{host="b"} 1\n', h:render())
    local v = h:value("a")
    assert.same({ ["0.25"] = 3, ["0.5"] = 4, ["1"] = 5, ["+Inf"] = 6 }, v.buckets)
    assert.equal(6, v.count)
  end)

  it("renders a histogram without labels with the default buckets", function()
    local h = reg("histogram", "test_plain_seconds", "Plain.")
    h:observe(0.02)
    local text = h:render()
    assert.same({
      'test_plain_seconds_bucket{le="0.005"} 0', 'test_plain_seconds_bucket{le="0.01"} 0',
      'test_plain_seconds_bucket{le="0.025"} 1', 'test_plain_seconds_bucket{le="0.05"} 1',
      'test_plain_seconds_bucket{le="0.1"} 1', 'test_plain_seconds_bucket{le="0.25"} 1',
      'test_plain_seconds_bucket{le="0.5"} 1', 'test_plain_seconds_bucket{le="1"} 1',
      'test_plain_seconds_bucket{le="2.5"} 1', 'test_plain_seconds_bucket{le="5"} 1',
      'test_plain_seconds_bucket{le="10"} 1', 'test_plain_seconds_bucket{le="+Inf"} 1',
    }, lines_of(text, "test_plain_seconds_bucket"))
    assert.same({ "test_plain_seconds_sum 0.02", "test_plain_seconds_count 1" },
      { lines_of(text, "test_plain_seconds_sum")[1], lines_of(text, "test_plain_seconds_count")[1] })
  end)

  it("escapes backslash, double quote and newline in label values, and in help", function()
    local c = reg("counter", "test_escape_total", 'Help with \\ and\nnewline and "quotes".',
      { labels = { "v" } })
    c:inc(1, 'a\\b"c\nd')
    assert.equal('# HELP test_escape_total Help with \\\\ and\\nnewline and "quotes".\n'
      .. "# TYPE test_escape_total counter\n"
      .. 'test_escape_total{v="a\\\\b\\"c\\nd"} 1\n', c:render())
    assert.equal('x\\"y\\\\z\\n', metrics.escape_label('x"y\\z\n'))
  end)

  it("sorts families by name and gives the same text twice", function()
    reg("gauge", "aaa_test_first", "First."):set(1)
    reg("counter", "zzz_test_last_total", "Last."):inc()
    local text = metrics.render()
    assert.equal("# HELP aaa_test_first First.", text:match("^[^\n]+"))
    assert.equal("zzz_test_last_total 1", text:match("([^\n]+)\n$"))
    local names = {}
    for name in text:gmatch("# TYPE (%S+)") do names[#names + 1] = name end
    local sorted = {}
    for i, n in ipairs(names) do sorted[i] = n end
    table.sort(sorted)
    assert.same(sorted, names)
    local other = metrics.render()
    -- only the process figures may move between two renders
    local function stable(t)
      return (t:gsub("\nsluice_process_[^\n]*", ""):gsub("\nsluice_lua_memory_bytes [^\n]*", ""))
    end
    assert.equal(stable(text), stable(other))
  end)
end)

describe("sluice.metrics registration", function()
  it("validates names: counters end in _total, others must not", function()
    assert.equal("sluice.metrics.counter: counter name 'test_jobs' must end in _total",
      errmsg(metrics.counter, "test_jobs", "Jobs."))
    assert.equal("sluice.metrics.counter: bad metric name '1abc_total' (must match [a-zA-Z_:][a-zA-Z0-9_:]*)",
      errmsg(metrics.counter, "1abc_total", "x"))
    assert.equal("sluice.metrics.gauge: bad metric name 'a-b' (must match [a-zA-Z_:][a-zA-Z0-9_:]*)",
      errmsg(metrics.gauge, "a-b", "x"))
    assert.equal("sluice.metrics.gauge: bad metric name 'nil' (must match [a-zA-Z_:][a-zA-Z0-9_:]*)",
      errmsg(metrics.gauge, nil, "x"))
    assert.equal("sluice.metrics.gauge: a gauge name must not end in _total (got 'test_g_total')",
      errmsg(metrics.gauge, "test_g_total", "x"))
    assert.equal("sluice.metrics.histogram: a histogram name must not end in _count (got 'test_h_count')",
      errmsg(metrics.histogram, "test_h_count", "x"))
    assert.equal("sluice.metrics.gauge: metric 'test_g' needs a help string",
      errmsg(metrics.gauge, "test_g"))
    assert.equal("sluice.metrics.gauge: unknown option 'buckets'",
      errmsg(metrics.gauge, "test_g", "x", { buckets = { 1 } }))
    assert.is_nil(metrics.get("test_jobs"))
    local ok = reg("gauge", "test:with_colon", "Colons are allowed.")
    assert.equal("test:with_colon", ok.name)
  end)

  it("validates label names and bucket lists", function()
    assert.equal("sluice.metrics.counter: bad label name '0x' (must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __)",
      errmsg(metrics.counter, "test_l_total", "x", { labels = { "0x" } }))
    assert.equal("sluice.metrics.counter: bad label name '__x' (must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __)",
      errmsg(metrics.counter, "test_l_total", "x", { labels = { "__x" } }))
    assert.equal("sluice.metrics.counter: label 'a' given twice",
      errmsg(metrics.counter, "test_l_total", "x", { labels = { "a", "a" } }))
    assert.equal("sluice.metrics.histogram: label name 'le' is reserved for histogram buckets",
      errmsg(metrics.histogram, "test_l_seconds", "x", { labels = { "le" } }))
    assert.equal("sluice.metrics.histogram: buckets must be strictly increasing (buckets[2] = 1)",
      errmsg(metrics.histogram, "test_l_seconds", "x", { buckets = { 1, 1 } }))
    assert.equal("sluice.metrics.histogram: option 'buckets' must be a non-empty list of numbers, got {}",
      errmsg(metrics.histogram, "test_l_seconds", "x", { buckets = {} }))
  end)

  it("returns the metric already registered, raises on a conflicting type or labels", function()
    local c = reg("counter", "test_same_total", "Same.", { labels = { "a" } })
    assert.equal(c, metrics.counter("test_same_total", "Same.", { labels = { "a" } }))
    assert.equal("sluice.metrics.gauge: 'test_same_total' is already registered as a counter",
      errmsg(metrics.gauge, "test_same_total", "x"))
    local g = reg("gauge", "test_same", "Same.")
    assert.equal("sluice.metrics.histogram: 'test_same' is already registered as a gauge",
      errmsg(metrics.histogram, "test_same", "x"))
    assert.equal("sluice.metrics.counter: 'test_same_total' is already registered with labels (a)",
      errmsg(metrics.counter, "test_same_total", "x", { labels = { "b" } }))
    assert.equal(g, metrics.get("test_same"))
    assert.equal("sluice.metrics.gauge: 'sluice_breaker_state' is a built-in sluice metric",
      errmsg(metrics.gauge, "sluice_breaker_state", "x"))
    -- the HTTP client's families are registered: same type and labels give them back
    assert.equal(metrics.get("sluice_http_requests_total"), metrics.counter("sluice_http_requests_total",
      "x", { labels = { "host", "method", "code" } }))
  end)

  it("checks values and labels when recording", function()
    local c = reg("counter", "test_check_total", "Check.", { labels = { "a", "b" } })
    assert.equal("sluice.metrics.counter.inc 'test_check_total': a counter cannot decrease (got -1)",
      errmsg(c.inc, c, -1, "x", "y"))
    assert.equal("sluice.metrics.counter.labels 'test_check_total': expected 2 label values (a, b), got 1",
      errmsg(c.inc, c, 1, "x"))
    assert.equal("sluice.metrics.counter.labels 'test_check_total': missing label 'b'",
      errmsg(c.inc, c, 1, { a = "x" }))
    assert.equal("sluice.metrics.counter.labels 'test_check_total': unknown label 'c' (labels: a, b)",
      errmsg(c.inc, c, 1, { a = "x", b = "y", c = "z" }))
    assert.equal("sluice.metrics.counter.inc 'test_check_total': bad value (number expected, got nan)",
      errmsg(c.inc, c, 0 / 0, "x", "y"))
    local g = reg("gauge", "test_check_plain", "Check.")
    assert.equal("sluice.metrics.gauge.labels 'test_check_plain' has no labels",
      errmsg(g.set, g, 1, "x"))
    assert.equal("sluice.metrics.gauge.set 'test_check_plain': bad value (number expected, got string)",
      errmsg(g.set, g, "1"))
    -- the error points at the caller's line
    local ok, err = pcall(function() c:inc(-1, "x", "y") end)
    assert.is_false(ok)
    assert.matches("metrics_spec%.lua:%d+: ", err)
    c:inc(1, "x", "y")
    assert.is_true(c:remove("x", "y"))
    assert.is_nil(c:value("x", "y"))
  end)

  it("takes the host from a URL without user info", function()
    assert.equal("example.com:8443", metrics.host_of("https://user:secret@Example.COM:8443/a?b=c"))
    assert.equal("api.binance.com", metrics.host_of("https://api.binance.com/api/v3/klines?x=1"))
    assert.equal("unknown", metrics.host_of("not a url"))
  end)
end)

describe("sluice.metrics.registry sources", function()
  it("renders a source's families, made afresh at each render, and frees them when removed", function()
    local calls = 0
    local src = registry.add_source({
      { "gauge", "test_src_up", "Up.", { "thing" } },
      { "counter", "test_src_events_total", "Events." },
      { "summary", "test_src_seconds", "Time spent.", { "thing" } },
    }, function(f)
      calls = calls + 1
      f.test_src_up:set(1, "a")
      f.test_src_events_total:inc(calls)
      f.test_src_seconds:set_totals(2.5, 4, "a")
    end)
    finally(function() registry.remove_source(src) end)
    local got = {}
    for line in metrics.render():gmatch("[^\n]+") do
      if line:find("test_src_", 1, true) then got[#got + 1] = line end
    end
    assert.same({
      "# HELP test_src_events_total Events.",
      "# TYPE test_src_events_total counter",
      "test_src_events_total 1",
      "# HELP test_src_seconds Time spent.",
      "# TYPE test_src_seconds summary",
      'test_src_seconds_sum{thing="a"} 2.5',
      'test_src_seconds_count{thing="a"} 4',
      "# HELP test_src_up Up.",
      "# TYPE test_src_up gauge",
      'test_src_up{thing="a"} 1',
    }, got)
    -- counted afresh, not accumulated over renders
    assert.equal(2, sample(metrics.render(), "test_src_events_total"))
    assert.is_nil(sample(metrics.render{ builtin = false }, "test_src_events_total"))
    -- a misspelt option used to be ignored (and the built-in families rendered)
    assert.equal("sluice.metrics.render: unknown option 'builtins'", errmsg(metrics.render, { builtins = false }))
    assert.equal("sluice.metrics.render: option 'builtin' must be a boolean, got number",
      errmsg(metrics.render, { builtin = 0 }))
    assert.equal("sluice.metrics.gauge: 'test_src_up' is a built-in sluice metric",
      errmsg(metrics.gauge, "test_src_up", "x"))
    assert.equal("sluice.metrics.registry.add_source: families[1]: 'test_src_up' is already a metric",
      errmsg(registry.add_source, { { "gauge", "test_src_up", "x" } }, function() end))
    assert.is_true(registry.remove_source(src))
    assert.is_false(registry.remove_source(src))
    assert.is_nil(sample(metrics.render(), "test_src_events_total"))
    reg("gauge", "test_src_up", "Now a plain gauge.")
  end)

  it("renders the other sources when one fails", function()
    local bad = registry.add_source({ { "gauge", "test_src_bad", "Bad." } }, function(f)
      f.test_src_bad:set(7)
      error("broken source")
    end)
    local log = require "sluice.log"
    local level = log.level()
    finally(function()
      registry.remove_source(bad)
      log.level(level)
      log.output("-")
    end)
    assert.is_true(log.output("/dev/null"))
    log.level("warning")
    local text = metrics.render()
    assert.equal(7, sample(text, "test_src_bad"))
    assert.equal(0, sample(text, 'sluice_backfill_jobs{state="running"}'))
    local e = log.recent(1)[1]
    assert.same({ "warning", "metrics: a built-in source failed" }, { e.level, e.msg })
    assert.matches("broken source$", e.error)
  end)

  it("refuses bad families and summary totals on other types", function()
    assert.equal("sluice.metrics.registry.add_source: families[1]: type must be counter, gauge or summary, got histogram",
      errmsg(registry.add_source, { { "histogram", "test_src_h", "x" } }, function() end))
    assert.equal("sluice.metrics.registry.add_source: families[1]: bad metric name 'a-b'",
      errmsg(registry.add_source, { { "gauge", "a-b", "x" } }, function() end))
    assert.equal("sluice.metrics.registry.add_source: families[1]: 'sluice_tasks' is already a metric",
      errmsg(registry.add_source, { { "gauge", "sluice_tasks", "x" } }, function() end))
    assert.equal("sluice.metrics.registry.add_source: families[2]: 'test_src_twice' is already a metric",
      errmsg(registry.add_source, { { "gauge", "test_src_twice", "x" }, { "gauge", "test_src_twice", "x" } },
        function() end))
    assert.equal("sluice.metrics.registry.add_source: bad argument #2 'collect' (function expected, got nil)",
      errmsg(registry.add_source, {}))
    -- nothing was reserved by the refused ones
    reg("gauge", "test_src_twice", "Free.")
    local g = reg("gauge", "test_src_plain", "A gauge.")
    assert.equal("sluice.metrics.gauge.set_totals 'test_src_plain': only a summary has totals",
      errmsg(g.set_totals, g, 1, 1))
  end)
end)

describe("sluice.metrics built-in families", function()
  it("serves the exposition over sluice.server, with breaker, limiter and HTTP client families", function()
    local cb = breaker.new{ name = "metrics_spec_b" }
    local lim = limiter.new{ name = "metrics_spec_l", rate = 20 }
    lim:observe("/q", 200, { ["x-ratelimit-limit"] = "100", ["x-ratelimit-remaining"] = "42" }, 0.01)
    lim:wait()
    lim:wait()
    local permit = assert(cb:allow())
    cb:failure(permit)
    local srv = listen()
    local base = "http://127.0.0.1:" .. srv.port
    local host = "127.0.0.1:" .. srv.port
    assert.equal(200, assert(http.get(base .. "/hello")).status)
    assert.equal(404, assert(http.get(base .. "/nope")).status)
    local clock0 = os.clock()
    local res = assert(http.get(base .. "/metrics"))
    local clock1 = os.clock()
    assert.equal(200, res.status)
    assert.equal("text/plain; version=0.0.4; charset=utf-8", res.headers["content-type"])
    assert.equal(metrics.CONTENT_TYPE, res.headers["content-type"])
    local text = res.body
    -- every documented family has HELP and TYPE lines, whether or not it has samples
    for _, name in ipairs(metrics.builtin_names()) do
      assert.equal(1, #lines_of(text, "# TYPE " .. name .. " "), name)
      assert.equal(1, #lines_of(text, "# HELP " .. name .. " "), name)
    end
    assert.equal(1, sample(text, 'sluice_breaker_state{breaker="metrics_spec_b",state="closed"}'))
    assert.equal(0, sample(text, 'sluice_breaker_state{breaker="metrics_spec_b",state="open"}'))
    assert.equal(1, sample(text, 'sluice_breaker_failures_total{breaker="metrics_spec_b"}'))
    assert.equal(1, sample(text, 'sluice_breaker_consecutive_failures{breaker="metrics_spec_b"}'))
    assert.equal(20, sample(text, 'sluice_limiter_rate{limiter="metrics_spec_l"}'))
    assert.equal(42, sample(text, 'sluice_limiter_quota_remaining{limiter="metrics_spec_l",endpoint="/q"}'))
    assert.equal(2, sample(text, 'sluice_limiter_requests_total{limiter="metrics_spec_l"}'))
    assert.equal(lim:stats().total_wait_time, sample(text, 'sluice_limiter_wait_seconds_total{limiter="metrics_spec_l"}'))
    assert.equal(1, sample(text, 'sluice_http_requests_total{host="' .. host .. '",method="GET",code="200"}'))
    assert.equal(1, sample(text, 'sluice_http_requests_total{host="' .. host .. '",method="GET",code="404"}'))
    assert.equal(2, sample(text, 'sluice_http_request_duration_seconds_count{host="' .. host .. '"}'))
    assert.equal(2, sample(text, 'sluice_http_request_duration_seconds_bucket{host="' .. host .. '",le="+Inf"}'))
    -- the scrape itself is in flight while the page is made
    assert.equal(1, sample(text, "sluice_http_requests_in_flight"))
    assert.is_true(sample(text, 'sluice_tasks{state="running"}') >= 1)
    assert.is_true(sample(text, "sluice_tasks_created_total") >= 1)
    assert.is_true(sample(text, "sluice_process_resident_memory_bytes") > 1024 * 1024)
    -- the CPU time clock() gave around the scrape, less /proc's rounding
    -- down to whole ticks of user and of system time
    local cpu = sample(text, "sluice_process_cpu_seconds_total")
    assert.is_true(cpu >= clock0 - 0.03 and cpu <= clock1 + 0.01, cpu .. " vs clock() " .. clock0 .. ".." .. clock1)
    local started = sample(text, "sluice_process_start_time_seconds")
    assert.is_true(started <= sluice.time() + 1 and started > sluice.time() - 3600 * 24 * 365)
    assert.equal(procinfo.start_time(), started)
    assert.equal(1, sample(text, 'sluice_build_info{version="' .. sluice._VERSION .. '"}'))
    assert.equal(0, sample(text, 'sluice_backfill_jobs{state="running"}'))
  end)

  it("counts the CPU time the process spends", function()
    local function cpu() return sample(metrics.render(), "sluice_process_cpu_seconds_total") end
    local t0 = sluice.now()
    local m0 = cpu()
    local c0 = os.clock()
    -- burn 0.3 s of CPU as the C library's clock() counts it (30 s at most)
    local x = 0
    while os.clock() - c0 < 0.3 and sluice.now() - t0 < 30 do x = x + 1 end
    local c1 = os.clock()
    local m1 = cpu()
    local t1 = sluice.now()
    assert.is_true(x > 0 and c1 - c0 >= 0.3, "burned only " .. (c1 - c0) .. " s of CPU in 30 s")
    -- grew by what was burned, less /proc's rounding down to whole ticks,
    -- and by no more than the wall time it took (one thread burned it)
    local grew = m1 - m0
    assert.is_true(grew >= (c1 - c0) - 0.03, grew .. " for " .. (c1 - c0))
    assert.is_true(grew <= (t1 - t0) + 0.03, grew .. " in " .. (t1 - t0) .. " s")
  end)

  it("records transport failures with their kind as the code", function()
    local srv = listen()
    local port = srv.port
    srv:close()
    local res, _, kind = http.get("http://127.0.0.1:" .. port .. "/gone", { timeout = 5 })
    assert.is_nil(res)
    assert.equal("connect", kind)
    local c = metrics.get("sluice_http_requests_total")
    assert.equal(1, c:value("127.0.0.1:" .. port, "GET", "connect"))
    assert.is_nil(metrics.get("sluice_http_request_duration_seconds"):value("127.0.0.1:" .. port))
  end)

  it("flips the breaker state gauges after force_open and reset", function()
    local cb = breaker.new{ name = "metrics_spec_flip" }
    local function state(s)
      return sample(metrics.render(), 'sluice_breaker_state{breaker="metrics_spec_flip",state="' .. s .. '"}')
    end
    assert.same({ 1, 0, 0 }, { state("closed"), state("open"), state("half-open") })
    cb:force_open()
    assert.same({ 0, 1, 0 }, { state("closed"), state("open"), state("half-open") })
    assert.equal(1, sample(metrics.render(), 'sluice_breaker_opens_total{breaker="metrics_spec_flip"}'))
    cb:reset()
    assert.same({ 1, 0, 0 }, { state("closed"), state("open"), state("half-open") })
  end)

  it("reports the running app's collectors", function()
    local app = require "sluice.app"
    local collector = require "sluice.collector"
    local srv = listen()
    -- the collection tells this task when it is under way, then waits to be let go
    local me, inside, collecting, released = sluice.current(), false, nil, false
    local spec = collector.define{
      name = "metrics_spec_c", base_url = "http://127.0.0.1:" .. srv.port,
      retry = false, limiter = { rate = 100 },
      collect = function(self)
        assert(self:get("/hello"))
        inside, collecting = true, sluice.current()
        sluice.unpark(me)
        if not released then sluice.park(10) end
        sluice.sleep(0.2) -- the collection's own duration, measured below
        return nil
      end,
    }
    local inst = collector.new(spec, {}, {})
    local saved = app.current
    app.current = { collectors = { metrics_spec_c = inst }, order = { inst } }
    finally(function() app.current = saved end)
    local running = sluice.spawn(function() return inst:run_once() end)
    if not inside then sluice.park(10) end
    assert.is_true(inside)
    local text = metrics.render()
    assert.equal(1, sample(text, 'sluice_active_collections{collector="metrics_spec_c"}'))
    assert.equal(0, sample(text, 'sluice_collector_up{collector="metrics_spec_c"}')) -- not started
    released = true
    sluice.unpark(collecting)
    local done, ran, why = sluice.wait(running)
    assert.same({ true, true }, { done, ran }, tostring(why))
    text = metrics.render()
    assert.equal(0, sample(text, 'sluice_active_collections{collector="metrics_spec_c"}'))
    assert.equal(1, sample(text, 'sluice_collection_requests_total{collector="metrics_spec_c",status="success"}'))
    assert.equal(0, sample(text, 'sluice_collection_requests_total{collector="metrics_spec_c",status="error"}'))
    assert.equal(1, sample(text, 'sluice_collector_requests_total{collector="metrics_spec_c",status="success"}'))
    assert.equal(0, sample(text, 'sluice_records_processed_total{collector="metrics_spec_c"}'))
    assert.equal(1, sample(text, 'sluice_collection_duration_seconds_count{collector="metrics_spec_c"}'))
    local spent = sample(text, 'sluice_collection_duration_seconds_sum{collector="metrics_spec_c"}')
    assert.is_true(spent >= 0.15 and spent < 5, tostring(spent))
    assert.equal(1, sample(text, 'sluice_collector_health{collector="metrics_spec_c",status="healthy"}'))
    assert.equal(0, sample(text, 'sluice_collector_health{collector="metrics_spec_c",status="failed"}'))
    assert.is_number(sample(text, 'sluice_collector_last_success_timestamp_seconds{collector="metrics_spec_c"}'))
    inst.running = true -- as start() leaves it, without the timer
    assert.equal(1, sample(metrics.render(), 'sluice_collector_up{collector="metrics_spec_c"}'))
    inst.running = false
  end)

  it("passes promtool check metrics", function()
    if not io.open("/usr/bin/promtool", "r") then
      pending("promtool is not installed (Debian package prometheus): not checked")
      return
    end
    local c = reg("counter", "test_promtool_total", "Escapes: \\ \".", { labels = { "v" } })
    c:inc(1, 'a"b\\c\nd')
    reg("histogram", "test_promtool_seconds", "A histogram.", { labels = { "k" } }):observe(0.3, "x")
    breaker.new{ name = "metrics_spec_promtool" }:force_open()
    local srv = listen()
    assert(http.get("http://127.0.0.1:" .. srv.port .. "/hello"))
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(metrics.render())
    f:close()
    local p = assert(io.popen("/usr/bin/promtool check metrics < " .. path .. " 2>&1; echo \"rc=$?\""))
    local out = p:read("*a")
    p:close()
    os.remove(path)
    assert.equal("rc=0\n", out)
  end)
end)
