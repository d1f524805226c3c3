--- sluice.collector.request: a collector's request pipeline.
--
-- run(c, opts, tally) is what self:get/post/request do: breaker check ->
-- limiter wait -> breaker permit -> HTTP -> classify -> limiter observe ->
-- breaker record -> retry. An open breaker refuses before the limiter is
-- waited in (no run sits out a ban in the limiter). Classification: 2xx
-- success; 429 throttled (the limiter backs off, the breaker counts a
-- failure, retried after Retry-After); 418 banned (the breaker stays open
-- until the ban ends: the limiter's ban end, else Retry-After, else the
-- limiter option ban_time, 120 s by default; not retried); 5xx,
-- timeout, connect and other transport errors are failures, retried;
-- other 4xx are failures, not retried. A collector's classify(self, res)
-- sees every response and may return a verdict ("success", "failure",
-- "ignored", "throttled", "banned") and a message, e.g. for an HTTP 200
-- carrying an error object, or just a message (nil, "Binance error -1121:
-- Invalid symbol.") that explains the default verdict. A failure it
-- declares on a 2xx is not retried unless it returns a third value
-- true (false: a failure on a 5xx is not retried); "throttled" on any status
-- (Bybit retCode 10006, JSON-RPC -32005 in a 200) backs the limiter off as
-- a 429 does and is retried. A request's own opts.classify (a protocol's,
-- e.g. sluice.jsonrpc's) is called the same way first, then the
-- collector's: the collector has the last word on its provider's replies.
-- Returns data (decoded JSON when the response is JSON, the body otherwise)
-- and the response, or nil, err, kind.
--
-- opts.target = name: a collector with targets (sluice.collector) sends
-- each request through one target's breaker and limiter, named by it
-- (required there, refused elsewhere); everything else is as above.
--
-- opts.cache = seconds: a "success" is kept in c.cache (the process'
-- response cache, sluice.collector.cache) and answers the same request
-- (method, full URL, every header sent, body) from memory while younger
-- than seconds, with no limiter token, breaker permit or HTTP request;
-- identical requests in flight at once make one request.
--
-- It reads the instance c (base_url, target_names_, config.headers,
-- config.auth, config.timeout, config.max_body, config.endpoint, spec.classify, and its limiter, breaker and
-- retry policy, which it drives) and writes nothing on it: what the
-- collector counts, it is told through tally(c, event [, seconds]):
--   "refused"   the breaker refused a request (no request was sent)
--   "sent"      a request is about to be sent
--   "answered"  a request ended (seconds: its latency), answer or not
--   "succeeded" / "failed"   an attempt's verdict
-- It owns no state. run() yields (limiter waits, HTTP, retry backoff):
-- call it in a task.
local sluice = require "sluice"
local http = require "sluice.http"
local secret = require "sluice.collector.secret"
local options = require "sluice.options"
local json = require "sluice.json"
local headers_mod = require "sluice.headers"
local cache = require "sluice.collector.cache"

local _M = {}

local reveal = secret.reveal
local byte = string.byte
local SLASH = byte("/")

local merge = options.merge

local function default_verdict(res)
  if not res then
    return "failure", true
  end
  local s = res.status
  if s >= 200 and s < 300 then return "success" end
  if s == 429 then return "throttled", true end
  if s == 418 then return "banned", false end
  if s >= 500 then return "failure", true end
  return "failure", false
end

-- A classify function sees every response: it may change the verdict (a
-- 200 carrying an error), or only explain it (the API's error message), and
-- say whether a failure is retried (a third value, true or false).
local function classify(fn, c, res, verdict, retryable, message)
  local v, m, again = fn(c, res)
  if m then message = m end
  if v and v ~= verdict then
    verdict = v
    retryable = v == "failure" and res.status >= 500 or v == "throttled"
  end
  if again ~= nil and verdict == "failure" then retryable = again == true end
  return verdict, retryable, message
end

local function retry_after_of(res)
  local v = res and res.headers["retry-after"]
  return v and tonumber(v) or nil
end

-- How long a "banned" verdict without Retry-After keeps the breaker open:
-- the collector's limiter option ban_time (the limiter's own length of a
-- 418 ban), else 120 s.
local function ban_time(c)
  local l = c.config.limiter
  return type(l) == "table" and type(l.ban_time) == "number" and l.ban_time or 120
end

-- The URL of a request's path, and whether it is the base URL with the
-- path appended.
local function url_for(c, path)
  if path:find("^https?://") then return path, false end
  return (c.base_url or "") .. path, c.base_url ~= nil
end

-- The origins of base URLs, parsed once: {scheme, host, port}, or false
-- when the URL has none. Base URLs are few (one per collector
-- configuration); the table is bounded anyway.
local base_origins, n_base_origins = {}, 0

local function base_origin(base)
  local o = base_origins[base]
  if o == nil then
    local s0, h0, p0 = http.origin(base)
    o = s0 ~= nil and { s0, h0, p0 } or false
    if n_base_origins >= 4096 then base_origins, n_base_origins = {}, 0 end
    base_origins[base], n_base_origins = o, n_base_origins + 1
  end
  return o
end

-- Whether url is of base_url's origin: auth and the configured headers are
-- for that origin only. Without a base_url every URL is the collector's.
-- A path starting with one "/" appended to the base URL (url_for says
-- so: appended) stays on its origin: the authority ended before that "/"
-- (or ends at it).
local function own_origin(c, url, path, appended)
  local base = c.base_url
  if not base then return true end
  local o = base_origin(base)
  if not o then return false end
  if appended and byte(path, 1) == SLASH and byte(path, 2) ~= SLASH then return true end
  local s1, h1, p1 = http.origin(url)
  return o[1] == s1 and o[2] == h1 and o[3] == p1
end

-- What a success returns: the decoded JSON when the response says JSON,
-- the body otherwise; nil, err when the JSON does not decode.
local function decode(res)
  local ctype = res.headers["content-type"] or ""
  if ctype:find("json", 1, true) then return res:json() end
  return res.body
end

-- A response of the cache's (an entry or a flight's answer), as a new
-- response object of its own: its data decoded from the kept body, so a
-- caller changing it changes nothing the next hit sees.
local function from_cache(a)
  local plain, all = {}, {}
  for name, value in pairs(a.headers) do
    plain[name] = value
    all[name] = { value }
  end
  local res = setmetatable({ status = a.status, headers = headers_mod.new(plain),
    headers_all = headers_mod.new(all), body = a.body, url = a.url, cached = true,
    age = a.stored_at and sluice.now() - a.stored_at or 0,
    timings = { dns = 0, connect = 0, tls = 0, ttfb = 0, total = 0, redirect = 0 } }, a.meta)
  local data, err = decode(res)
  if data == nil then return nil, err, "protocol", res end
  return data, res
end

-- opts.cache: the request through the process' response cache
-- (sluice.collector.cache). The key is the method, the full URL with its
-- query (auth's included), every header sent (auth's included) and the
-- body; only a "success" is kept; a hit sends nothing and takes no limiter
-- token nor breaker permit.
local function cached(c, opts, url, query, headers, send)
  local ttl = opts.cache
  if type(ttl) ~= "number" or not (ttl > 0) or ttl == math.huge then
    error("collector:request: option 'cache' must be seconds (a finite number > 0), got "
      .. options.value(ttl), 0)
  end
  local full = url
  if query then
    local q = http.encode_query(query)
    if q ~= "" then full = full .. (full:find("?", 1, true) and "&" or "?") .. q end
  end
  local body = opts.body
  if body == nil and opts.json ~= nil then body = json.encode(opts.json) end
  local key = cache.key(opts.method or "GET", full, headers, body)
  local mine -- what this task fetched, when it led
  local ok, a, b, k, r = c.cache:fetch(key, opts.cache, function()
    local out, err, kind, res = send()
    if not out then return false, nil, err, kind, res end
    mine = out
    if out.verdict ~= "success" then return nil end -- not kept, not shared
    local plain = {}
    for name, value in pairs(out.res.headers) do plain[name] = value end
    return true, { status = out.res.status, headers = plain, body = out.res.body,
      url = out.res.url, meta = getmetatable(out.res) }
  end)
  if mine then return mine.data, mine.res end
  if ok then return from_cache(a) end
  return a, b, k, r
end

-- One attempt of request r (the state run() made: c, opts, tally, and
-- the endpoint, url, query, headers, breaker cb and limiter lim it
-- resolved); what retry:run calls: a module function with r as its
-- argument, not closures made per request. Returns {data, res, verdict}
-- | nil, err, hint (hint.kind, hint.res: the failure's); r.hint is the
-- last attempt's hint.
local function attempt(_, r)
  local c, opts, tally, cb, lim, endpoint = r.c, r.opts, r.tally, r.cb, r.lim, r.endpoint
  -- an open breaker refuses before the limiter is waited in: a run
  -- during a ban is skipped at once instead of waiting out max_wait. A
  -- breaker due for its half-open probe hands out a trial permit here,
  -- which is given back: the trial is taken after the wait, as below,
  -- so no trial is held while the limiter paces it.
  if cb and lim and cb:state() == "open" then
    local early, why = cb:allow()
    if not early then
      tally(c, "refused")
      r.hint = { retryable = false, kind = "circuit_open" }
      return nil, "circuit breaker " .. cb:name() .. " is " .. why, r.hint
    end
    cb:release(early)
  end
  if lim then
    local waited, werr = lim:wait(endpoint, opts.cost or 1,
      opts.pools and { pools = opts.pools } or nil)
    if not waited then
      r.hint = { retryable = false, kind = "limited" }
      return nil, "rate limiter: " .. tostring(werr), r.hint
    end
  end
  local permit
  if cb then
    local why
    permit, why = cb:allow()
    if not permit then
      tally(c, "refused")
      r.hint = { retryable = false, kind = "circuit_open" }
      return nil, "circuit breaker " .. cb:name() .. " is " .. why, r.hint
    end
  end
  tally(c, "sent")
  local t0 = sluice.now()
  local res, err, kind = http.request({
    method = opts.method or "GET", url = r.url, query = r.query,
    headers = r.headers, body = opts.body, json = opts.json,
    timeout = opts.timeout or c.config.timeout or 30, redirects = opts.redirects,
    max_body = opts.max_body or c.config.max_body,
  })
  local latency = sluice.now() - t0
  tally(c, "answered", latency)
  local verdict, retryable = default_verdict(res)
  -- the same answer again: not retried; an answer over the caller's
  -- max_body is no failure of the server's (the breaker counts nothing)
  if kind == "redirect" or kind == "too_large" then retryable = false end
  local message = err
  if res then
    -- the request's classify, then the collector's (the last word)
    if opts.classify then
      verdict, retryable, message = classify(opts.classify, c, res, verdict, retryable, message)
    end
    if c.spec.classify then
      verdict, retryable, message = classify(c.spec.classify, c, res, verdict, retryable, message)
    end
  end
  local observed
  if lim and res then
    -- a throttled verdict (an API's "too many requests" code in a 200)
    -- backs the limiter off exactly as a 429 would
    -- the pools the request was charged in: a weight header speaks for
    -- those only (one API's quota among several, Binance spot/futures)
    observed = lim:observe(endpoint, res.status, res.headers, latency, nil,
      verdict == "throttled" and "throttled" or nil, opts.pools)
  end
  if cb then
    if verdict == "success" then
      cb:success(permit, latency)
    elseif verdict == "ignored" or kind == "too_large" then
      cb:release(permit)
    elseif verdict == "banned" then
      cb:failure(permit, latency)
      -- the limiter's ban end (a 418), else Retry-After, else the
      -- limiter's ban_time (an adapter's limiter defaults say how long
      -- its exchange bans: Bybit's 403 lasts 10 minutes)
      local until_ = type(observed) == "table" and observed.ban_until
        or (sluice.time() + (retry_after_of(res) or ban_time(c)))
      cb:open_until(until_)
    else
      cb:failure(permit, latency)
    end
  end
  if verdict == "success" or verdict == "ignored" then
    tally(c, "succeeded")
    local data, jerr = decode(res)
    if data == nil then
      r.hint = { retryable = false, kind = "protocol" }
      return nil, jerr, r.hint
    end
    r.hint = nil
    return { data = data, res = res, verdict = verdict }
  end
  tally(c, "failed")
  if not message then
    message = res and ("HTTP " .. res.status) or "request failed"
  end
  r.hint = { retryable = retryable, retry_after = retry_after_of(res), kind = kind or verdict, res = res }
  return nil, message, r.hint
end

-- The pipeline with its retries: out {data, res, verdict} | nil, err,
-- kind, res.
local function send(r)
  local c = r.c
  local out, err
  if c.retry then
    out, err = c.retry:run(attempt, r)
  else
    out, err = attempt(1, r)
  end
  if not out then
    local hint = r.hint
    return nil, err, hint and hint.kind, hint and hint.res
  end
  return out
end

--- run(c, opts, tally) -> data, res | nil, err, kind, res
-- opts: {method, path, query, headers, body | json, endpoint, cost, pools,
-- timeout, redirects, max_body, classify, target}, checked by the caller
-- (classify: here). max_body: the bound on the answer's size in bytes
-- (default the collector's max_body option, else http.request's 64 MiB); an
-- answer over it fails with kind "too_large", not retried, and the breaker
-- counts nothing for it (the server answered; the bound is the collector's). A
-- path may be an absolute URL; on another origin than base_url's it gets neither auth nor the
-- configured headers (only opts.headers). Redirects follow http.request's
-- rules (default: same origin only, 5 hops).
function _M.run(c, opts, tally)
  if opts.classify ~= nil and type(opts.classify) ~= "function" then
    error("collector:request: option 'classify' must be a function, got " .. type(opts.classify), 2)
  end
  local path = opts.path
  -- the limiter's endpoint: the request's, the spec's endpoint(self, opts), or the path
  local endpoint = opts.endpoint or (c.config.endpoint and c.config.endpoint(c, opts))
    or (path:find("?", 1, true) and path:match("^[^?]*") or path)
  local query = opts.query
  local url, appended = url_for(c, path)
  local own = own_origin(c, url, path, appended)
  local config_headers = own and c.config.headers or nil
  -- no table when there are no headers to send (http.request takes none)
  local headers = (config_headers or opts.headers) and merge(config_headers, opts.headers) or nil
  local auth = own and c.config.auth
  if auth then
    if auth.bearer then
      headers = headers or {}
      headers["Authorization"] = "Bearer " .. tostring(reveal(auth.bearer))
    elseif auth.header then
      headers = headers or {}
      headers[auth.header] = tostring(reveal(auth.value))
    elseif auth.query then
      query = merge(query, { [auth.query] = tostring(reveal(auth.value)) })
    end
  end
  -- the breaker and limiter: the request's target's (a collector with
  -- targets, sluice.collector), else the collector's own
  local cb, lim = c.breaker, c.limiter
  if opts.target ~= nil or c.target_names_ then
    if type(opts.target) ~= "string" then
      error("collector:request: collector '" .. c.name .. "' has targets: option 'target' names one, got "
        .. options.value(opts.target), 2)
    end
    cb, lim = c:target(opts.target)
  end
  local r = { c = c, opts = opts, tally = tally, endpoint = endpoint, url = url, query = query,
    headers = headers, cb = cb, lim = lim }
  if opts.cache then
    return cached(c, opts, url, query, headers or {}, function() return send(r) end)
  end
  local out, err, kind, res = send(r)
  if not out then return nil, err, kind, res end
  return out.data, out.res
end

return _M
