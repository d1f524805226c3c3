--- sluice.metrics: Prometheus metrics, in the text exposition format 0.0.4.
--
--   local metrics = require "sluice.metrics"
--   local rows = metrics.counter("binance_rows_total", "Rows stored.", { labels = { "symbol" } })
--   rows:inc(12, "BTCUSDT")                  -- or rows:inc(12, { symbol = "BTCUSDT" })
--   local lag = metrics.gauge("binance_lag_seconds", "Seconds behind the exchange.")
--   lag:set(3.5)                             -- also lag:inc(n), lag:dec(n)
--   local h = metrics.histogram("binance_page_seconds", "Time per page.",
--                               { labels = { "symbol" }, buckets = { 0.1, 1, 10 } })
--   h:observe(0.42, "BTCUSDT")
--   srv:route("GET", "/metrics", metrics.handler)   -- or metrics.render(), metrics.CONTENT_TYPE
--
-- Names match [a-zA-Z_:][a-zA-Z0-9_:]*; a counter's name ends in _total and
-- no other metric's does (nor in _bucket, _count or _sum); label names match
-- [a-zA-Z_][a-zA-Z0-9_]* and do not start with "__" ("le" is reserved for
-- histograms). Registering a name again with the same type and labels
-- returns the metric already registered; anything else raises. Labels are
-- given as values in the declared order (m:inc(1, "a", "b"), or as a list)
-- or as a table by name (m:inc(1, {x = "a", y = "b"})). m:value(labels)
-- reads a series (a histogram gives {count, sum, buckets = {[le] = n}}),
-- m:remove(labels) drops one, m:reset() drops them all, m:render() gives
-- its text alone.
--
-- render() also reports sluice's own state, read when it is called: the
-- built-in families (builtin_names()) of the running app's collectors,
-- breakers, limiters, backfill jobs, tasks, the log and the process, and
-- the HTTP client's requests, which sluice.metrics.builtin records as they
-- complete from the moment this module is loaded (it adds an observer to
-- sluice.http; sluice.main loads it before a `sluice run` starts).
--
-- This module is the entry point; the parts are sluice.metrics.registry
-- (the registry and the exposition format; sources of computed families
-- are added there) and sluice.metrics.builtin (sluice's own sources).
-- Nothing here yields.
local registry = require "sluice.metrics.registry"
local builtin = require "sluice.metrics.builtin"

builtin.install()

local _M = {
  CONTENT_TYPE = registry.CONTENT_TYPE,
  DEFAULT_BUCKETS = registry.DEFAULT_BUCKETS,
  -- counter(name, help [, {labels = {...}}]) -> counter (inc)
  counter = registry.counter,
  -- gauge(name, help [, {labels = {...}}]) -> gauge (set, inc, dec)
  gauge = registry.gauge,
  -- histogram(name, help [, {labels = {...}, buckets = {...}}]) -> histogram
  -- (observe); buckets default to DEFAULT_BUCKETS, +Inf is implied.
  histogram = registry.histogram,
  -- get(name) -> the registered metric of that name, or nil
  get = registry.get,
  -- unregister(name) -> whether a metric of that name was registered
  unregister = registry.unregister,
  -- render([opts]) -> the exposition text of every family, sorted by name;
  -- opts.builtin = false leaves out the built-in families read from live
  -- state (the HTTP client's, which are recorded, stay). Options are
  -- checked by sluice.options, as counter's, gauge's and histogram's are.
  render = registry.render,
  -- handler(req) -> 200, render(), {content-type = CONTENT_TYPE}: a
  -- sluice.server route handler
  handler = registry.handler,
  -- format_value(v) -> the exposition's spelling of a number
  format_value = registry.format_value,
  -- escape_label(s) -> s with backslash, double quote and newline escaped
  escape_label = registry.escape_label,
  -- builtin_names() -> the names of the built-in families render() computes
  -- (besides sluice_http_requests_total and sluice_http_request_duration_seconds)
  builtin_names = builtin.names,
  -- host_of(url) -> the URL's host[:port], lower case, without user info
  host_of = builtin.host_of,
  -- http_request(url, method, code, seconds): records one request of the
  -- HTTP client (what the observer on sluice.http calls)
  http_request = builtin.http_request,
}

return _M
