# common.bash -- helpers sourced by the integration scripts (not a test).
# Each script gets the sluice binary as $1, works in its own temp dir, and
# prints one "N passed, M failed" line at the end.
set -u
SLUICE=$(readlink -f "$1")
# the specs' helpers (tests/lua/support), for checkers run with
# `"$SLUICE" run --lua-path "$SPEC_LUA" ...`
SPEC_LUA=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lua" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1"; }

# check NAME COMMAND...: passes when the command succeeds.
check() {
  local name=$1; shift
  if "$@"; then ok "$name"; else not_ok "$name"; fi
}

# expect_exit NAME CODE COMMAND...: runs the command (stdout+stderr to
# $WORK/out) and checks its exit code.
expect_exit() {
  local name=$1 want=$2; shift 2
  "$@" >"$WORK/out" 2>&1
  local got=$?
  if [ "$got" = "$want" ]; then ok "$name"; else
    not_ok "$name (exit $got, want $want)"; sed 's/^/    /' "$WORK/out"; fi
}

# contains NAME FILE TEXT: the file contains the fixed string.
contains() {
  if grep -qF -- "$3" "$2"; then ok "$1"; else
    not_ok "$1 (no '$3' in output)"; sed 's/^/    /' "$2"; fi
}

# wait_until SECONDS COMMAND...: runs the command every 0.05 s until it
# succeeds (returns 0) or SECONDS (may be fractional) have passed (returns
# 1). Wait for a condition this way, never with a sleep long enough "for it
# to have happened".
wait_until() {
  local limit=$1; shift
  local deadline=$(( ${EPOCHREALTIME//[!0-9]/} + $(awk -v s="$limit" 'BEGIN { printf "%d", s * 1000000 }') ))
  until "$@"; do
    (( ${EPOCHREALTIME//[!0-9]/} < deadline )) || return 1
    sleep 0.05
  done
}

# wait_for_text FILE TEXT [SECONDS]: until FILE contains the fixed string
# TEXT, at most SECONDS (5).
wait_for_text() { wait_until "${3:-5}" grep -qsF -- "$2" "$1"; }

# gone PID: the process no longer runs.
gone() { ! kill -0 "$1" 2>/dev/null; }

# ended_within PID SECONDS: the process (a child of this shell) is gone
# within SECONDS; its exit code is left in $code.
ended_within() {
  wait_until "$2" gone "$1" || return 1
  wait "$1"
  code=$?
}

# free_port: prints a loopback port nothing listens on (the kernel's pick,
# through sluice.server).
free_port() {
  [ -f "$WORK/port.lua" ] || cat >"$WORK/port.lua" <<'LUA'
local srv = assert(require("sluice.server").listen({ port = 0 }))
print(srv.port)
srv:close()
LUA
  "$SLUICE" run "$WORK/port.lua" --control none
}

# start_redis [PASSWORD]: a private redis-server (no persistence) on a free
# loopback port, $REDIS_PORT, ready when this returns (with PASSWORD, it
# requires it: requirepass); stop_redis shuts it down (call it from the
# script's EXIT trap). Fails when redis-server is missing.
start_redis() {
  REDIS_PASSWORD=${1:-}
  local auth=()
  [ -n "$REDIS_PASSWORD" ] && auth=(--requirepass "$REDIS_PASSWORD")
  if ! command -v redis-server >/dev/null; then
    not_ok "redis-server available (apt-get install redis-server)"
    return 1
  fi
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$WORK/redis.pid" --dir "$WORK" --logfile "$WORK/redis.log" "${auth[@]}"
  local _
  for _ in $(seq 1 50); do
    [ "$(rcli ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  not_ok "redis-server started on $REDIS_PORT"
  return 1
}
# rcli ARGS...: redis-cli against the private server (with its password)
rcli() {
  if [ -n "${REDIS_PASSWORD:-}" ]; then
    REDISCLI_AUTH=$REDIS_PASSWORD redis-cli -p "${REDIS_PORT:-0}" "$@"
  else redis-cli -p "${REDIS_PORT:-0}" "$@"; fi
}
stop_redis() { rcli shutdown nosave >/dev/null 2>&1; }

# start_postgres: a private PostgreSQL server (initdb into a temp dir of
# its own, $PG_DIR; trust authentication, TCP on 127.0.0.1 only, fsync off)
# on a free loopback port, $PG_PORT, ready when this returns. $PG_URL is
# its URL: database postgres, superuser $PG_USER ("sluice_pg" unless set
# before; not "postgres": sluice.redact hides a URL's user name wherever it
# appears in /status, which would hide a sink named postgres too). As root
# the server runs as the postgres system user (PostgreSQL refuses root),
# which owns $PG_DIR, as tests/lua/support/postgres.lua does.
# stop_postgres [MODE] stops it (fast: clients are disconnected);
# restart_postgres starts it again on the same port and data;
# shutdown_postgres stops it and removes $PG_DIR (call it from the script's
# EXIT trap). pg_sql SQL: psql -At against it (fields separated by |).
# Fails when Debian's postgresql is missing.
PG_BIN=/usr/lib/postgresql/15/bin
as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
start_postgres() {
  if [ ! -x "$PG_BIN/pg_ctl" ]; then
    not_ok "postgresql available (apt-get install postgresql)"
    return 1
  fi
  PG_DIR=$(mktemp -d /tmp/sluice-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$PG_DIR"
  PG_USER=${PG_USER:-sluice_pg}
  if ! as_postgres "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U "$PG_USER" -E UTF8 --no-sync \
      >"$PG_DIR/initdb.log" 2>&1; then
    not_ok "initdb (see $PG_DIR/initdb.log)"
    return 1
  fi
  PG_PORT=$(free_port)
  PG_URL="postgresql://$PG_USER@127.0.0.1:$PG_PORT/postgres"
  restart_postgres || { not_ok "postgres started on $PG_PORT"; return 1; }
}
restart_postgres() {
  as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 30 \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null 2>&1
}
stop_postgres() {
  as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m "${1:-fast}" -w -t 30 stop >/dev/null 2>&1
}
shutdown_postgres() {
  [ -n "${PG_DIR:-}" ] || return 0
  [ -f "$PG_DIR/data/postmaster.pid" ] && stop_postgres immediate
  rm -rf "$PG_DIR"
  PG_DIR=""
}
pg_sql() {
  "$PG_BIN/psql" -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -c "$1"
}

# backfill_config FILE LEVEL: writes a configuration that backfills
# binance_klines (BTCUSDT and ETHUSDT, 1m candles, quick retries) from the
# mock Binance it starts in the same process with seed 42, so that every
# run serves the same candles; DB (the store) and RATE (requests a second)
# come from the environment, LEVEL is the log level.
backfill_config() {
  cat >"$1" <<LUA
local sluice = require "sluice"
local mock = require("sluice.mock.binance").start({ seed = 42 })
sluice.on_shutdown(function() mock:stop() end)
local rate = tonumber(os.getenv("RATE"))
return { store = os.getenv("DB"), log = { level = "$2" }, collectors = {
  { use = "binance_klines", base_url = mock.url, symbols = { "BTCUSDT", "ETHUSDT" }, candle = "1m",
    limiter = { rate = rate, max_rate = rate },
    retry = { max_attempts = 3, base_delay = 0.05, max_delay = 0.2 } } } }
LUA
}

finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}
