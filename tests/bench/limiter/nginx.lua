-- nginx.lua -- the limiter against nginx limit_req (50 r/s, burst 5, nodelay).
--   sluice run tests/bench/limiter/nginx.lua --lua-path tests/lua [-- SECONDS WARMUP]
-- Prints achieved requests/s as a fraction of 50 and the fraction answered
-- 429, without quota headers and with "Retry-After: 1" on the 429s.
local sluice = require "sluice"
local limiter = require "sluice.limiter"
local limit_req = require "support.limit_req"
local secs_arg, warm_arg = ...
local SECS, WARM = tonumber(secs_arg) or 60, tonumber(warm_arg) or 10

local nginx = limit_req.start()

local function run(path)
  local lim = limiter.new({ name = "bench" .. path, rate = 10, max_rate = 1000 })
  local n = limit_req.drive(lim, nginx:url(path), path, { warm = WARM, secs = SECS })
  local ok, rejected = n.ok, n.rejected
  print(string.format("%-13s %.1f req/s = %.3f of 50; %.2f%% answered 429 (%d of %d)",
    path, ok / SECS, ok / SECS / 50, 100 * rejected / math.max(1, ok + rejected), rejected, ok + rejected))
end

print(string.format("nginx limit_req 50 r/s burst 5 nodelay; %d s measured after %d s warm-up", SECS, WARM))
run("/plain")
run("/retry_after")
nginx:stop()

-- ns per wait() that does not block
local lim = limiter.new({ name = "bench_fast", rate = 1e9, max_rate = 1e9, burst = 1e9 })
local n = 2000000
for _ = 1, 10000 do lim:wait("/a") end
local t1 = sluice.now()
for _ = 1, n do lim:wait("/a") end
local dt = sluice.now() - t1
print(string.format("non-blocking lim:wait(): %.0f ns", dt / n * 1e9))
