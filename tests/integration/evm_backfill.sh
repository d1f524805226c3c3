#!/usr/bin/env bash
# evm_backfill.sh -- `sluice backfill CONFIG evm_blocks --from 0 --to 2000`
# against a real node (anvil, 2,000 blocks mined, some with transfers):
# killed with SIGKILL at random moments (seeded, logged) and re-run until it
# exits 0, the store holds every block 0..1999 exactly once, canonical, with
# the node's hash and parent hash; then two processes with their own stores
# share the same range through a real redis-server's window claims: every
# window fetched once between them, every block in one of the two stores.
# EVM_BACKFILL_SEED overrides the seed of the kill delays.
. "$(dirname "$0")/common.bash"

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ANVIL=${SLUICE_ANVIL:-$ROOT/tests/tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil}
SEED=${EVM_BACKFILL_SEED:-$$}
RANDOM=$SEED
N=2000
STEP=50
WINDOWS=$((N / STEP))
echo "# seed $SEED"

if [ ! -x "$ANVIL" ]; then
  not_ok "anvil at $ANVIL (scripts/dev.sh deps installs it; or set SLUICE_ANVIL)"
  finish
  exit 1
fi
PORT=$(free_port)
"$ANVIL" --host 127.0.0.1 --port "$PORT" --chain-id 1 --silent >"$WORK/anvil.log" 2>&1 &
apid=$!
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; kill "$apid" 2>/dev/null; stop_redis; wait 2>/dev/null; rm -rf "$WORK"' EXIT
RPC="http://127.0.0.1:$PORT"
rpc() { curl -s -m 30 -H 'content-type: application/json' -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":$2}" "$RPC"; }
node_up() { rpc eth_blockNumber '[]' | grep -q result; }
check "anvil answers" wait_until 10 node_up
ACC=$(rpc eth_accounts '[]' | sed 's/.*"result":\["\([^"]*\)","\([^"]*\)".*/\1 \2/')
read -r A1 A2 <<<"$ACC"
for i in 1 2 3 4 5; do # blocks 1..5 carry a transfer each (automine)
  rpc eth_sendTransaction "[{\"from\":\"$A1\",\"to\":\"$A2\",\"value\":\"0x$i\"}]" >/dev/null
done
rpc anvil_mine "[\"0x$(printf %x $((N - 6)))\"]" >/dev/null
check "the node's head is block $((N - 1))" test "$(rpc eth_blockNumber '[]' | sed 's/.*"result":"\([^"]*\)".*/\1/')" = "0x$(printf %x $((N - 1)))"

# the configuration: REDIS (a redis:// URL, or empty for none), DB, RPC, RATE
cat >"$WORK/bf.lua" <<'LUA'
local rate = tonumber(os.getenv("RATE"))
local redis = os.getenv("REDIS")
return { store = os.getenv("DB"), redis = redis ~= "" and redis or nil, log = { level = "warning" },
  collectors = { { use = "evm_blocks", rpc_url = os.getenv("RPC"), batch_size = 10, backfill_step = 50,
    limiter = { rate = rate, max_rate = rate, burst = 10 },
    retry = { max_attempts = 3, base_delay = 0.05, max_delay = 0.2 } } } }
LUA
# check.lua DBS: the blocks of the stores together against the node's
# chain; prints "rows distinct missing wrong orphans".
cat >"$WORK/check.lua" <<'LUA'
local store = require "sluice.store"
local http = require "sluice.http"
local json = require "sluice.json"
local N = tonumber(os.getenv("N"))
local node = {}
for lo = 0, N - 1, 500 do
  local body = json.array()
  for n = lo, lo + 499 do
    body[#body + 1] = { jsonrpc = "2.0", id = n, method = "eth_getBlockByNumber",
      params = { string.format("0x%x", n), false } }
  end
  local res = assert(http.post(os.getenv("RPC"), { json = body, timeout = 60 }))
  for _, r in ipairs(assert(json.decode(res.body))) do node[r.id] = r.result end
end
local seen, rows, wrong, orphans = {}, 0, 0, 0
for path in os.getenv("DBS"):gmatch("%S+") do
  local db = assert(store.open(path))
  for _, r in ipairs(assert(db:query("SELECT number, hash, parent_hash, tx_count, orphaned FROM evm_blocks"))) do
    rows = rows + 1
    seen[r.number] = true
    local b = node[r.number]
    if not b or b.hash ~= r.hash or b.parentHash ~= r.parent_hash or #b.transactions ~= r.tx_count then
      wrong = wrong + 1
    end
    orphans = orphans + r.orphaned
  end
  db:close()
end
local distinct, missing = 0, 0
for _ in pairs(seen) do distinct = distinct + 1 end
for n = 0, N - 1 do if not seen[n] then missing = missing + 1 end end
print(rows, distinct, missing, wrong, orphans)
LUA
verify() { env DBS="$*" N=$N RPC="$RPC" "$SLUICE" run "$WORK/check.lua" --control none; }
bf() { # bf NAME RATE [args...]: one instance on its own store
  local name=$1 rate=$2; shift 2
  env DB="$WORK/$name.db" RPC="$RPC" RATE="$rate" REDIS="${REDIS:-}" timeout 120 "$SLUICE" backfill \
    "$WORK/bf.lua" evm_blocks --from 0 --to $N "$@"
}

# 1. Killed with SIGKILL at random moments, re-run each time, then to the end.
kills=0
for attempt in 1 2 3 4 5 6; do
  bf k 300 --parallel 2 >"$WORK/k$attempt.out" 2>&1 &
  pk=$!
  pids+=($pk)
  delay=$(awk -v r=$((RANDOM % 1000)) 'BEGIN { printf "%.3f", 0.3 + r / 1000 }')
  if ended_within $pk "$delay"; then
    echo "# attempt $attempt ended by itself (exit $code) before its kill at $delay s"
    [ "$code" = 0 ] && break
  else
    kill -KILL $pk
    wait $pk 2>/dev/null
    read -r rows distinct missing wrong orphans < <(verify "$WORK/k.db")
    [ "$rows" -lt $N ] && kills=$((kills + 1))
    echo "# killed after $delay s: $rows blocks stored"
    check "after the kill at $delay s: no block twice, none wrong ($rows rows, $distinct distinct, $wrong wrong)" \
      test "$rows" = "$distinct" -a "$wrong" = 0 -a "$orphans" = 0
  fi
done
check "killed mid-job at least 3 times ($kills)" test "$kills" -ge 3
bf k 2000 --parallel 2 >"$WORK/kfinal.out" 2>&1
code=$?
check "the last run finishes (exit $code)" test "$code" = 0
sed 's/^/    /' "$WORK/kfinal.out"
read -r rows distinct missing wrong orphans < <(verify "$WORK/k.db")
check "every block 0..$((N - 1)) stored exactly once with the node's hash ($rows rows, $missing missing, $wrong wrong)" \
  test "$rows" = $N -a "$distinct" = $N -a "$missing" = 0 -a "$wrong" = 0 -a "$orphans" = 0
expect_exit "a rerun has nothing to fetch" 0 bf k 2000
contains "every window already done" "$WORK/out" "0 of 0 windows done, 0 failed, $WINDOWS skipped"

# 2. Two processes, own stores, one range shared through Redis claims.
start_redis || { finish; exit 1; }
export REDIS="redis://127.0.0.1:$REDIS_PORT/0"
bf a 300 --parallel 2 >"$WORK/a.out" 2>&1 & pa=$!
bf b 300 --parallel 2 >"$WORK/b.out" 2>&1 & pb=$!
pids+=($pa $pb)
wait $pa; ca=$?
wait $pb; cb=$?
check "A exits 0 (exit $ca)" test "$ca" = 0
check "B exits 0 (exit $cb)" test "$cb" = 0
sed 's/^/    /' "$WORK/a.out" "$WORK/b.out"
done_of() { sed -n 's/.*; \([0-9]*\) of [0-9]* windows done.*/\1/p' "$WORK/$1.out"; }
da=$(done_of a); db=$(done_of b)
check "A and B did every window between them once (A $da, B $db)" test "$((da + db))" = $WINDOWS
check "both took part" test "$da" -gt 0 -a "$db" -gt 0
read -r rows distinct missing wrong orphans < <(verify "$WORK/a.db" "$WORK/b.db")
check "the stores together hold every block once ($rows rows, $missing missing, $wrong wrong)" \
  test "$rows" = $N -a "$distinct" = $N -a "$missing" = 0 -a "$wrong" = 0
keys=$(rcli --scan --pattern 'backfill:evm_blocks:*' | wc -l)
check "one done mark per window ($keys)" test "$keys" = $WINDOWS

finish
