--- sluice.procinfo: this process's resource use, read from Linux's /proc.
--
--   local procinfo = require "sluice.procinfo"
--   local rss, vsz = procinfo.memory()     -- resident and virtual size, bytes
--   local cpu = procinfo.cpu_seconds()      -- user + system CPU time, seconds
--   local t0 = procinfo.start_time()        -- when the process started, epoch seconds
--
-- The one reader of /proc for the metrics and the admin API. It owns no
-- state but the start time, read once. Nothing here yields; each call reads
-- one small file synchronously. A call whose file cannot be read or parsed
-- (no /proc mounted) returns nil, err.
--
-- Units, and why no sysconf() is needed:
--   memory   /proc/self/status gives VmRSS and VmSize in kB whatever the
--            page size, so nothing depends on it (/proc/self/statm counts
--            pages: 4 KiB on x86-64, but 16 or 64 KiB on some arm64 kernels).
--   CPU and  /proc/self/stat and /proc/stat count clock ticks of USER_HZ, a
--   start    constant of the kernel's user ABI, independent of the kernel's
--            internal HZ: 100 on every architecture Debian ships (x86-64 and
--            arm64 included); what sysconf(_SC_CLK_TCK) returns there.
local _M = {}

--- USER_HZ: the clock ticks per second of /proc's times (see above).
local USER_HZ = 100
_M.USER_HZ = USER_HZ

local function read_file(path)
  local f, err = io.open(path, "r")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  if not s then return nil, path .. ": nothing read" end
  return s
end

-- The fields of /proc/self/stat after the command name, which is in
-- parentheses and may itself hold ") ": the last ") " ends it. fields[1]
-- is the stat(5) field 3 (state), so field n is fields[n - 2].
local function stat_fields()
  local stat, err = read_file("/proc/self/stat")
  if not stat then return nil, err end
  local rest = stat:match(".*%) (.*)$")
  if not rest then return nil, "/proc/self/stat: unexpected format" end
  local fields = {}
  for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
  return fields
end

--- memory() -> resident bytes, virtual bytes (VmRSS and VmSize of
-- /proc/self/status) | nil, err
function _M.memory()
  local status, err = read_file("/proc/self/status")
  if not status then return nil, err end
  local rss = tonumber(status:match("VmRSS:%s*(%d+) kB"))
  local vsz = tonumber(status:match("VmSize:%s*(%d+) kB"))
  if not rss or not vsz then return nil, "/proc/self/status: no VmRSS or VmSize" end
  return rss * 1024, vsz * 1024
end

--- cpu_seconds() -> user + system CPU time of the whole process (every
-- thread), in seconds, to 1 / USER_HZ | nil, err
function _M.cpu_seconds()
  local fields, err = stat_fields()
  if not fields then return nil, err end
  local utime, stime = tonumber(fields[12]), tonumber(fields[13]) -- fields 14, 15
  if not utime or not stime then return nil, "/proc/self/stat: no utime or stime" end
  return (utime + stime) / USER_HZ
end

local start_time

--- start_time() -> when the process started, in epoch seconds (the boot
-- time of /proc/stat plus the start of /proc/self/stat; to the second at
-- best, as btime is) | nil, err
function _M.start_time()
  if start_time then return start_time end
  local fields, err = stat_fields()
  if not fields then return nil, err end
  local procstat, err2 = read_file("/proc/stat")
  if not procstat then return nil, err2 end
  local btime = tonumber(procstat:match("\nbtime (%d+)"))
  local ticks = tonumber(fields[20]) -- field 22, starttime
  if not btime or not ticks then return nil, "/proc/stat or /proc/self/stat: no btime or starttime" end
  start_time = btime + ticks / USER_HZ
  return start_time
end

return _M
