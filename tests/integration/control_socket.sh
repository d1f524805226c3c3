#!/usr/bin/env bash
# control_socket.sh -- the control socket under awkward clients: a client
# that half-closes still gets its reply, input is bounded while an
# evaluation runs, and a too-large request closes its connection.
. "$(dirname "$0")/common.bash"

SOCK="$WORK/ctl.sock"
cat >"$WORK/svc.lua" <<'LUA'
local sluice = require "sluice"
io.stdout:setvbuf("line")
sluice.every(0.5, function() end)
print("ready")
LUA
"$SLUICE" run "$WORK/svc.lua" --control "$SOCK" --log-format json >"$WORK/svc.out" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$WORK"' EXIT
check "service started" wait_until 5 sh -c "grep -q ready '$WORK/svc.out' && test -S '$SOCK'"

client() { # client MODE: talks to the socket, prints what it concluded
  python3 - "$SOCK" "$pid" "$1" <<'PY'
import json, os, socket, sys, time
path, pid, mode = sys.argv[1], sys.argv[2], sys.argv[3]

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(10)
    return s

def read_all(s):
    try:
        return _read_all(s)
    except ConnectionResetError:
        return b"<reset>"

def _read_all(s):
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            return out
        out += d

def fds():
    return len(os.listdir("/proc/%s/fd" % pid))

def rss_kb():
    for line in open("/proc/%s/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

if mode == "halfclose":
    s = connect()
    req = {"chunk": 'require("sluice").sleep(0.2) return "after the sleep"'}
    s.sendall((json.dumps(req) + "\n").encode())
    s.shutdown(socket.SHUT_WR)
    out = read_all(s)  # ends when the server closes
    lines = [json.loads(l) for l in out.decode().splitlines()]
    print("replies=%d ok=%s output=%s" % (len(lines), lines[0]["ok"] if lines else None,
          lines[0]["output"].strip() if lines else None))
elif mode == "toolarge":
    before = fds()
    closed = 0
    for _ in range(20):
        s = connect()
        try:
            s.sendall(b"x" * (4 * 1024 * 1024 + 100))
        except OSError:
            pass
        out = read_all(s)  # the server must close after its answer
        if b"request too large" in out:
            closed += 1
        s.close()
    deadline = time.time() + 5
    while fds() > before and time.time() < deadline:
        time.sleep(0.05)
    print("answered_and_closed=%d fd_delta=%d" % (closed, fds() - before))
elif mode == "bounded":
    s = connect()
    s.sendall((json.dumps({"chunk": 'require("sluice").sleep(3) return 1'}) + "\n").encode())
    base = rss_kb()
    s.setblocking(False)
    sent, chunk, deadline = 0, b"y" * 65536, time.time() + 2
    while time.time() < deadline and sent < 64 * 1024 * 1024:
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            time.sleep(0.01)
    grown = rss_kb() - base
    print("sent_mb=%d rss_growth_mb=%d" % (sent // 2**20, grown // 1024))
PY
}

out=$(client halfclose)
check "a half-closed client gets its reply ($out)" test "$out" = 'replies=1 ok=True output="after the sleep"'
out=$(client toolarge)
check "too-large requests are answered and closed, no descriptor kept ($out)" \
  test "$out" = "answered_and_closed=20 fd_delta=0"
out=$(client bounded)
mb=$(echo "$out" | sed -n 's/.*sent_mb=\([0-9]*\).*/\1/p')
grown=$(echo "$out" | sed -n 's/.*rss_growth_mb=\([0-9-]*\).*/\1/p')
check "input is not read without bound while evaluating ($out)" test "${mb:-99}" -lt 32 -a "${grown:-99}" -lt 16
check "the service still answers" bash -c "'$SLUICE' repl '$SOCK' -e '1+1' | grep -qx 2"

kill -TERM $pid; wait $pid; rc=$?
check "it exits 0 on SIGTERM (got $rc)" test "$rc" = 0
[ "$rc" = 0 ] || sed "s/^/    /" "$WORK/svc.out"
finish
