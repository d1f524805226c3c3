-- sluice.amqp and sluice.sinks.rabbitmq over TLS (amqps://) against a real
-- RabbitMQ broker with a TLS listener: a throw-away CA signs the broker's
-- certificate (its name: IP 127.0.0.1) and a client certificate the broker
-- requires. Publish with confirms and consume over amqps; a CA that did not
-- sign the broker's certificate, a host name the certificate does not
-- name and a missing client certificate each fail with a clear error that
-- holds no password; verify = false only when asked, with one warning.
local sluice = require "sluice"
local json = require "sluice.json"
local amqp = require "sluice.amqp"
local redact = require "sluice.redact"
local log = require "sluice.log"
local sinkrmq = require "sluice.sinks.rabbitmq"
local wait = require "support.wait"
local logs = require "support.logs"
local rmq = require "support.rabbitmq"
local sink_rows = require "support.sink_rows"
local TRADES, trade = sink_rows.TRADES, sink_rows.trade
local wait_for = wait.wait_for

local VERIFY_OFF = "sluice.amqp: TLS verification is off (verify = false): the broker's certificate and host name"
  .. " are not checked"

describe("sluice.amqp over TLS (amqps)", function()
  local srv, T

  -- connect options: the right CA and the client certificate, then over
  local function tls_opts(over)
    local o = { url = srv:tls_url(), ca_file = T.ca, cert_file = T.cert, key_file = T.key,
      connect_timeout = 5, timeout = 10 }
    for k, v in pairs(over or {}) do o[k] = v end
    return o
  end

  -- every message of queue, waiting (bounded) until n came
  local function consume_all(c, queue, n)
    local got = {}
    wait_for(n .. " messages", function()
      local msgs = assert(c:consume(queue, 1000, 0.2))
      for _, m in ipairs(msgs) do got[#got + 1] = m end
      return #got >= n
    end, 30)
    return got
  end

  setup(function()
    log.output("/dev/null")
    srv = rmq.start { tls = true }
    T = srv.tls
  end)

  teardown(function()
    log.output("-")
    if srv then srv:shutdown() end
  end)

  it("parses amqps URLs: TLS on, port 5671 by default", function()
    assert.same({ host = "mq.example.com", port = 5671, user = "u", vhost = "prod", tls = true },
      amqp.parse_url("amqps://u:pw@mq.example.com/prod"))
    assert.same({ host = "h", port = 5672, user = "guest", vhost = "/", tls = false }, amqp.parse_url("amqp://h"))
  end)

  it("refuses TLS settings that do not fit, as misuse", function()
    local ok, err = pcall(amqp.new, { url = "amqp://127.0.0.1:1", ca_file = T.ca })
    assert.is_false(ok)
    assert.truthy(err:find("sluice.amqp.new: ca_file, cert_file, key_file and verify need an amqps:// URL", 1, true),
      err)
    ok, err = pcall(amqp.connect, { url = "amqp://127.0.0.1:1", verify = false })
    assert.is_false(ok)
    assert.truthy(err:find("sluice.amqp.connect: ca_file, cert_file, key_file and verify need an amqps:// URL",
      1, true), err)
    ok, err = pcall(amqp.new, { url = srv:tls_url(), cert_file = T.cert })
    assert.is_false(ok)
    assert.truthy(err:find("sluice.amqp.new: cert_file and key_file go together", 1, true), err)
    ok, err = pcall(amqp.new, { url = srv:tls_url(), verify = "no" })
    assert.is_false(ok)
    assert.truthy(err:find("option 'verify' must be a boolean", 1, true), err)
  end)

  it("publishes with confirms over amqps and consumes what it published", function()
    local c = assert(amqp.connect(tls_opts()))
    assert.is_true(c:declare { exchange = "ex_tls", type = "topic", durable = true })
    assert.is_true(c:declare { exchange = "ex_tls", queue = "q_tls", binding_key = "tls.#", durable = true })
    local msgs = {}
    for i = 1, 2000 do
      msgs[i] = { routing_key = "tls.t", body = ('{"i":%d,"pad":"%s"}'):format(i, ("x"):rep(i % 300)),
        message_id = "m" .. i, type = "t" }
    end
    assert.equal(2000, c:publish("ex_tls", msgs))
    -- a second TLS connection consumes (a confirming consumer: each acked)
    local cons = assert(amqp.connect(tls_opts()))
    local got = consume_all(cons, "q_tls", 2000)
    assert.equal(2000, #got)
    for i = 1, 2000 do
      assert.same({ msgs[i].body, "m" .. i, "t", 2, "application/json" },
        { got[i].body, got[i].message_id, got[i].type, got[i].delivery_mode, got[i].content_type })
    end
    assert.same({ true, 0, 1 }, { c:status().connected, c:status().pending, c:status().connects })
    c:close()
    cons:close()
  end)

  it("the RabbitMQ sink takes amqps and the TLS settings; its password is redacted", function()
    local url = srv:tls_url(nil, "guest:guest")
    local sink = assert(sinkrmq.new("rmq_tls", { url = url, exchange = "ex_sink_tls", ca_file = T.ca,
      cert_file = T.cert, key_file = T.key, connect_timeout = 5, timeout = 10 }))
    assert.is_true(sink:ensure("trades", TRADES))
    local admin = assert(amqp.connect(tls_opts()))
    assert.is_true(admin:declare { exchange = "ex_sink_tls", queue = "q_sink_tls", binding_key = "sluice.trades" })
    local rows = {}
    for i = 1, 500 do rows[i] = trade(i) end
    assert.is_true(sink:write("trades", rows, TRADES))
    local got = consume_all(admin, "q_sink_tls", 500)
    assert.equal(500, #got)
    for i = 1, 500 do
      assert.equal(assert(json.encode(rows[i])), got[i].body)
      assert.equal(sinkrmq.message_id("rmq_tls", "trades", got[i].body), got[i].message_id)
    end
    local st = sink:stats()
    assert.same({ 1, 500, true, "127.0.0.1:" .. T.port .. "/%2f" },
      { st.batches, st.messages, st.connected, st.broker })
    sink:close()
    admin:close()
    -- an amqps URL's password is registered with sluice.redact like an amqp one's
    local s2 = assert(sinkrmq.new("rmq_pw", { url = srv:tls_url(nil, "guest:tls-pw%2Dq7"), ca_file = T.ca }))
    assert.equal("password <redacted> and <redacted>", redact.text("password tls-pw-q7 and tls-pw%2Dq7"))
    s2:close()
  end)

  it("a CA that did not sign the broker's certificate fails the connection, naming the check, no secret", function()
    local url = srv:tls_url(nil, "guest:s3cr3t-tls")
    local c, err, kind = amqp.connect(tls_opts { url = url, ca_file = T.other_ca })
    assert.is_nil(c)
    assert.equal("closed", kind)
    assert.equal(("connect to 127.0.0.1:%d: TLS: certificate verify failed: self-signed certificate in"
      .. " certificate chain (its CA is not in ca_file)"):format(T.port), err)
    -- without ca_file the system's trust store is used: the test CA is not in it
    c, err, kind = amqp.connect { url = url, cert_file = T.cert, key_file = T.key, connect_timeout = 5 }
    assert.is_nil(c)
    assert.equal("closed", kind)
    assert.equal(("connect to 127.0.0.1:%d: TLS: certificate verify failed: self-signed certificate in"
      .. " certificate chain (its CA is not in the system's trust store)"):format(T.port), err)
    -- the sink: the same error for the outbox (retried behind its breaker), no password anywhere
    local sink = assert(sinkrmq.new("rmq_badca", { url = url, ca_file = T.other_ca, cert_file = T.cert,
      key_file = T.key }))
    local ok
    ok, err, kind = sink:ensure("trades", TRADES)
    assert.is_nil(ok)
    assert.equal("closed", kind)
    assert.equal(("rabbitmq: connect to 127.0.0.1:%d: TLS: certificate verify failed: self-signed certificate"
      .. " in certificate chain (its CA is not in ca_file)"):format(T.port), err)
    assert.is_nil(json.encode(sink:stats()):find("s3cr3t", 1, true))
    assert.is_false(sink:stats().connected)
    sink:close()
  end)

  it("a host name the certificate does not name fails the connection", function()
    -- the certificate names IP 127.0.0.1 only; localhost reaches the same listener
    local c, err, kind = amqp.connect(tls_opts { url = srv:tls_url("localhost") })
    assert.is_nil(c)
    assert.equal("closed", kind)
    assert.equal(("connect to localhost:%d: TLS: certificate verify failed: hostname mismatch: the certificate"
      .. " does not name localhost"):format(T.port), err)
  end)

  it("the broker refusing a client without a certificate is a clear error", function()
    local c, err, kind = amqp.connect { url = srv:tls_url(), ca_file = T.ca, connect_timeout = 5, timeout = 10 }
    assert.is_nil(c)
    assert.equal("closed", kind)
    -- the broker's alert, when it is read before the broker's close resets
    -- the connection (the protocol header written after the handshake may
    -- meet the reset first)
    assert.truthy(err == "login: a SSL error occurred (tlsv13 alert certificate required)"
      or err == "login: a SSL error occurred (the broker reset the connection)", err)
  end)

  it("a TLS file that cannot be used fails the connection with its name and the reason", function()
    local c, err, kind = amqp.connect(tls_opts { ca_file = srv.dir .. "/tls/none.pem" })
    assert.is_nil(c)
    assert.equal("closed", kind)
    assert.equal("TLS: ca_file " .. srv.dir .. "/tls/none.pem: No such file or directory", err)
    c, err = amqp.connect(tls_opts { key_file = srv.dir .. "/tls/server.key" })
    assert.is_nil(c)
    assert.equal("TLS: key_file " .. srv.dir .. "/tls/server.key: key values mismatch", err)
    -- an encrypted key is refused, never asked for on a terminal
    local enc = srv.dir .. "/tls/client.enc.key"
    assert.is_true(os.execute(("openssl pkey -in %s -aes256 -passout pass:pw -out %s 2>/dev/null")
      :format(T.key, enc)) == 0)
    c, err = amqp.connect(tls_opts { key_file = enc })
    assert.is_nil(c)
    assert.equal("TLS: key_file " .. enc .. ": encrypted (a key with a password is not supported)", err)
  end)

  it("verify = false connects to an unchecked broker, with one warning", function()
    local restore = logs.capture("warning")
    finally(restore)
    -- the wrong CA and a name the certificate lacks: nothing is checked
    local c = assert(amqp.connect(tls_opts { url = srv:tls_url("localhost"), ca_file = T.other_ca, verify = false }))
    assert.is_true(c:declare { exchange = "ex_noverify", type = "fanout" })
    assert.equal(3, c:publish("ex_noverify", {
      { routing_key = "", body = "1" }, { routing_key = "", body = "2" }, { routing_key = "", body = "3" } }))
    local warned = logs.logged(VERIFY_OFF)
    assert.equal(1, #warned)
    assert.equal("warning", warned[1].level)
    assert.equal("localhost:" .. T.port, warned[1].broker)
    c:close()
    -- verification stays on unless verify = false is given
    local d, err = amqp.connect(tls_opts { url = srv:tls_url("localhost"), verify = true })
    assert.is_nil(d)
    assert.truthy(err:find("hostname mismatch", 1, true), err)
    assert.equal(1, #logs.logged(VERIFY_OFF))
  end)

  it("a task killed while it waits on a TLS connection is never resumed; the next operation reconnects", function()
    local c = assert(amqp.connect(tls_opts()))
    assert.is_true(c:declare { queue = "q_tls_empty", durable = false })
    local resumed = false
    local t = sluice.spawn(function()
      c:consume("q_tls_empty", 10, 30) -- nothing comes: it waits
      resumed = true
    end)
    wait_for("the consume to wait", function() return sluice.status(t) == "waiting" end)
    assert.is_true(sluice.kill(t))
    -- stopped at its next wait, the connection dropped: a new TLS connection
    assert.equal(1, c:publish("", { { routing_key = "q_tls_empty", body = "x" } }))
    assert.is_false(resumed)
    assert.same({ true, 0, 2 }, { c:status().connected, c:status().pending, c:status().connects })
    c:close()
  end)

end)
