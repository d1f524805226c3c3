--- sluice.exchange.symbols: ccxt's unified symbols, and the markets they
-- name.
--
--   BASE/QUOTE         spot                  "BTC/USDT"
--   BASE/QUOTE:QUOTE   linear perpetual      "BTC/USDT:USDT" (USDT-margined)
--   BASE/QUOTE:BASE    inverse perpetual     "BTC/USD:BTC"   (coin-margined)
--
-- parse(s) -> {unified, base, quote, settle, market} | nil, err. Any
-- other form (a dated future "BTC/USDT:USDT-240628", an option, lower
-- case, missing parts) is an error naming the forms it takes. resolve()
-- turns the options of an exchange collector (symbols, markets) into the
-- records its datasets work on. Owns no state; nothing here yields.
local _M = {}

_M.MARKETS = { "spot", "linear", "inverse" }

local FORMS = "BASE/QUOTE (spot), BASE/QUOTE:QUOTE (linear perpetual) or BASE/QUOTE:BASE "
  .. "(inverse perpetual), in upper case, e.g. BTC/USDT, BTC/USDT:USDT, BTC/USD:BTC"

--- parse(s) -> {unified, base, quote, settle, market} | nil, err
function _M.parse(s)
  if type(s) ~= "string" then
    return nil, "a symbol must be a string, got " .. type(s)
  end
  local base, quote, settle = s:match("^([A-Z0-9]+)/([A-Z0-9]+):([A-Z0-9]+)$")
  if not base then
    base, quote = s:match("^([A-Z0-9]+)/([A-Z0-9]+)$")
  end
  if not base then
    return nil, "unknown symbol form '" .. s .. "': a symbol is " .. FORMS
  end
  local market
  if not settle then
    market = "spot"
  elseif settle == quote then
    market = "linear"
  elseif settle == base then
    market = "inverse"
  else
    return nil, "unknown symbol form '" .. s .. "': the settle currency " .. settle
      .. " is neither the quote (linear) nor the base (inverse); a symbol is " .. FORMS
  end
  return { unified = s, base = base, quote = quote, settle = settle, market = market }
end

--- resolve(adapter, symbols, markets) -> list of {unified, raw, market,
-- base, quote, settle} | nil, err. symbols: the configured unified
-- symbols; markets: the configured market filter (empty: every market the
-- symbols imply). Errors: a symbol of unknown form, a market that is not
-- spot/linear/inverse, a market (asked for, or implied by a symbol kept by
-- the filter) the exchange does not have, a symbol listed twice, and no
-- symbol left after the filter.
function _M.resolve(adapter, symbols, markets)
  local want = {}
  for i, m in ipairs(markets or {}) do
    local known = false
    for _, k in ipairs(_M.MARKETS) do known = known or k == m end
    if not known then
      return nil, "option 'markets'[" .. i .. "] must be spot, linear or inverse, got " .. tostring(m)
    end
    if not adapter.markets[m] then
      return nil, "option 'markets'[" .. i .. "]: " .. adapter.name .. " has no " .. m .. " market"
    end
    want[m] = true
  end
  local out, seen = {}, {}
  for i, s in ipairs(symbols or {}) do
    local p, err = _M.parse(s)
    if not p then return nil, "option 'symbols'[" .. i .. "]: " .. err end
    if seen[s] then return nil, "option 'symbols'[" .. i .. "]: " .. s .. " is listed twice" end
    seen[s] = true
    if next(want) == nil or want[p.market] then
      if not adapter.markets[p.market] then
        local an = p.market == "inverse" and " is an " or " is a "
        return nil, "option 'symbols'[" .. i .. "]: " .. s .. an .. p.market .. " symbol and "
          .. adapter.name .. " has no " .. p.market .. " market"
      end
      p.raw = adapter.raw_symbol(p.market, s)
      if type(p.raw) ~= "string" or p.raw == "" then
        return nil, "option 'symbols'[" .. i .. "]: " .. adapter.name .. " has no symbol for " .. s
      end
      out[#out + 1] = p
    end
  end
  if #out == 0 then
    return nil, "option 'symbols' must list at least one symbol"
      .. (next(want) and " of the markets asked for (option 'markets')" or "")
  end
  return out
end

return _M
