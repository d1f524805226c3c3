-- idle.lua -- a script that only sleeps, for idle RSS.
local sluice = require "sluice"
local seconds = ...
sluice.sleep(tonumber(seconds) or 2)
