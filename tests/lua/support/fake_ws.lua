--- support.fake_ws: a connection object with sluice.ws's contract, for the
-- stream framework's specs that need no network.
--
--   local fake = require("support.fake_ws").new{ fail = 2 }  -- two refused connects first
--   s:connect("ws://x", { connector = fake.connector })
--   fake:push('{"a":1}')              -- a message for the open connection
--   fake:drop("connection reset")     -- the connection ends with that error
--   fake.urls, fake.sent              -- every connect's url, every message sent
-- receive(timeout) parks the task until a message, the end, or the timeout.
local sluice = require "sluice"

local _M = {}
local Fake = {}
local fmt = { __index = Fake }
local Conn = {}
local cmt = { __index = Conn }

function _M.new(opts)
  opts = opts or {}
  return setmetatable({ fail = opts.fail or 0, urls = {}, sent = {}, conns = {}, on_connect = opts.on_connect },
    fmt)
end

function Fake:connect(url)
  self.urls[#self.urls + 1] = url
  if self.fail > 0 then
    self.fail = self.fail - 1
    return nil, "connection refused"
  end
  local conn = setmetatable({ fake = self, queue = {}, ended = nil, stats_ = { messages_in = 0 } }, cmt)
  self.conns[#self.conns + 1] = conn
  self.current = conn
  if self.on_connect then self.on_connect(conn) end
  return conn
end

-- the connector function a stream's connect takes
function Fake:connector()
  return function(url) return self:connect(url) end
end

function Fake:push(data)
  local c = assert(self.current, "no connection")
  c:push(data)
end

function Fake:drop(err)
  local c = self.current
  if c then c:finish(err or "connection reset") end
end

function Conn:push(data)
  self.queue[#self.queue + 1] = data
  if self.waiter then sluice.unpark(self.waiter) end
end

function Conn:finish(err)
  if not self.ended then self.ended = err end
  if self.waiter then sluice.unpark(self.waiter) end
end

function Conn:receive(timeout)
  local deadline = timeout and sluice.now() + timeout
  while true do
    if #self.queue > 0 then
      self.stats_.messages_in = self.stats_.messages_in + 1
      return table.remove(self.queue, 1), "text"
    end
    if self.ended then return nil, self.ended end
    local left = deadline and deadline - sluice.now()
    if left and left <= 0 then return nil, "timeout" end
    self.waiter = sluice.current()
    local ok, why = sluice.park(left)
    self.waiter = nil
    if not ok and why ~= "timeout" then return nil, why end
  end
end

function Conn:send(data)
  if self.ended then return nil, self.ended end
  local sent = self.fake.sent
  sent[#sent + 1] = data
  if self.fake.on_send then self.fake.on_send(self, data) end
  return true
end

function Conn:close()
  self:finish("closed: 1000 normal")
  self.closed = true
  return true
end

function Conn:stats() return self.stats_ end

return _M
