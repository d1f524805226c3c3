--- support.limit_req: the limiter against a real limiter, nginx limit_req at
-- 50 r/s (burst 5, nodelay, 429 when over), for limiter_nginx_spec and
-- tests/bench/limiter/nginx.lua.
--
--   local lr = require "support.limit_req"
--   local nginx = lr.start()   -- /plain: no quota headers; /retry_after: "Retry-After: 1" on the 429s
--   local n = lr.drive(lim, nginx:url("/plain"), "/plain", { warm = 4, secs = 5 })
--   -- n.ok, n.rejected (429), n.other (other statuses), n.failed (no response)
--   nginx:stop()
local sluice = require "sluice"
local http = require "sluice.http"

local _M = { LIMIT = 50 }

--- start() -> a support.nginx instance with /plain and /retry_after behind
-- one limit_req zone.
function _M.start()
  return require("support.nginx").start({
    http = "limit_req_zone $binary_remote_addr zone=z:1m rate=50r/s;",
    files = { ["ok.txt"] = "ok" },
    locations = [[
      location = /plain { limit_req zone=z burst=5 nodelay; limit_req_status 429; try_files /ok.txt =404; }
      location = /retry_after { limit_req zone=z burst=5 nodelay; limit_req_status 429;
        error_page 429 = @limited; try_files /ok.txt =404; }
      location @limited { add_header Retry-After 1 always; return 429 "slow down"; }
    ]],
  })
end

--- drive(lim, url, key, {warm = s, secs = s, workers = 4}) -> counts
-- `workers` tasks send GET url through lim (wait and observe under key) for
-- warm + secs seconds. Counts: ok, rejected (429) and other (statuses) of
-- the responses after the warm-up, in which the limiter finds the limit;
-- failed, the requests without a response, over the whole run.
function _M.drive(lim, url, key, opts)
  local t0 = sluice.now()
  local n = { ok = 0, rejected = 0, other = 0, failed = 0 }
  local workers = {}
  for i = 1, opts.workers or 4 do
    workers[i] = sluice.spawn(function()
      while sluice.now() - t0 < opts.warm + opts.secs do
        lim:wait(key)
        local res = http.get(url)
        if not res then
          n.failed = n.failed + 1
        else
          lim:observe(key, res.status, res.headers, res.timings.total)
          if sluice.now() - t0 >= opts.warm then
            local k = res.status == 200 and "ok" or res.status == 429 and "rejected" or "other"
            n[k] = n[k] + 1
          end
        end
      end
    end)
  end
  for i = 1, #workers do assert(sluice.wait(workers[i])) end
  return n
end

return _M
