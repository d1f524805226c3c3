-- A module with 64-bit integer literals, compiled by sluice-bc before every
-- embedded module (tests/CMakeLists: c_bc_int64_literals): the parser loads
-- ffi on demand for them, which crashed sluice-bc on a later module when its
-- state had no standard libraries.
local M = {}
local TWO53 = 9007199254740992LL
local MAX = 18446744073709551615ULL
function M.within(x) return x < TWO53 and x < MAX end
return M
