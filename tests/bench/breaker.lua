-- breaker.lua -- ns per allow() + success(permit) pair from Lua.
--   sluice run tests/bench/breaker.lua [-- N]
local sluice = require "sluice"
local breaker = require "sluice.breaker"
local n = tonumber((select(1, ...))) or 10000000
local cb = breaker.new({ name = "bench" })
for _ = 1, 100000 do cb:success(cb:allow()) end -- warm up the JIT
local t0 = sluice.now()
for _ = 1, n do
  local p = cb:allow()
  cb:success(p)
end
local dt = sluice.now() - t0
print(string.format("lua: %d allow()+success() pairs in %.3f s = %.1f ns/pair", n, dt, dt / n * 1e9))
print(string.format("@figure breaker.lua_pair %.6g ns", dt / n * 1e9))
