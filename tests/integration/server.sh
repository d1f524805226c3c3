#!/usr/bin/env bash
# server.sh -- sluice.server against curl: routing, errors, fault injection,
# concurrency and shutdown with requests in flight.
. "$(dirname "$0")/common.bash"

if ! command -v curl >/dev/null; then
  echo "curl is required (apt-get install curl)"
  exit 1
fi

cat >"$WORK/server.lua" <<'LUA'
local sluice = require "sluice"
local server = require "sluice.server"
io.stdout:setvbuf("line")
local srv = assert(server.listen{ port = 0, max_body = 1024 })
srv:route("GET", "/ping", function() return 200, "pong", { ["X-Reply"] = "yes" } end)
srv:route("POST", "/echo", function(req)
  local doc, err = req:json()
  return 200, {
    method = req.method, path = req.path, query = req.query,
    all_b = req.query_all.b, header = req.headers["X-Custom"],
    ctype = req.headers["content-type"], json = doc, err = err, size = #req.body,
  }
end)
srv:route("GET", "/files/*", function(req) return "file " .. req.path end)
srv:route("GET", "/status/*", function(req)
  return tonumber(req.path:match("%d+$")), "", { ["Retry-After"] = "7" }
end)
srv:route("GET", "/boom", function() error("handler exploded") end)
-- two requests meet only when their handlers run at the same time: each
-- waits (bounded) for the other to arrive
local arrived = 0
srv:route("GET", "/meet", function()
  arrived = arrived + 1
  local deadline = sluice.now() + 4
  while arrived < 2 and sluice.now() < deadline do sluice.sleep(0.01) end
  return arrived >= 2 and "met" or "alone"
end)
srv:route("GET", "/abort", function(req) req:abort() end)
srv:route("GET", "/stream", function(req)
  req:start(200, { ["Content-Type"] = "text/plain" })
  for i = 1, 3 do
    req:write("part" .. i .. "\n")
    sluice.sleep(0.1)
  end
  req:finish()
end)
srv:route("GET", "/truncated", function(req)
  req:start(200, { ["Content-Length"] = 1000 })
  req:write(string.rep("x", 100))
  sluice.sleep(0.1)
  req:abort()
end)
srv:route("GET", "/inflight", function()
  print("inflight started")
  sluice.sleep(0.5)
  return "finished"
end)
print("port " .. srv.port)
LUA

"$SLUICE" run "$WORK/server.lua" --log-format json >"$WORK/server.out" 2>&1 &
pid=$!
port=
port_known() { port=$(awk '/^port /{print $2}' "$WORK/server.out"); [ -n "$port" ]; }
check "server started and printed its port" wait_until 5 port_known
base="http://127.0.0.1:$port"

# req NAME ARGS...: runs curl (bounded), leaves headers+body in $WORK/res and
# the exit code in $code.
req() {
  curl -s -i --max-time 5 "$@" >"$WORK/res" 2>&1
  code=$?
}
status_is() { head -1 "$WORK/res" | grep -q " $1 "; }

req "$base/ping"
check "GET /ping answers 200" status_is 200
contains "GET /ping body" "$WORK/res" "pong"
contains "handler headers are sent" "$WORK/res" "X-Reply: yes"
contains "default content-type" "$WORK/res" "Content-Type: text/plain; charset=utf-8"

req -X POST -H "X-Custom: hello" -H "Content-Type: application/json" \
  --data '{"n":[1,2,3]}' "$base/echo?a=1&b=x+y&b=%41&c=%E2%82%AC"
check "POST /echo answers 200" status_is 200
contains "table body is JSON" "$WORK/res" "Content-Type: application/json"
contains "JSON request body decoded" "$WORK/res" '"json":{"n":[1,2,3]}'
contains "query decoded, last value wins" "$WORK/res" '"b":"A"'
contains "query_all keeps every value" "$WORK/res" '"all_b":["x y","A"]'
contains "percent-encoded UTF-8 in the query" "$WORK/res" $'"c":"\xe2\x82\xac"'
contains "headers are case-insensitive" "$WORK/res" '"header":"hello"'
contains "content-type seen by the handler" "$WORK/res" '"ctype":"application\/json"'

req -X POST --data 'not json' "$base/echo"
contains "bad JSON gives nil, err to the handler" "$WORK/res" '"err":"invalid JSON at byte 1: invalid string in json text"'

req "$base/files/a/b.txt"
contains "prefix route" "$WORK/res" "file /files/a/b.txt"
req "$base/status/503"
check "handler chooses the status" status_is 503
contains "with its headers" "$WORK/res" "Retry-After: 7"

req "$base/nowhere"
check "unknown path is 404" status_is 404
req -X DELETE "$base/ping"
check "wrong method is 405" status_is 405
contains "405 has an Allow header" "$WORK/res" "Allow: GET, HEAD"
head -c 2048 /dev/zero | tr '\0' x >"$WORK/big"
req -X POST --data-binary @"$WORK/big" "$base/echo"
check "a body over max_body is 413" status_is 413

req "$base/boom"
check "a failing handler gives 500" status_is 500
contains "the failure is logged with its traceback" "$WORK/server.out" '"traceback":"stack traceback:'
contains "the log names the error" "$WORK/server.out" 'handler exploded'
req "$base/ping"
check "the server still answers after a failure" status_is 200

curl -s --max-time 10 "$base/meet" >"$WORK/meet1" &
c1=$!
curl -s --max-time 10 "$base/meet" >"$WORK/meet2" &
c2=$!
wait $c1 $c2
check "two requests are handled concurrently (each handler saw the other)" \
  test "$(cat "$WORK/meet1" "$WORK/meet2")" = "metmet"

req "$base/abort"
check "req:abort() gives curl an empty reply (exit $code)" test "$code" -eq 52

start=$(date +%s.%N)
curl -s --max-time 5 "$base/stream" >"$WORK/stream"
code=$?
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
check "streamed reply completes (exit $code)" test "$code" -eq 0
check "all streamed parts arrive" test "$(cat "$WORK/stream")" = $'part1\npart2\npart3'
check "the parts were paced (took $elapsed s)" awk -v e="$elapsed" 'BEGIN { exit !(e >= 0.25) }'

curl -s --max-time 5 "$base/truncated" >"$WORK/trunc"
code=$?
check "a truncated body makes curl fail with 18 (exit $code)" test "$code" -eq 18
check "the part written before the abort arrived" test "$(wc -c <"$WORK/trunc")" -eq 100

# SIGTERM with a request in flight: the request finishes, the process exits 0.
curl -s --max-time 5 "$base/inflight" >"$WORK/inflight" &
c1=$!
wait_for_text "$WORK/server.out" "inflight started" 2
kill -TERM "$pid"
start=$(date +%s.%N)
wait "$pid"
code=$?
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
wait $c1
ccode=$?
check "SIGTERM with a request in flight exits 0 (got $code)" test "$code" -eq 0
check "and promptly (took $elapsed s)" awk -v e="$elapsed" 'BEGIN { exit !(e < 3) }'
check "the request in flight was answered (curl exit $ccode)" test "$(cat "$WORK/inflight")" = "finished"
req "$base/ping"
check "after shutdown nothing listens (curl exit $code)" test "$code" -eq 7

# A server keeps `sluice run` alive until srv:close().
cat >"$WORK/closes.lua" <<'LUA'
local sluice = require "sluice"
local server = require "sluice.server"
local srv = assert(server.listen{})
sluice.after(0.2, function() srv:close(); print("closed") end)
LUA
expect_exit "a script whose server closes exits 0" 0 timeout 10 "$SLUICE" run "$WORK/closes.lua"
contains "it ran until the close" "$WORK/out" "closed"

finish
