-- The limiter against a real limiter: nginx limit_req at 50 r/s (burst 5,
-- nodelay, 429 when over), no quota headers. After a warm-up, requests
-- through the limiter must run below the limit with few rejections, and not
-- sit at a fraction of it. (Figures over longer runs: tests/bench/limiter.)
local sluice = require "sluice"
local http = require "sluice.http"
local limiter = require "sluice.limiter"

describe("sluice.limiter against nginx limit_req", function()
  local nginx

  setup(function()
    nginx = require("support.nginx").start({
      http = "limit_req_zone $binary_remote_addr zone=z:1m rate=50r/s;",
      files = { ["ok.txt"] = "ok" },
      locations = [[
        location = /api { limit_req zone=z burst=5 nodelay; limit_req_status 429; try_files /ok.txt =404; }
      ]],
    })
  end)

  teardown(function() if nginx then nginx:stop() end end)

  it("converges just under the limit from 429s alone", function()
    local lim = limiter.new({ name = "nginx_converge", rate = 10, max_rate = 1000 })
    local url = nginx:url("/api")
    local WARM, SECS = 4, 5
    local t0 = sluice.now()
    local ok, rejected = 0, 0
    local workers = {}
    for i = 1, 4 do
      workers[i] = sluice.spawn(function()
        while sluice.now() - t0 < WARM + SECS do
          lim:wait("/api")
          local res = assert(http.get(url))
          lim:observe("/api", res.status, res.headers, res.timings.total)
          local measuring = sluice.now() - t0 >= WARM -- the warm-up finds the limit
          if measuring and res.status == 200 then
            ok = ok + 1
          elseif measuring then
            rejected = rejected + 1
          end
        end
      end)
    end
    for i = 1, 4 do assert(sluice.wait(workers[i])) end
    local rate = ok / SECS
    assert.is_true(rate <= 50 * 1.1, "rate " .. rate)
    assert.is_true(rate >= 50 * 0.5, "rate " .. rate .. " is stuck far below the limit")
    assert.is_true(rejected / (ok + rejected) < 0.05,
      string.format("%d of %d rejected", rejected, ok + rejected))
  end)
end)
