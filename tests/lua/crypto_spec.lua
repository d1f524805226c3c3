-- sluice.crypto: HMAC and digests against published test vectors (RFC 4231,
-- FIPS 180-2), hex and base64 against RFC 4648's, the exchanges' signing
-- examples, the README's example run as written, and keys that never reach
-- an error message or a log line.
local crypto = require "sluice.crypto"
local collector = require "sluice.collector"
local redact = require "sluice.redact"
local files = require "support.files"
local ffi = require "ffi"

pcall(ffi.cdef, "int setenv(const char *name, const char *value, int overwrite);")
pcall(ffi.cdef, "int unsetenv(const char *name);")

local function bytes(b, n) return string.rep(string.char(b), n) end

local function hex(h) return assert(crypto.decode(h, "hex")) end

-- RFC 4231 §4: test cases 1-4, 6 and 7 (5 is a truncated MAC)
local RFC4231 = {
  {
    name = "1", key = bytes(0x0b, 20), data = "Hi There",
    sha256 = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    sha512 = "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
      .. "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
  },
  {
    name = "2 (a key shorter than the output)", key = "Jefe", data = "what do ya want for nothing?",
    sha256 = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    sha384 = "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47"
      .. "e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
    sha512 = "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
      .. "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
  },
  {
    name = "3", key = bytes(0xaa, 20), data = bytes(0xdd, 50),
    sha256 = "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    sha512 = "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39"
      .. "bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb",
  },
  {
    name = "4", key = hex("0102030405060708090a0b0c0d0e0f10111213141516171819"), data = bytes(0xcd, 50),
    sha256 = "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    sha512 = "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3db"
      .. "a91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd",
  },
  {
    name = "6 (a key longer than the block)", key = bytes(0xaa, 131),
    data = "Test Using Larger Than Block-Size Key - Hash Key First",
    sha256 = "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    sha512 = "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
      .. "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
  },
  {
    name = "7 (key and data longer than the block)", key = bytes(0xaa, 131),
    data = "This is a test using a larger than block-size key and a larger than block-size data."
      .. " The key needs to be hashed before being used by the HMAC algorithm.",
    sha256 = "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    sha512 = "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944"
      .. "b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58",
  },
}

-- RFC 4648 §10
local RFC4648 = {
  { "", "", "" },
  { "f", "Zg==", "66" },
  { "fo", "Zm8=", "666F" },
  { "foo", "Zm9v", "666F6F" },
  { "foob", "Zm9vYg==", "666F6F62" },
  { "fooba", "Zm9vYmE=", "666F6F6261" },
  { "foobar", "Zm9vYmFy", "666F6F626172" },
}

-- Binance's "SIGNED endpoint examples for POST /api/v3/order" (HMAC keys)
local BINANCE_KEY = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
local BINANCE_QUERY = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
  .. "&recvWindow=5000&timestamp=1499827319559"
local BINANCE_SIGNATURE = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"

local function setenv(name, value)
  assert(ffi.C.setenv(name, value, 1) == 0)
end

-- the README's "Request signing" example, as written there
local function readme_example()
  local text = assert(files.read("README.md"))
  local section = assert(text:match("\n### Request signing\n(.-)\n##"), "README has no Request signing section")
  local code = assert(section:match("```lua\n(.-)\n```"), "the section has no lua example")
  local chunk = assert(loadstring(code .. "\nreturn binance_signed, bybit_headers, open_orders",
    "=README.md (Request signing)"))
  return chunk()
end

describe("sluice.crypto", function()
  describe("hmac", function()
    for _, tc in ipairs(RFC4231) do
      it("matches RFC 4231 test case " .. tc.name, function()
        for _, alg in ipairs({ "sha256", "sha384", "sha512" }) do
          if tc[alg] then
            assert.equal(tc[alg], crypto.hmac(alg, tc.key, tc.data, "hex"))
            assert.equal(hex(tc[alg]), crypto.hmac(alg, tc.key, tc.data))
            assert.equal(hex(tc[alg]), crypto.hmac(alg, tc.key, tc.data, "raw"))
          end
        end
      end)
    end

    it("signs Binance's SIGNED endpoint example", function()
      assert.equal(BINANCE_SIGNATURE, crypto.hmac("sha256", BINANCE_KEY, BINANCE_QUERY, "hex"))
    end)

    it("writes the MAC in base64 and base64url", function()
      local raw = hex(RFC4231[1].sha256)
      assert.equal("sDRMYdjbOFNcqK/OrwvxK4gdwgDJgz2nJuk3bC4yz/c=",
        crypto.hmac("sha256", RFC4231[1].key, "Hi There", "base64"))
      assert.equal("sDRMYdjbOFNcqK_OrwvxK4gdwgDJgz2nJuk3bC4yz_c",
        crypto.hmac("sha256", RFC4231[1].key, "Hi There", "base64url"))
      assert.equal(raw, crypto.decode("sDRMYdjbOFNcqK/OrwvxK4gdwgDJgz2nJuk3bC4yz/c=", "base64"))
    end)

    it("takes an empty key and an empty message, and bytes that are not text", function()
      -- python3: hmac.new(b"", b"", hashlib.sha256).hexdigest()
      assert.equal("b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad",
        crypto.hmac("sha256", "", "", "hex"))
      assert.equal(crypto.hmac("sha256", "k\0ey", "m\0sg", "hex"),
        crypto.hmac("sha256", "k\0ey", "m\0sg", "hex"))
      assert.not_equal(crypto.hmac("sha256", "k\0ey", "msg", "hex"),
        crypto.hmac("sha256", "k", "msg", "hex"))
    end)

    it("reveals a collector.env key at each call", function()
      local name = "SLUICE_CRYPTO_SPEC_KEY"
      local key = collector.env(name)
      setenv(name, BINANCE_KEY)
      assert.equal(BINANCE_SIGNATURE, crypto.hmac("sha256", key, BINANCE_QUERY, "hex"))
      setenv(name, "Jefe")
      assert.equal(RFC4231[2].sha256, crypto.hmac("sha256", key, RFC4231[2].data, "hex"))
      assert(ffi.C.unsetenv(name) == 0)
      local sig, err = crypto.hmac("sha256", key, "msg", "hex")
      assert.is_nil(sig)
      assert.equal("sluice.crypto.hmac: key: environment variable 'SLUICE_CRYPTO_SPEC_KEY' is not set", err)
      -- the default stands in for an unset variable
      assert.equal(BINANCE_SIGNATURE,
        crypto.hmac("sha256", collector.env(name, BINANCE_KEY), BINANCE_QUERY, "hex"))
    end)
  end)

  describe("digest", function()
    it("matches FIPS 180-2's 'abc' examples", function()
      assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        crypto.digest("sha256", "abc", "hex"))
      assert.equal("cb00753f45a35e8bb5a03d699ac65007272c32ab0eded163"
        .. "1a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7", crypto.digest("sha384", "abc", "hex"))
      assert.equal("ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        .. "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f", crypto.digest("sha512", "abc", "hex"))
      assert.equal(32, #crypto.digest("sha256", "abc"))
      assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        crypto.digest("sha256", "", "hex"))
    end)
  end)

  describe("encode and decode", function()
    it("match RFC 4648's base64 and base16 test vectors", function()
      for _, v in ipairs(RFC4648) do
        local plain, b64, b16 = v[1], v[2], v[3]
        assert.equal(b64, crypto.encode(plain, "base64"))
        assert.equal(plain, crypto.decode(b64, "base64"))
        assert.equal(b16:lower(), crypto.encode(plain, "hex"))
        assert.equal(plain, crypto.decode(b16, "hex"))
        assert.equal(plain, crypto.decode(b16:lower(), "hex"))
        -- §5: the URL-safe form, unpadded; decode takes it padded too
        local url = b64:gsub("=", "")
        assert.equal(url, crypto.encode(plain, "base64url"))
        assert.equal(plain, crypto.decode(url, "base64url"))
        assert.equal(plain, crypto.decode(b64, "base64url"))
        assert.equal(plain, crypto.encode(plain, "raw"))
        assert.equal(plain, crypto.decode(plain, "raw"))
      end
    end)

    it("use each alphabet's two last characters", function()
      local s = "\251\255\191" -- 111110 111111 111110 111111
      assert.equal("+/+/", crypto.encode(s, "base64"))
      assert.equal("-_-_", crypto.encode(s, "base64url"))
      assert.equal(s, crypto.decode("+/+/", "base64"))
      assert.equal(s, crypto.decode("-_-_", "base64url"))
      assert.equal("00ff7f80", crypto.encode("\0\255\127\128", "hex"))
      assert.equal("\0\255\127\128", crypto.decode("00FF7f80", "hex"))
    end)

    it("return nil, err for text that is not in the encoding", function()
      local cases = {
        { "abc", "hex", "hex: odd length" },
        { "zz", "hex", "hex: invalid character at position 1" },
        { "0g", "hex", "hex: invalid character at position 2" },
        { "00 1", "hex", "hex: invalid character at position 3" },
        { "Zm9vYg", "base64", "base64: length is not a multiple of 4" },
        { "Zm9v\nYmFy", "base64", "base64: length is not a multiple of 4" },
        { "Zm9v YmE", "base64", "base64: invalid character at position 5" },
        { "Zm9vY===", "base64", "base64: invalid character at position 6" },
        { "Zm=v", "base64", "base64: invalid character at position 3" },
        { "Zm9-", "base64", "base64: invalid character at position 4" },
        { "Zm9/", "base64url", "base64: invalid character at position 4" },
        { "Zm9vY", "base64url", "base64: truncated" },
        { "Zg=", "base64url", "base64: length is not a multiple of 4" },
      }
      for _, c in ipairs(cases) do
        local v, err = crypto.decode(c[1], c[2])
        assert.is_nil(v, c[1])
        assert.equal(c[3], err)
      end
    end)
  end)

  describe("misuse", function()
    local function message(fn, ...)
      local ok, err = pcall(fn, ...)
      assert.is_false(ok)
      return (tostring(err):gsub("^[^:]+:%d+: ", ""))
    end

    it("raises for an unknown algorithm or encoding and non-string arguments", function()
      local algs = "'sha256', 'sha384' or 'sha512'"
      local encs = "'raw', 'hex', 'base64' or 'base64url'"
      assert.equal("sluice.crypto.hmac: bad argument #1 'alg' (" .. algs .. " expected, got an unknown algorithm)",
        message(crypto.hmac, "md5", "k", "m"))
      assert.equal("sluice.crypto.hmac: bad argument #1 'alg' (string expected, got nil)",
        message(crypto.hmac, nil, "k", "m"))
      assert.equal("sluice.crypto.hmac: bad argument #2 'key' (string or collector.env secret expected, got number)",
        message(crypto.hmac, "sha256", 1, "m"))
      assert.equal("sluice.crypto.hmac: bad argument #3 'msg' (string expected, got number)",
        message(crypto.hmac, "sha256", "k", 12))
      assert.equal("sluice.crypto.hmac: bad argument #3 'msg' (string expected, got nil)",
        message(crypto.hmac, "sha256", "k"))
      assert.equal("sluice.crypto.hmac: bad argument #4 'encoding' (" .. encs .. " expected, got an unknown encoding)",
        message(crypto.hmac, "sha256", "k", "m", "HEX"))
      assert.equal("sluice.crypto.digest: bad argument #2 'msg' (string expected, got table)",
        message(crypto.digest, "sha256", {}))
      assert.equal("sluice.crypto.encode: bad argument #2 'encoding' (string expected, got nil)",
        message(crypto.encode, "x"))
      assert.equal("sluice.crypto.decode: bad argument #1 'text' (string expected, got boolean)",
        message(crypto.decode, true, "hex"))
      assert.equal("sluice.crypto.decode: bad argument #2 'encoding' (" .. encs .. " expected, got an unknown encoding)",
        message(crypto.decode, "00", "base32"))
    end)

    it("points at the caller's line", function()
      local ok, err = pcall(function() crypto.hmac("sha1", "k", "m") end)
      assert.is_false(ok)
      assert.matches("^[^:]*crypto_spec%.lua:%d+: sluice%.crypto%.hmac: bad argument #1", err)
      ok, err = pcall(function() crypto.decode("00", 16) end)
      assert.is_false(ok)
      assert.matches("^[^:]*crypto_spec%.lua:%d+: sluice%.crypto%.decode: bad argument #2", err)
    end)

    it("never puts a key in an error message, a collector.env one or a plain one", function()
      local value = "spec-secret-7f3a9c1e5b"
      local name = "SLUICE_CRYPTO_SPEC_SECRET"
      setenv(name, value)
      local key = collector.env(name)
      assert.equal("signing with " .. value, redact.text("signing with " .. value))
      local errors = {}
      local function collect(ok, err)
        assert.is_false(ok)
        errors[#errors + 1] = tostring(err)
      end
      collect(pcall(crypto.hmac, "md5", key, "m", "hex"))
      collect(pcall(crypto.hmac, "sha256", key, 42, "hex"))
      collect(pcall(crypto.hmac, "sha256", key, "m", "hex!"))
      collect(pcall(crypto.hmac, "sha256", collector.env("SLUICE_CRYPTO_SPEC_UNSET", 7), "m"))
      -- arguments swapped, so the key stands where the algorithm or the
      -- encoding should
      collect(pcall(crypto.hmac, value, "sha256", "m"))
      collect(pcall(crypto.hmac, "sha256", "m", "msg", value))
      collect(pcall(crypto.decode, "00", value))
      collect(pcall(crypto.encode, "00", value))
      collect(pcall(crypto.digest, value, "m"))
      local _, unset = crypto.hmac("sha256", collector.env("SLUICE_CRYPTO_SPEC_UNSET"), "m")
      errors[#errors + 1] = unset
      local _, bad = crypto.decode(value, "hex")
      errors[#errors + 1] = bad
      assert.equal(11, #errors)
      for _, e in ipairs(errors) do
        assert.is_nil(e:find(value, 1, true), e)
        assert.is_nil(e:find("7f3a9c", 1, true), e)
      end
      -- and a key, once revealed, is one sluice.redact keeps out of log lines
      assert.equal(64, #crypto.hmac("sha256", key, "m", "hex"))
      assert.equal("signing with <redacted>", redact.text("signing with " .. value))
      assert(ffi.C.unsetenv(name) == 0)
    end)
  end)

  describe("the README's Request signing example", function()
    local binance_signed, bybit_headers, open_orders

    setup(function()
      setenv("BINANCE_SECRET", BINANCE_KEY)
      setenv("BYBIT_SECRET", "XXXXXXXXXX")
      binance_signed, bybit_headers, open_orders = readme_example()
    end)

    teardown(function()
      ffi.C.unsetenv("BINANCE_SECRET")
      ffi.C.unsetenv("BYBIT_SECRET")
    end)

    it("signs Binance's example order, its parameters sorted", function()
      local q = binance_signed({
        symbol = "LTCBTC", side = "BUY", type = "LIMIT", timeInForce = "GTC",
        quantity = 1, price = 0.1, recvWindow = 5000, timestamp = 1499827319559,
      })
      local sorted = "price=0.1&quantity=1&recvWindow=5000&side=BUY&symbol=LTCBTC"
        .. "&timeInForce=GTC&timestamp=1499827319559&type=LIMIT"
      -- printf %s "$sorted" | openssl dgst -sha256 -hmac "$BINANCE_KEY"
      assert.equal(sorted .. "&signature=70fd30433bc3a2e3b5ff17d075e50538dde3734841da6dc28d79113dd37fa9c7", q)
    end)

    it("signs Bybit's GET example in headers", function()
      -- Bybit v5 "Integration guidance": "1658384314791XXXXXXXXXX5000category=option&symbol=BTC-29JUL22-25000-C"
      -- is the string to sign (key and secret XXXXXXXXXX); the docs print
      -- no signature: this one is
      -- what printf %s "$payload" | openssl dgst -sha256 -hmac XXXXXXXXXX prints
      local h = bybit_headers("XXXXXXXXXX", "1658384314791", "category=option&symbol=BTC-29JUL22-25000-C")
      assert.same({
        ["X-BAPI-API-KEY"] = "XXXXXXXXXX", ["X-BAPI-TIMESTAMP"] = "1658384314791",
        ["X-BAPI-RECV-WINDOW"] = "5000",
        ["X-BAPI-SIGN"] = "c00720f96c5934ca7057ac28ae65b823f83b8b67a8fe784e7795ca0fa3c148ec",
      }, h)
    end)

    it("puts the signed query in the path a collector gets", function()
      local got
      local self = { get = function(_, path) got = path; return { ok = true } end }
      assert.same({ ok = true }, open_orders(self))
      local qs, sig = got:match("^/api/v3/openOrders%?(recvWindow=5000&symbol=BTCUSDT&timestamp=%d+)&signature=(%x+)$")
      assert.is_string(qs, got)
      assert.equal(crypto.hmac("sha256", BINANCE_KEY, qs, "hex"), sig)
    end)
  end)
end)
