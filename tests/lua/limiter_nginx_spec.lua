-- The limiter against a real limiter: nginx limit_req at 50 r/s (burst 5,
-- nodelay, 429 when over), no quota headers. After a warm-up, requests
-- through the limiter must run below the limit with few rejections, and not
-- sit at a fraction of it. (Figures over longer runs: tests/bench/limiter.)
local sluice = require "sluice"
local http = require "sluice.http"
local limiter = require "sluice.limiter"
local limit_req = require "support.limit_req"

local LIMIT = limit_req.LIMIT

-- 8 tasks send through lim until the last 10 whole seconds ran at >= 95%
-- of the limit with < 1% 429s, or until `bound` seconds have passed.
-- Returns the second that condition held at (nil: never), and a per-second
-- account for the failure message.
local function reach(lim, url, bound)
  local t0 = sluice.now()
  local ok, rej = {}, {}
  local reached
  local checked = 10 -- next window end to check: seconds [checked - 10, checked)
  local function check(upto)
    while not reached and checked <= upto do
      local a, b = 0, 0
      for s = checked - 10, checked - 1 do
        a, b = a + (ok[s] or 0), b + (rej[s] or 0)
      end
      if a >= 0.95 * LIMIT * 10 and b * 100 < a + b then reached = checked end
      checked = checked + 1
    end
  end
  local workers = {}
  for i = 1, 8 do
    workers[i] = sluice.spawn(function()
      while not reached and sluice.now() - t0 < bound do
        assert(lim:wait("/plain"))
        local res = assert(http.get(url))
        lim:observe("/plain", res.status, res.headers, res.timings.total)
        local s = math.floor(sluice.now() - t0)
        if res.status == 200 then ok[s] = (ok[s] or 0) + 1 else rej[s] = (rej[s] or 0) + 1 end
        check(s) -- a response in second s: every earlier second is complete
      end
    end)
  end
  for i = 1, 8 do assert(sluice.wait(workers[i])) end
  local account = {}
  for s = 0, math.floor(sluice.now() - t0) do
    account[#account + 1] = string.format("%d:%d/%d", s, ok[s] or 0, rej[s] or 0)
  end
  return reached, table.concat(account, " ")
end

describe("sluice.limiter against nginx limit_req", function()
  local nginx

  setup(function() nginx = limit_req.start() end)

  teardown(function() if nginx then nginx:stop() end end)

  it("converges just under the limit from 429s alone", function()
    local lim = limiter.new({ name = "nginx_converge", rate = 10, max_rate = 1000 })
    local SECS = 5
    local n = limit_req.drive(lim, nginx:url("/plain"), "/plain", { warm = 4, secs = SECS })
    assert.equal(0, n.failed) -- every request answered
    local ok, rejected = n.ok, n.rejected + n.other
    local rate = ok / SECS
    assert.is_true(rate <= 50 * 1.1, "rate " .. rate)
    assert.is_true(rate >= 50 * 0.5, "rate " .. rate .. " is stuck far below the limit")
    assert.is_true(rejected / (ok + rejected) < 0.05,
      string.format("%d of %d rejected", rejected, ok + rejected))
  end)

  -- Started at 4x the limit, the first 429s come within the first 0.1 s;
  -- the ceiling learned from them used to be what was sent over a whole
  -- second (~10 r/s), and the limiter then held ~9 r/s for good.
  it("reaches 95% of the limit within 60 s when started at 4x it", function()
    local lim = limiter.new({ name = "nginx_from_4x", rate = 4 * LIMIT, max_rate = 8 * LIMIT,
      min_rate = 1 })
    local reached, account = reach(lim, nginx:url("/plain"), 60)
    assert.is_true(reached ~= nil, "never at 95% with < 1% 429s (second:ok/429) " .. account)
  end)

  it("reaches 95% of the limit within 60 s when started at 1/5 of it", function()
    local lim = limiter.new({ name = "nginx_from_fifth", rate = LIMIT / 5, max_rate = 8 * LIMIT,
      min_rate = 1 })
    local reached, account = reach(lim, nginx:url("/plain"), 60)
    assert.is_true(reached ~= nil, "never at 95% with < 1% 429s (second:ok/429) " .. account)
  end)
end)
