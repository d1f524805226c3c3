-- nginx.lua -- the limiter against nginx limit_req (50 r/s, burst 5, nodelay).
--   sluice run tests/bench/limiter/nginx.lua --lua-path tests/lua [-- SECONDS WARMUP]
-- Prints achieved requests/s as a fraction of 50 and the fraction answered
-- 429, without quota headers and with "Retry-After: 1" on the 429s.
local sluice = require "sluice"
local http = require "sluice.http"
local limiter = require "sluice.limiter"
local secs_arg, warm_arg = ...
local SECS, WARM = tonumber(secs_arg) or 60, tonumber(warm_arg) or 10

local nginx = require("support.nginx").start({
  http = "limit_req_zone $binary_remote_addr zone=z:1m rate=50r/s;",
  files = { ["ok.txt"] = "ok" },
  locations = [[
    location = /plain { limit_req zone=z burst=5 nodelay; limit_req_status 429; try_files /ok.txt =404; }
    location = /retry_after { limit_req zone=z burst=5 nodelay; limit_req_status 429;
      error_page 429 = @limited; try_files /ok.txt =404; }
    location @limited { add_header Retry-After 1 always; return 429 "slow down"; }
  ]],
})

local function run(path)
  local lim = limiter.new({ name = "bench" .. path, rate = 10, max_rate = 1000 })
  local url = nginx:url(path)
  local t0 = sluice.now()
  local ok, rejected = 0, 0
  local workers = {}
  for i = 1, 4 do
    workers[i] = sluice.spawn(function()
      while sluice.now() - t0 < WARM + SECS do
        lim:wait(path)
        local res = http.get(url)
        if res then
          lim:observe(path, res.status, res.headers, res.timings.total)
          if sluice.now() - t0 >= WARM then
            if res.status == 200 then ok = ok + 1 elseif res.status == 429 then rejected = rejected + 1 end
          end
        end
      end
    end)
  end
  for i = 1, 4 do sluice.wait(workers[i]) end
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
