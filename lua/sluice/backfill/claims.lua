--- sluice.backfill.claims: backfill windows claimed in Redis.
--
-- A backfill window is claimed under backfill:{collector}:{partition}:{start}
-- before it is fetched, so that instances sharing one backfill fetch each
-- window once. The value is JSON (sluice.json: times exact):
--   {"state":"claimed","by":instance,"token":job token,"at":t}  PX claim TTL,
--     renewed by its holder while the window is fetched;
--   {"state":"done","by":instance,"job":id,"rows":n,"from":s,"to":s,"at":t}
--     EX done TTL (7 days by default), once its rows are committed.
-- A failed window's claim is deleted by its holder; a dead holder's claim
-- expires. The calls go through a sluice.shared object sh (its eval, call
-- and id); they return nil, err when Redis cannot be reached (and sh
-- tracks the outage). This module owns no state; every call but key()
-- yields (call them in a task).
local sluice = require "sluice"
local json = require "sluice.json"

local _M = {}

-- Claims KEYS[1] for the token ARGV[1] for ARGV[2] ms (ARGV[3] is the claim
-- document) unless another live token holds it or it is done covering
-- [ARGV[4], ARGV[5]) at or after ARGV[6]. Returns {verdict, old value}.
local CLAIM = [[
local v = redis.call('GET', KEYS[1])
if v then
  local ok, d = pcall(cjson.decode, v)
  if ok and type(d) == 'table' then
    if d.state == 'claimed' then
      if d.token == ARGV[1] then
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        return {'claimed', v}
      end
      return {'held', v}
    end
    if d.state == 'done' and type(d.from) == 'number' and type(d.to) == 'number'
        and type(d.at) == 'number' and d.from <= tonumber(ARGV[4])
        and d.to >= tonumber(ARGV[5]) and d.at >= tonumber(ARGV[6]) then
      return {'done', v}
    end
  end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
if v then return {'claimed', v} end
return {'claimed'}]]
-- Renews (ARGV[3] = "renew", PEXPIRE ARGV[2] ms) or releases the claim of
-- token ARGV[1]: DEL, or back to the done mark ARGV[4] it replaced (EX
-- ARGV[5]); 1 when it was ours, 0 when not (any more).
local UNCLAIM = [[
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, d = pcall(cjson.decode, v)
if not ok or type(d) ~= 'table' or d.state ~= 'claimed' or d.token ~= ARGV[1] then return 0 end
if ARGV[3] == 'renew' then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if ARGV[4] and ARGV[4] ~= '' then
  redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[5])
  return 1
end
return redis.call('DEL', KEYS[1])]]

local function ms(seconds)
  return string.format("%d", math.max(1, math.floor(seconds * 1000 + 0.5)))
end

local function decode_doc(v)
  local d = type(v) == "string" and json.decode(v)
  if type(d) == "table" then return d end
  return nil
end

--- key(collector, partition, window_start) -> the claim key.
function _M.key(collector, partition, start)
  return string.format("backfill:%s:%s:%d", collector, partition, start)
end

--- claim(sh, key, token, ttl, win) -> verdict, doc, raw | nil, err.
-- win = {from, to, since}: the part of the window wanted, and the oldest
-- done mark that counts (0: any). verdict "claimed" (ours for ttl seconds;
-- doc: the value it replaced, if any, e.g. an older or shorter done mark),
-- "held" (another token's live claim, doc) or "done" (doc: the done mark
-- covering win); raw is doc as stored.
function _M.claim(sh, key, token, ttl, win)
  local claim = json.encode({ state = "claimed", by = sh.id, token = token, at = sluice.time() })
  -- numbers go as they are: the Redis client writes them as json.number does
  local v, err = sh:eval(CLAIM, { key }, { token, ms(ttl), claim, win.from, win.to, win.since or 0 })
  if type(v) ~= "table" then return nil, err or "bad reply" end
  return v[1], decode_doc(v[2]), v[2]
end

--- renew(sh, key, token, ttl) -> true (still ours, for ttl seconds
-- more) | false (lost: expired or taken) | nil, err.
function _M.renew(sh, key, token, ttl)
  local v, err = sh:eval(UNCLAIM, { key }, { token, ms(ttl), "renew" })
  if v == nil then return nil, err end
  return v == 1
end

--- release(sh, key, token, restore, ttl) -> true (released) | false
-- (not ours) | nil, err. restore: the raw done mark the claim replaced, put
-- back for ttl seconds (else the key is deleted).
function _M.release(sh, key, token, restore, ttl)
  local v, err = sh:eval(UNCLAIM, { key }, { token, "0", "release", restore or "",
    string.format("%d", math.ceil(ttl or 1)) })
  if v == nil then return nil, err end
  return v == 1
end

--- done(sh, key, doc, ttl) -> true | nil, err: marks the window done
-- for ttl seconds; doc = {job, rows, from, to} (by and at are added).
function _M.done(sh, key, doc, ttl)
  local d = { state = "done", by = sh.id, at = sluice.time() }
  for k, v in pairs(doc) do d[k] = v end
  local v, err = sh:call("SET", key, json.encode(d), "EX", string.format("%d", math.ceil(ttl)))
  if v == nil then return nil, err end
  return true
end

--- states(sh, keys) -> {key = doc} of the keys that exist | nil, err,
-- by MGET in batches of 500.
function _M.states(sh, keys)
  local out = {}
  for i = 1, #keys, 500 do
    local batch = { unpack(keys, i, math.min(i + 499, #keys)) }
    local vals, err = sh:call("MGET", unpack(batch))
    if type(vals) ~= "table" then return nil, err or "bad reply" end
    for j, k in ipairs(batch) do
      local d = decode_doc(vals[j])
      if d then out[k] = d end
    end
  end
  return out
end

return _M
