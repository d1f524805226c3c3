#!/usr/bin/env bash
# server_limits.sh -- sluice.server and the admin API under abuse, from raw
# sockets (python3): memory held by a flood of large unauthenticated
# uploads, the connection cap, the per-connection request deadline
# (slowloris), conflicting Content-Length headers and CONNECT.
. "$(dirname "$0")/common.bash"

if ! command -v python3 >/dev/null; then
  echo "python3 is required (apt-get install python3)"
  exit 1
fi

cat >"$WORK/limits.lua" <<'LUA'
local server = require "sluice.server"
local admin = require "sluice.admin"
io.stdout:setvbuf("line")
local app = { order = {}, collectors = {} }
local adm = assert(admin.start(app, { port = 0, token = "s3cret" }))
local plain = assert(server.listen{ port = 0 })
plain:route("POST", "/echo", function(req)
  return 200, { size = #req.body, length = req.headers["content-length"] }
end)
plain:route("GET", "/stats", function() return 200, adm:stats() end)
print("ports " .. adm.port .. " " .. plain.port)
LUA

# Under ASan, freed memory sits in a quarantine (256 MB by default) before
# it is reused, which RSS would count as held; a small one keeps the
# measurement about what sluice holds. Ignored by a normal build.
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=4" \
  "$SLUICE" run "$WORK/limits.lua" --control none >"$WORK/server.out" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; rm -rf "$WORK"' EXIT
ports=
ports_known() { ports=$(awk '/^ports /{print $2 " " $3}' "$WORK/server.out"); [ -n "$ports" ]; }
check "sluice started and printed its ports" wait_until 5 ports_known
read -r admin_port plain_port <<<"$ports"

cat >"$WORK/client.py" <<'PY'
import json, socket, sys, threading, time

pid, admin_port, plain_port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
MIB = 1024 * 1024


def check(name, cond):
    print(("ok - " if cond else "not ok - ") + name, flush=True)


def rss_mb():
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=15)


def read_until_closed(s, deadline=15):
    """Everything the server sends until it closes; (data, closed)."""
    s.settimeout(deadline)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except socket.timeout:
        return data, False
    except ConnectionResetError:
        return data, True


def status(data):
    try:
        return int(data.split(b"\r\n", 1)[0].split()[1])
    except (IndexError, ValueError):
        return None


def header(data, name):
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None


def body(data):
    return data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""


def admin_stats():
    s = connect(plain_port)
    s.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data, _ = read_until_closed(s, 5)
    s.close()
    return json.loads(body(data))


def wait_connections(n):
    t0 = time.time()
    while time.time() - t0 < 10:
        if admin_stats().get("connections") == n:
            return True
        time.sleep(0.02)
    return False


# --- 64 unauthenticated 8 MiB uploads (the admin cap), 36 more refused ----
base = rss_mb()
HEAD = (b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (8 * MIB))
hogs = [connect(admin_port) for _ in range(64)]
for s in hogs:
    s.sendall(HEAD)
check("the admin server holds 64 connections", wait_connections(64))

extra = [connect(admin_port) for _ in range(36)]
answers = [None] * len(extra)


def answer(i):
    answers[i] = read_until_closed(extra[i], 5)


readers = [threading.Thread(target=answer, args=(i,)) for i in range(len(extra))]
for t in readers:
    t.start()
for t in readers:
    t.join()
refused = sum(1 for data, closed in answers if status(data) == 503 and closed)
check("connections over the cap are answered 503 and closed (%d of 36)" % refused,
      refused == 36)
check("the 503 says why", body(answers[0][0]) == b'{"error":"too many connections"}')
for s in extra:
    s.close()

peak = [base]
done = threading.Event()


def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.02)


def upload(s, out, i):
    chunk = b"x" * 65536
    try:
        for _ in range(8 * MIB // len(chunk)):
            s.sendall(chunk)
    except OSError:
        pass
    out[i] = read_until_closed(s, 15)


sampler = threading.Thread(target=sample)
sampler.start()
replies = [None] * len(hogs)
threads = [threading.Thread(target=upload, args=(s, replies, i)) for i, s in enumerate(hogs)]
for t in threads:
    t.start()
for t in threads:
    t.join()
done.set()
sampler.join()
for s in hogs:
    s.close()
unauthorized = sum(1 for data, closed in replies if status(data) == 401 and closed)
check("each unauthenticated 8 MiB upload is answered 401 and closed (%d of 64)" % unauthorized,
      unauthorized == 64)
check("RSS grew by less than 64 MB (base %.0f MB, peak %.0f MB)" % (base, peak[0]),
      peak[0] - base < 64)
check("the connections are released", wait_connections(0))

# --- a small unauthenticated POST: 401 -------------------------------------
s = connect(admin_port)
s.sendall(b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
          b"Connection: close\r\n\r\n{}")
data, _ = read_until_closed(s, 5)
s.close()
check("an unauthenticated POST is answered 401 (got %s)" % status(data), status(data) == 401)

# --- judged on the headers: no body needs to be sent for an answer ---------
def head_only(port, head):
    s = connect(port)
    s.sendall(head)
    data, closed = read_until_closed(s, 5)
    s.close()
    return data, closed


data, closed = head_only(admin_port, HEAD)
check("an unauthenticated POST declaring 8 MiB is answered 401 before its body (got %s)"
      % status(data), status(data) == 401 and closed)
check("... with WWW-Authenticate and a JSON reason",
      header(data, "WWW-Authenticate") == "Bearer" and body(data) == b'{"error":"unauthorized"}')
data, closed = head_only(admin_port, HEAD.replace(b"Host: x", b"Host: x\r\nAuthorization: Bearer s3cret"))
check("an authenticated POST declaring 8 MiB is answered 413 before its body (got %s)"
      % status(data), status(data) == 413 and closed)
check("... with a JSON reason", body(data) == b'{"error":"request body too large"}')

# --- slowloris: headers trickled, never finished ---------------------------
s = connect(admin_port)
s.sendall(b"GET /logs HTTP/1.1\r\nHost: x\r\n")
t0 = time.time()
closed_after = None
s.settimeout(0.25)
while time.time() - t0 < 20:
    try:
        s.sendall(b"X")
        if s.recv(1024) == b"":
            closed_after = time.time() - t0
            break
    except socket.timeout:
        continue
    except OSError:
        closed_after = time.time() - t0
        break
s.close()
check("a slowloris connection is closed at the request deadline (10 s; after %s s)"
      % (closed_after and round(closed_after, 1)),
      closed_after is not None and 9 <= closed_after <= 14)

# --- conflicting Content-Length --------------------------------------------
s = connect(plain_port)
s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
          b"Content-Length: 50\r\n\r\nhello")
data, closed = read_until_closed(s, 5)
s.close()
check("conflicting Content-Length headers: 400 (got %s)" % status(data), status(data) == 400)
check("... with a JSON reason", body(data) == b'{"error":"conflicting Content-Length headers"}')
check("... and the connection closed", closed)

s = connect(plain_port)
s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
          b"Content-Length: 5\r\nConnection: close\r\n\r\nhello")
data, _ = read_until_closed(s, 5)
s.close()
check("repeated equal Content-Length headers are accepted (got %s)" % status(data),
      status(data) == 200 and json.loads(body(data))["size"] == 5)

# --- a malformed chunk size ----------------------------------------------------
s = connect(plain_port)
s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"zz\r\nhello\r\n0\r\n\r\n")
data, closed = read_until_closed(s, 5)
s.close()
check("a malformed chunk size: 400 (got %s)" % status(data), status(data) == 400)
check("... with a JSON reason", body(data) == b'{"error":"bad chunk size"}')
check("... and the connection closed", closed)
s = connect(plain_port)
s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
          b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
data, _ = read_until_closed(s, 5)
s.close()
check("a well-formed chunked body is read (got %s)" % status(data),
      status(data) == 200 and json.loads(body(data))["size"] == 5)

# --- CONNECT ---------------------------------------------------------------
s = connect(plain_port)
s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
data, closed = read_until_closed(s, 5)
s.close()
check("CONNECT: 405 (got %s)" % status(data), status(data) == 405)
check("... with a body and its Content-Length (%r)" % body(data),
      body(data) == b'{"error":"method not allowed"}'
      and header(data, "Content-Length") == str(len(body(data))))
check("... an Allow header (%s)" % header(data, "Allow"), header(data, "Allow") == "GET, HEAD, POST")
check("... and the connection closed", closed)
PY

timeout 240 python3 "$WORK/client.py" "$pid" "$admin_port" "$plain_port" >"$WORK/client.out" 2>&1
pycode=$?
while IFS= read -r line; do
  case $line in
    "ok - "*) ok "${line#ok - }" ;;
    "not ok - "*) not_ok "${line#not ok - }" ;;
    *) echo "    $line" ;;
  esac
done <"$WORK/client.out"
check "the client ran to its end (exit $pycode)" test "$pycode" -eq 0

kill -TERM "$pid"
wait "$pid"
code=$?
check "sluice exits 0 on SIGTERM (got $code)" test "$code" -eq 0
finish
