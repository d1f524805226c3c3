#!/usr/bin/env bash
# deploy_systemd.sh -- deploy/systemd/sluice.service as shipped: accepted by
# systemd-analyze verify without a complaint, with the settings the README
# promises; and its ExecStart, run as systemd would (a $NOTIFY_SOCKET to
# read), on the shipped configuration (deploy/sluice.lua, pointed at a mock
# exchange through SLUICE_* overrides): READY=1 once the collectors have
# started and /health answers, a SIGHUP (ExecReload) reloads the edited
# file, SIGTERM (KillSignal) is graceful: STOPPING=1, exit 0 well within
# TimeoutStopSec. And the README's online backups of the SQLite file
# (sqlite3's .backup, VACUUM INTO) while it collects.
. "$(dirname "$0")/common.bash"

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
UNIT=$ROOT/deploy/systemd/sluice.service
PY=/usr/bin/python3

setting() { sed -n "s/^$1=//p" "$UNIT"; }

# --- the unit file ---------------------------------------------------------------
# verify checks ExecStart's binary exists: this build's, at the unit's
# path for it
sed "s|/usr/bin/sluice|$SLUICE|" "$UNIT" >"$WORK/sluice.service"
systemd-analyze verify --man=no "$WORK/sluice.service" >"$WORK/verify.out" 2>&1
code=$?
if [ "$code" = 0 ] && [ ! -s "$WORK/verify.out" ]; then ok "systemd-analyze verify: no complaint"; else
  not_ok "systemd-analyze verify: no complaint (exit $code)"; sed 's/^/    /' "$WORK/verify.out"; fi
# and it does complain about a mistake (the check above can fail)
{ cat "$WORK/sluice.service"; echo "[Service]"; echo "ProtectSytem=strict"; } >"$WORK/bad.service"
systemd-analyze verify --man=no "$WORK/bad.service" >"$WORK/verify.out" 2>&1
contains "verify names a misspelt setting" "$WORK/verify.out" "Unknown key 'ProtectSytem'"

for want in Type=notify NotifyAccess=main 'ExecReload=/bin/kill -HUP $MAINPID' KillSignal=SIGTERM \
    Restart=on-failure DynamicUser=yes StateDirectory=sluice RuntimeDirectory=sluice \
    ProtectSystem=strict NoNewPrivileges=yes ProtectHome=yes PrivateTmp=yes PrivateDevices=yes \
    'CapabilityBoundingSet=' 'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6' \
    SystemCallFilter=@system-service WantedBy=multi-user.target; do
  check "unit: $want" grep -qxF -- "$want" "$UNIT"
done
check "unit: no MemoryDenyWriteExecute (LuaJIT's JIT writes code)" bash -c "! grep -q '^MemoryDenyWriteExecute' '$UNIT'"

exec_start=$(setting ExecStart)
read -r -a argv <<<"$exec_start"
check "ExecStart runs /usr/bin/sluice run /etc/sluice/sluice.lua" \
  [ "${argv[0]} ${argv[1]} ${argv[2]}" = "/usr/bin/sluice run /etc/sluice/sluice.lua" ]
check "the control socket is in the RuntimeDirectory" [ "${argv[3]} ${argv[4]}" = "--control /run/sluice/sluice.sock" ]
check "the configuration's store is in the StateDirectory" \
  grep -qF 'store = "/var/lib/sluice/sluice.db"' "$ROOT/deploy/sluice.lua"
stop=$(setting TimeoutStopSec)
grace=$(sed -n 's/^ *shutdown_timeout = \([0-9]*\),.*/\1/p' "$ROOT/deploy/sluice.lua")
check "TimeoutStopSec ($stop s) leaves the shutdown_timeout ($grace s) time to end" \
  [ -n "$grace" ] && [ "$stop" -gt "$grace" ]

# --- ExecStart as systemd runs it ----------------------------------------------------
# the mock exchange, in a sluice of its own
cat >"$WORK/mock.lua" <<LUA
local m = require("sluice.mock.binance").start({})
local f = assert(io.open("$WORK/mock.url.tmp", "w"))
f:write(m.url)
f:close()
assert(os.rename("$WORK/mock.url.tmp", "$WORK/mock.url"))
LUA
"$SLUICE" run "$WORK/mock.lua" --control none >"$WORK/mock.out" 2>&1 &
mock_pid=$!
# systemd's side of the notify socket: each datagram as a line
$PY -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
open(sys.argv[2] + ".tmp", "w").close()
import os; os.rename(sys.argv[2] + ".tmp", sys.argv[2])
while True:
    msg = s.recv(4096).decode()
    with open(sys.argv[2], "a") as f:
        f.write(msg.replace("\n", " ") + "\n")
' "$WORK/notify.sock" "$WORK/notify.log" &
py_pid=$!
sluice_pid=""
trap 'kill $sluice_pid $mock_pid $py_pid 2>/dev/null; wait $sluice_pid $mock_pid $py_pid 2>/dev/null; rm -rf "$WORK"' EXIT
wait_until 10 test -s "$WORK/mock.url" || { not_ok "the mock exchange started"; cat "$WORK/mock.out"; finish; exit 1; }
wait_until 10 test -e "$WORK/notify.log" || { not_ok "the notify listener started"; finish; exit 1; }

mkdir -p "$WORK/etc" "$WORK/run"
cp "$ROOT/deploy/sluice.lua" "$WORK/etc/sluice.lua"
ADMIN_PORT=$(free_port)
run_argv=("$SLUICE" "${argv[@]:1}")
run_argv=("${run_argv[@]//\/etc\/sluice\/sluice.lua/$WORK/etc/sluice.lua}")
run_argv=("${run_argv[@]//\/run\/sluice\//$WORK/run/}")
NOTIFY_SOCKET=$WORK/notify.sock SLUICE_STORE=$WORK/sluice.db SLUICE_ADMIN__PORT=$ADMIN_PORT \
  SLUICE_COLLECTORS__BINANCE_KLINES__BASE_URL=$(cat "$WORK/mock.url") \
  SLUICE_COLLECTORS__BINANCE_KLINES__INTERVAL=1 \
  "${run_argv[@]}" >"$WORK/sluice.out" 2>&1 &
sluice_pid=$!

wait_for_text "$WORK/notify.log" "READY=1" 30
check "READY=1 reaches \$NOTIFY_SOCKET" [ "$(head -1 "$WORK/notify.log")" = "READY=1" ]
check "after every collector has started" wait_for_text "$WORK/sluice.out" '"msg":"sluice started"'
health=$(curl -s --max-time 5 -o "$WORK/health.json" -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/health")
check "the admin API answers once ready (/health $health)" [ "$health" = 200 ]
collected() { curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/status" | grep -q '"data_points_collected":[1-9]'; }
check "the shipped configuration collects (from the mock)" wait_until 30 collected
check "the control socket is where ExecStart puts it" test -S "$WORK/run/sluice.sock"

# the README's online backups, while it collects
sqlite3 "$WORK/sluice.db" ".backup '$WORK/backup.db'" >"$WORK/backup.out" 2>&1
check "sqlite3 .backup while it runs" [ $? = 0 ]
# VACUUM INTO rebuilds indexes, some with sluice's collation
# (sluice_decimal), which the sqlite3 shell lacks: it runs in the process
sqlite3 "$WORK/sluice.db" "VACUUM INTO '$WORK/cli-vacuum.db'" >>"$WORK/backup.out" 2>&1
check "VACUUM INTO from the sqlite3 shell fails, as the README says" [ $? != 0 ]
contains "for want of the collation" "$WORK/backup.out" "no such collation sequence: sluice_decimal"
"$SLUICE" repl "$WORK/run/sluice.sock" -e \
  "require('sluice.app').current.store:exec('VACUUM INTO ?', '$WORK/vacuum.db')" >>"$WORK/backup.out" 2>&1
check "VACUUM INTO through the REPL while it runs" [ $? = 0 ]
for b in backup vacuum; do
  check "the $b copy is intact" [ "$(sqlite3 "$WORK/$b.db" 'PRAGMA integrity_check')" = ok ]
  rows=$(sqlite3 "$WORK/$b.db" 'SELECT COUNT(*) FROM klines' 2>&1)
  check "the $b copy has the klines ($rows rows)" [ "${rows:-0}" -gt 0 ]
done

# ExecReload: SIGHUP re-reads the edited file
sed -i 's/candle = "1m", interval = 60 }/candle = "1m", interval = 60, enabled = false }/' "$WORK/etc/sluice.lua"
kill -HUP "$sluice_pid"
disabled() { curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/status" | grep -q '"status":"disabled"'; }
check "SIGHUP reloads the edited configuration" wait_until 20 disabled
contains "logged" "$WORK/sluice.out" "SIGHUP received: reloading"
check "no reload refused" bash -c "! grep -q 'reload refused' '$WORK/sluice.out'"
check "still running" kill -0 "$sluice_pid"

# KillSignal: SIGTERM is graceful
kill -TERM "$sluice_pid"
code=""
if ended_within "$sluice_pid" "$stop"; then ok "SIGTERM: it ends within TimeoutStopSec"; else not_ok "SIGTERM: it ends within TimeoutStopSec"; fi
sluice_pid=""
check "exit code 0 (systemd sees a clean stop, no restart)" [ "$code" = 0 ]
wait_for_text "$WORK/notify.log" "STOPPING=1" 5
check "notified: READY=1, then STOPPING=1, nothing else" \
  [ "$(cat "$WORK/notify.log")" = "$(printf 'READY=1\nSTOPPING=1')" ]
contains "shut down gracefully" "$WORK/sluice.out" "SIGTERM received: shutting down"

finish
