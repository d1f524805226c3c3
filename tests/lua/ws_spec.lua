-- sluice.ws against Debian's python3-websockets (tests/lua/support/ws_server.py)
-- and a fault proxy in front of it: echo, fragments, ping, close codes, TLS
-- with a throw-away CA, and every fault ending in a clear error.
local sluice = require "sluice"
local ws = require "sluice.ws"
local json = require "sluice.json"
local peer = require "support.ws_peer"
local wait_for = require("support.wait").wait_for

describe("sluice.ws", function()
  local srv, px

  setup(function()
    srv = peer.start()
    px = peer.proxy(srv)
  end)

  teardown(function()
    if px then px:stop() end
    if srv then srv:stop() end
  end)

  describe("messages", function()
    it("echoes text and binary messages, and counts them", function()
      local c = assert(ws.connect(srv:url("/echo")))
      assert.is_true(c:send("héllo"))
      assert.is_true(c:send("\0\1\255", "binary"))
      assert.same({ "héllo", "text" }, { c:receive(5) })
      assert.same({ "\0\1\255", "binary" }, { c:receive(5) })
      local st = c:stats()
      assert.same({ 2, 9, 2, 9, 0, 0 },
        { st.messages_in, st.bytes_in, st.messages_out, st.bytes_out, st.buffered, st.queued })
      assert.is_true(math.abs(st.connected_at - sluice.time()) < 5)
      assert.is_true(c:close())
      assert.equal("closed", c:info().state)
    end)

    it("reassembles fragmented messages", function()
      local c = assert(ws.connect(srv:url("/fragment?parts=7")))
      local big = ("0123456789"):rep(7000)
      assert(c:send(big))
      assert(c:send("abc"))
      assert.same({ big, "text" }, { c:receive(5) })
      assert.same({ "abc", "text" }, { c:receive(5) })
      c:close()
    end)

    it("answers the server's ping with a pong", function()
      local c = assert(ws.connect(srv:url("/ping")))
      assert.same({ "pong hello", "text" }, { c:receive(5) })
      assert.equal(1, c:stats().pings_in)
      c:close()
    end)

    it("returns nil, 'timeout' and stays usable", function()
      local c = assert(ws.connect(srv:url("/echo")))
      local t0 = sluice.now()
      assert.same({ nil, "timeout" }, { c:receive(0.1) })
      assert.is_true(sluice.now() - t0 >= 0.1)
      assert.same({ nil, "timeout" }, { c:receive(0) })
      assert(c:send("still here"))
      assert.same({ "still here", "text" }, { c:receive(5) })
      c:close()
    end)

    it("sends the headers and negotiates a subprotocol", function()
      local c = assert(ws.connect(srv:url("/headers"), { headers = { ["X-Api-Key"] = "k1", ["X-N"] = 7 } }))
      local h = json.decode((c:receive(5)))
      assert.equal("k1", h["x-api-key"])
      assert.equal("7", h["x-n"])
      assert.equal("13", h["sec-websocket-version"])
      assert.equal("127.0.0.1:" .. srv.port, h.host)
      assert.is_nil(h["sec-websocket-protocol"])
      c:close()
      c = assert(ws.connect(srv:url("/protocol"), { protocols = { "v9", "superchat" } }))
      assert.same({ "superchat", "text" }, { c:receive(5) })
      assert.equal("superchat", c:info().protocol)
      c:close()
    end)

    it("keeps the url off the handle and redacts it in info()", function()
      local c = assert(ws.connect(srv:url("/echo?api_key=s3cret&x=1")))
      assert.is_nil(c.url)
      assert.equal(srv:url("/echo?api_key=<redacted>&x=1"), c:info().url)
      assert.equal(srv:url("/echo?api_key=<redacted>&x=1"), c:name())
      assert.is_nil(tostring(c):find("s3cret", 1, true))
      c:close()
    end)
  end)

  describe("closing", function()
    it("reports the server's close code and reason, then the same at once", function()
      local c = assert(ws.connect(srv:url("/close?code=4000&reason=bye")))
      assert.same({ nil, "closed: 4000 bye" }, { c:receive(5) })
      assert.same({ nil, "closed: 4000 bye" }, { c:receive(5) })
      assert.same({ nil, "closed: 4000 bye" }, { c:send("x") })
      assert.equal("closed: 4000 bye", c:info().error)
      c = assert(ws.connect(srv:url("/close")))
      assert.same({ nil, "closed: 1000 normal" }, { c:receive(5) })
    end)

    it("delivers the messages that came before the close", function()
      local c = assert(ws.connect(srv:url("/send?sizes=3,4")))
      wait_for("both messages", function() return c:stats().queued == 2 end)
      assert.same({ "xxx", "text" }, { c:receive() })
      assert.same({ "xxxx", "text" }, { c:receive() })
      assert.is_true(c:close(4001, "done"))
      assert.same({ nil, "closed: 4001 done" }, { c:receive() })
      assert.is_false(c:close()) -- idempotent
    end)

    it("closes the connections of a task that ends", function()
      local c
      local t = sluice.spawn(function()
        c = assert(ws.connect(srv:url("/echo")))
        assert(c:send("a"))
        assert(c:receive(5))
      end)
      assert.is_true((sluice.wait(t)))
      wait_for("the close", function() return c:info().state == "closed" end)
      assert.same({ nil, "closed: 1001 going away" }, { c:receive() })
    end)

    it("frees the connection of a task killed while it connects", function()
      local sp = peer.proxy(srv)
      local t = sluice.spawn(function() return ws.connect(sp:url("/echo?fault=mute")) end)
      sluice.sleep(0.2)
      assert.is_true(sluice.kill(t, "enough"))
      assert.same({ false, "enough" }, { sluice.wait(t) })
      sp:stop()
    end)
  end)

  describe("faults", function()
    it("a TCP reset: 'connection reset'", function()
      local c = assert(ws.connect(px:url("/echo?fault=reset")))
      assert(c:send("x"))
      assert.same({ nil, "connection reset" }, { c:receive(5) })
    end)

    it("a half-open peer: 'dead peer' after the ping timeout", function()
      local c = assert(ws.connect(px:url("/echo?fault=stall"), { ping_interval = 0.2, ping_timeout = 0.3 }))
      local t0 = sluice.now()
      assert.same({ nil, "dead peer: no pong within 0.3s" }, { c:receive(10) })
      local took = sluice.now() - t0
      assert.is_true(took >= 0.4 and took < 3, took) -- ping at 0.2 s, then 0.3 s of silence
      assert.equal(1, c:stats().pings)
    end)

    it("keeps a live peer through pings", function()
      local c = assert(ws.connect(srv:url("/echo"), { ping_interval = 0.1, ping_timeout = 0.3 }))
      assert.same({ nil, "timeout" }, { c:receive(0.6) })
      local st = c:stats()
      assert.is_true(st.pings >= 3 and st.pongs >= 3, json.encode(st))
      assert(c:send("ok"))
      assert.same({ "ok", "text" }, { c:receive(5) })
      c:close()
    end)

    it("a frame with a reserved opcode: 'protocol error'", function()
      local c = assert(ws.connect(px:url("/echo?fault=garbage")))
      assert.same({ nil, "protocol error: invalid frame (close 1002 sent)" }, { c:receive(5) })
    end)

    it("a frame header with an impossible length: 'protocol error'", function()
      local c = assert(ws.connect(px:url("/echo?fault=badlen")))
      assert.same({ nil, "protocol error: invalid frame header" }, { c:receive(5) })
    end)

    it("a message over max_message: 'message too big', close 1009", function()
      local c = assert(ws.connect(srv:url("/send?sizes=100,5000"), { max_message = 4096 }))
      assert.same({ ("x"):rep(100), "text" }, { c:receive(5) })
      assert.same({ nil, "message too big: over max_message (4096 bytes)" }, { c:receive(5) })
    end)

    it("a slow consumer: 'slow consumer' when a message does not fit max_buffer", function()
      -- 30000 bytes wait (under half of 64000: reading goes on), then 40000
      -- would make 70000
      local c = assert(ws.connect(srv:url("/send?sizes=30000,40000"), { max_buffer = 64000 }))
      wait_for("the end", function() return c:info().state == "closed" end)
      assert.equal(0, c:stats().stalls)
      assert.same({ ("x"):rep(30000), "text" }, { c:receive() })
      assert.same({ nil, "slow consumer: 30000 bytes of messages not received, max_buffer 64000" },
        { c:receive() })
    end)

    it("a flood of 100 MB to a slow reader: backpressure, bounded memory, nothing lost", function()
      local size, total = 16384, 100 * 2 ^ 20
      local c = assert(ws.connect(srv:url(("/flood?bytes=%d&size=%d"):format(total, size)),
        { max_buffer = 2 * 2 ^ 20 }))
      local rss0, peak, n, bytes, max_buffered = peer.rss_kb(), 0, 0, 0, 0
      -- reading nothing at first: the connection must stop reading itself
      wait_for("backpressure", function() return c:stats().stalls == 1 end)
      local st = c:stats()
      assert.is_true(st.buffered >= 2 ^ 20 and st.buffered < 2 ^ 20 + 2 * size, json.encode(st))
      while true do
        local d = assert(c:receive(30))
        if d:sub(1, 5) == "done " then
          assert.equal(n, tonumber(d:sub(6)))
          break
        end
        n, bytes = n + 1, bytes + #d
        if n % 200 == 0 then
          local now = c:stats()
          if now.buffered > max_buffered then max_buffered = now.buffered end
          peak = math.max(peak, peer.rss_kb())
          sluice.sleep(0.002) -- the slow part
        end
      end
      assert.equal(6400, n)
      assert.equal(total, bytes)
      st = c:stats()
      assert.is_true(st.stalls >= 1, json.encode(st))
      assert.is_true(max_buffered <= 2 * 2 ^ 20, max_buffered)
      if not peer.sanitized() then
        assert.is_true(peak - rss0 < 64 * 1024, ("RSS grew by %d KiB"):format(peak - rss0))
      end
      c:close()
    end)

    it("refuses sends beyond max_buffer not yet written", function()
      local c = assert(ws.connect(px:url("/echo?fault=stall"), { max_buffer = 100000, ping_interval = 0 }))
      local chunk, err = ("z"):rep(60000), nil
      for _ = 1, 200 do
        local ok
        ok, err = c:send(chunk)
        if not ok then break end
      end
      assert.truthy(err and err:match("^send buffer full: %d+ bytes not yet written, max_buffer 100000$"), err)
      assert.equal("open", c:info().state)
      c:close()
    end)
  end)

  describe("connecting", function()
    it("fails clearly: refused, dns, timeout, handshake", function()
      assert.same({ nil, "connect: Connection refused (127.0.0.1:1)" }, { ws.connect("ws://127.0.0.1:1/") })
      local c, err = ws.connect("ws://nonexistent.invalid/")
      assert.is_nil(c)
      assert.truthy(err:match("^dns: cannot resolve 'nonexistent.invalid': "), err)
      assert.same({ nil, "timeout: not connected within 0.3s" },
        { ws.connect(px:url("/?fault=mute"), { timeout = 0.3 }) })
    end)

    it("offers subprotocols the server may decline", function()
      local c = assert(ws.connect(srv:url("/protocol"), { protocols = { "nope" } }))
      assert.same({ "", "text" }, { c:receive(5) })
      assert.equal("", c:info().protocol)
      c:close()
    end)

    it("an HTTP answer instead of an upgrade: 'handshake: HTTP ...'", function()
      local server = require "sluice.server"
      local s = server.listen { host = "127.0.0.1", port = 0 }
      s:route("GET", "/x", function() return 403, "no", { ["content-type"] = "text/plain" } end)
      assert.same({ nil, "handshake: HTTP 403 Forbidden" }, { ws.connect("ws://127.0.0.1:" .. s.port .. "/x") })
      s:close()
    end)

    it("parses urls, and returns nil, err for one that does not parse", function()
      assert.same({ tls = true, host = "h.example", port = 443, path = "/a?b=1" }, ws.parse_url("wss://h.example/a?b=1"))
      assert.same({ tls = false, host = "::1", port = 8080, path = "/?x" }, ws.parse_url("ws://[::1]:8080?x"))
      assert.same({ nil, "url must start with ws:// or wss://" }, { ws.connect("http://x/") })
      assert.same({ nil, "url has no host" }, { ws.connect("ws:///x") })
      assert.same({ nil, "bad port" }, { ws.connect("ws://h:70000/") })
      assert.same({ nil, "url must not hold user info" }, { ws.connect("ws://u:p@h/") })
    end)

    it("raises on misuse", function()
      assert.has_error(function() ws.connect(42) end,
        "sluice.ws.connect: bad argument #1 'url' (string expected, got number)")
      assert.has_error(function() ws.connect("ws://h/", { timeot = 1 }) end,
        "sluice.ws.connect: unknown option 'timeot'")
      assert.has_error(function() ws.connect("ws://h/", { headers = { Upgrade = "x" } }) end,
        "sluice.ws.connect: option 'headers' may not set Upgrade (the upgrade writes it)")
      assert.has_error(function() ws.connect("ws://h/", { headers = { X = "a\r\nB: c" } }) end,
        "sluice.ws.connect: option 'headers.X' holds a line break")
      local c = assert(ws.connect(srv:url("/echo")))
      assert.has_error(function() c:send(1) end, "sluice.ws.send: bad argument #1 'data' (string expected, got number)")
      assert.has_error(function() c:send("x", "blob") end, "sluice.ws.send: kind must be 'text' or 'binary', got 'blob'")
      assert.has_error(function() c:receive(-1) end, "sluice.ws.receive: timeout must be a number >= 0, got -1")
      assert.has_error(function() c:close(1005) end,
        "sluice.ws.close: code must be 1000-1003, 1007-1014 or 3000-4999, got 1005")
      c:close()
    end)
  end)

  describe("TLS", function()
    local ca, tls

    setup(function()
      ca = peer.make_ca()
      tls = peer.start { tls = ca }
    end)

    teardown(function()
      if tls then tls:stop() end
      if ca then ca.remove() end
    end)

    it("verifies the certificate against ca_file, by IP and by name", function()
      for _, host in ipairs { "127.0.0.1", "localhost" } do
        local c = assert(ws.connect(tls:url("/echo", host), { ca_file = ca.ca }))
        assert(c:send("over tls"))
        assert.same({ "over tls", "text" }, { c:receive(5) })
        c:close()
      end
    end)

    it("refuses an unknown issuer and a wrong name; verify = false skips both", function()
      assert.same({ nil, "tls: certificate verify failed: unable to get local issuer certificate" },
        { ws.connect(tls:url("/echo")) })
      assert.same({ nil, "tls: certificate verify failed: hostname mismatch" },
        { ws.connect(tls:url("/echo"), { ca_file = ca.ca, server_name = "example.com" }) })
      local c = assert(ws.connect(tls:url("/echo"), { verify = false }))
      c:close()
    end)
  end)
end)
