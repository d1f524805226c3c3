--- support.nginx: start a real nginx on a free loopback port for a spec.
--
--   local nginx = require("support.nginx").start{ locations = [[ ... ]] }
--   ... nginx.url("/doc.json") ...
--   nginx:stop()
--
-- Each instance has its own prefix directory (config, logs, temp files,
-- document root) and is stopped by stop(), which also removes the directory.
-- Starting blocks the loop for the few milliseconds nginx takes to bind.
local _M = {}
local mt = { __index = _M }

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == 0 or ok == true
end

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  f:close()
end

--- start{locations = "nginx location blocks", files = {name = content},
--        http = "extra http-level directives", ssl = true} -> instance
-- ssl = true serves https with a throw-away self-signed certificate for
-- 127.0.0.1 (clients need insecure = true); url() then says https.
-- http2 = true serves HTTP/2: over TLS by ALPN with ssl, else cleartext
-- to clients with prior knowledge (h2c) only.
function _M.start(opts)
  opts = opts or {}
  local p = io.popen("mktemp -d /tmp/sluice-nginx.XXXXXX")
  local dir = p:read("*l")
  p:close()
  assert(dir and dir ~= "", "mktemp failed")
  local root = dir .. "/html"
  assert(sh("mkdir -p " .. root .. " && chmod 755 " .. dir .. " " .. root))
  for name, content in pairs(opts.files or {}) do
    write(root .. "/" .. name, content)
    sh("chmod 644 '" .. root .. "/" .. name .. "'")
  end
  local ssl = ""
  if opts.ssl then
    assert(sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
      .. " -subj /CN=127.0.0.1 -days 2 -keyout " .. dir .. "/key.pem -out " .. dir
      .. "/cert.pem 2>/dev/null"), "openssl could not make a certificate")
    ssl = "    ssl_certificate " .. dir .. "/cert.pem; ssl_certificate_key " .. dir .. "/key.pem;"
  end
  local nginx_bin = "/usr/sbin/nginx"
  -- different sequences in concurrent test processes
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 1e6)
  for _ = 1, 20 do
    local port = math.random(20000, 32000) -- below the ephemeral range
    local conf = table.concat({
      "worker_processes 1;",
      "pid " .. dir .. "/nginx.pid;",
      "error_log " .. dir .. "/error.log warn;",
      "events { worker_connections 4096; }",
      "http {",
      "  access_log off;",
      "  client_body_temp_path " .. dir .. "/body;",
      "  proxy_temp_path " .. dir .. "/proxy;",
      "  fastcgi_temp_path " .. dir .. "/fastcgi;",
      "  uwsgi_temp_path " .. dir .. "/uwsgi;",
      "  scgi_temp_path " .. dir .. "/scgi;",
      "  keepalive_requests 1000000;",
      "  default_type application/octet-stream;",
      opts.http or "",
      "  server {",
      "    listen 127.0.0.1:" .. port .. (opts.ssl and " ssl" or "")
        .. (opts.http2 and " http2" or "") .. " backlog=4096;",
      ssl,
      "    root " .. root .. ";",
      opts.locations or "",
      "  }",
      "}",
    }, "\n")
    write(dir .. "/nginx.conf", conf)
    if sh(nginx_bin .. " -p " .. dir .. " -c " .. dir .. "/nginx.conf -e "
        .. dir .. "/error.log 2>/dev/null") then
      return setmetatable({ port = port, dir = dir, root = root,
        scheme = opts.ssl and "https" or "http" }, mt)
    end
  end
  local f = io.open(dir .. "/error.log")
  local log = f and f:read("*a") or "(no error log)"
  if f then f:close() end
  sh("rm -rf " .. dir)
  error("could not start nginx: " .. log)
end

function _M:url(path)
  return self.scheme .. "://127.0.0.1:" .. self.port .. (path or "/")
end

function _M:stop()
  if self.dir then
    sh("/usr/sbin/nginx -p " .. self.dir .. " -c " .. self.dir
      .. "/nginx.conf -e " .. self.dir .. "/error.log -s stop 2>/dev/null")
    -- wait (bounded) for the master to go, so ports and files are released
    for _ = 1, 50 do
      local f = io.open(self.dir .. "/nginx.pid")
      if not f then break end
      f:close()
      sh("sleep 0.02")
    end
    sh("rm -rf " .. self.dir)
    self.dir = nil
  end
end

return _M
