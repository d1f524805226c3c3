--- sluice.crypto: request signing — HMAC, digests, hex and base64.
--
-- For private exchange endpoints that want a signature over the request
-- (OpenSSL's libcrypto through sluice._crypto). Owns nothing and keeps
-- nothing between calls; nothing here yields.
--
--   crypto.hmac(alg, key, msg [, encoding]) -> the MAC of msg under key
--   crypto.digest(alg, msg [, encoding])    -> the hash of msg
--   crypto.encode(bytes, encoding)          -> text
--   crypto.decode(text, encoding)           -> bytes, or nil, err
--
-- alg is "sha256", "sha384" or "sha512". encoding is one of
--   "raw"       the bytes themselves (the default of hmac and digest)
--   "hex"       lower case; decode takes either case
--   "base64"    RFC 4648 §4, standard alphabet, padded with "="
--   "base64url" RFC 4648 §5, "-" and "_", unpadded; decode takes it padded too
-- decode is strict (no spaces or line breaks, padding where the standard
-- form needs it) and returns nil, err for text that is not in the encoding.
--
-- key is a string or a collector.env(...) secret, revealed here at each
-- call (so a changed environment is seen at the next request) and
-- remembered by sluice.redact, so its value never reaches a log line. No
-- error message of this module quotes an argument (swapped arguments must
-- not put a key in a message): misuse names the argument and its type. A secret whose variable is unset (and has no
-- default) is an operational failure: hmac returns nil, err naming the
-- variable. Misuse (unknown alg or encoding, a non-string msg) raises.
local native = require "sluice._crypto"
local secret = require "sluice.collector.secret"
local redact = require "sluice.redact"

local _M = {}

local ALGS = { sha256 = true, sha384 = true, sha512 = true }
local ALG_WORDS = "'sha256', 'sha384' or 'sha512'"
local ENCODINGS = { raw = true, hex = true, base64 = true, base64url = true }
local ENCODING_WORDS = "'raw', 'hex', 'base64' or 'base64url'"

-- fname: bad argument #n 'name' (what expected, got type)
local function bad_argument(fname, n, name, what, v, level)
  error(string.format("%s: bad argument #%d '%s' (%s expected, got %s)",
    fname, n, name, what, type(v)), level + 1)
end

local function check_alg(fname, alg)
  if type(alg) ~= "string" then bad_argument(fname, 1, "alg", "string", alg, 3) end
  if not ALGS[alg] then
    -- never quoted: with the arguments swapped, it would be the key
    error(string.format("%s: bad argument #1 'alg' (%s expected, got an unknown algorithm)",
      fname, ALG_WORDS), 3)
  end
end

local function check_encoding(fname, n, encoding, default)
  if encoding == nil and default then return default end
  if type(encoding) ~= "string" then
    bad_argument(fname, n, "encoding", "string", encoding, 3)
  end
  if not ENCODINGS[encoding] then
    error(string.format("%s: bad argument #%d 'encoding' (%s expected, got an unknown encoding)",
      fname, n, ENCODING_WORDS), 3)
  end
  return encoding
end

local function encode(bytes, encoding)
  if encoding == "hex" then return native.hex_encode(bytes) end
  if encoding == "base64" then return native.base64_encode(bytes, false) end
  if encoding == "base64url" then return native.base64_encode(bytes, true) end
  return bytes
end

--- hmac(alg, key, msg [, encoding]) -> the HMAC of msg under key in
-- encoding ("raw" by default), or nil, err when key is a collector.env
-- secret whose variable is not set.
function _M.hmac(alg, key, msg, encoding)
  local fname = "sluice.crypto.hmac"
  check_alg(fname, alg)
  local k = key
  if secret.is_secret(key) then
    k = secret.reveal(key)
    if k == nil then
      return nil, string.format("%s: key: environment variable '%s' is not set", fname, key.env)
    end
    if type(k) ~= "string" then
      bad_argument(fname, 2, "key", "string or collector.env secret", k, 2)
    end
    redact.register(k)
  elseif type(key) ~= "string" then
    bad_argument(fname, 2, "key", "string or collector.env secret", key, 2)
  end
  if type(msg) ~= "string" then bad_argument(fname, 3, "msg", "string", msg, 2) end
  encoding = check_encoding(fname, 4, encoding, "raw")
  return encode(native.hmac(alg, k, msg), encoding)
end

--- digest(alg, msg [, encoding]) -> the hash of msg in encoding ("raw" by
-- default).
function _M.digest(alg, msg, encoding)
  local fname = "sluice.crypto.digest"
  check_alg(fname, alg)
  if type(msg) ~= "string" then bad_argument(fname, 2, "msg", "string", msg, 2) end
  encoding = check_encoding(fname, 3, encoding, "raw")
  return encode(native.digest(alg, msg), encoding)
end

--- encode(bytes, encoding) -> bytes written in encoding.
function _M.encode(bytes, encoding)
  local fname = "sluice.crypto.encode"
  if type(bytes) ~= "string" then bad_argument(fname, 1, "bytes", "string", bytes, 2) end
  return encode(bytes, check_encoding(fname, 2, encoding))
end

--- decode(text, encoding) -> the bytes text spells in encoding, or nil, err
-- ("hex: odd length", "base64: invalid character at position 5", ...).
function _M.decode(text, encoding)
  local fname = "sluice.crypto.decode"
  if type(text) ~= "string" then bad_argument(fname, 1, "text", "string", text, 2) end
  encoding = check_encoding(fname, 2, encoding)
  if encoding == "hex" then return native.hex_decode(text) end
  if encoding == "base64" then return native.base64_decode(text, false) end
  if encoding == "base64url" then return native.base64_decode(text, true) end
  return text
end

return _M
