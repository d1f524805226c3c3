#!/usr/bin/env bash
# evm_backfill.sh -- `sluice backfill` of evm_blocks against anvil, and the
# same eth_getBlockByNumber(n, false) calls made by a plain curl loop (one
# curl per JSON-RPC batch of the same size), measured in the same run.
#   tests/bench/evm_backfill.sh [sluice] [BLOCKS] [BATCH] [STEP]
# Mines BLOCKS (10,000) empty blocks with anvil_mine, then: the curl loop
# (the anchor: blocks/s; and the same batches from one curl process over a
# kept-alive connection, without a process per batch), `sluice backfill` with --parallel 1 (the same
# requests one after another) and --parallel 4 (the default), no limiter,
# windows of STEP (500) blocks, batches of BATCH (50) calls; prints
# blocks/s, the ratio to the anchor and the peak RSS of the sluice process
# (/usr/bin/time). Prints figures; not a test.
set -u
SLUICE=$(readlink -f "${1:-build/dev/sluice}")
BLOCKS=${2:-10000}
BATCH=${3:-50}
STEP=${4:-500}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ANVIL=${SLUICE_ANVIL:-$ROOT/tests/tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil}
WORK=$(mktemp -d)
echo 'local s = assert(require("sluice.server").listen({ port = 0 })) print(s.port) s:close()' >"$WORK/port.lua"
echo 'print(require("sluice.store").open(os.getenv("DB")):query("SELECT COUNT(*) AS n FROM evm_blocks")[1].n)' >"$WORK/count.lua"
PORT=$("$SLUICE" run "$WORK/port.lua" --control none)
"$ANVIL" --host 127.0.0.1 --port "$PORT" --chain-id 1 --silent >"$WORK/anvil.log" 2>&1 &
apid=$!
trap 'kill $apid 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
RPC="http://127.0.0.1:$PORT"
rpc() { curl -s -m 60 -H 'content-type: application/json' -d "$1" "$RPC"; }
for _ in $(seq 1 100); do rpc '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}' | grep -q result && break; sleep 0.05; done
# (anvil takes a while to mine thousands of blocks: 1000 a call, no timeout)
for ((m = 0; m < BLOCKS; m += 1000)); do
  k=$((BLOCKS - m < 1000 ? BLOCKS - m : 1000))
  curl -s -H 'content-type: application/json' \
    -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"anvil_mine\",\"params\":[\"0x$(printf %x $k)\"]}" "$RPC" >/dev/null
done
head=$(rpc '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}' | sed 's/.*"result":"0x\([^"]*\)".*/\1/')
[ "$((16#$head))" = "$BLOCKS" ] || { echo "anvil's head is $((16#$head)), not $BLOCKS"; exit 1; }
now() { date +%s.%N; }

# the anchor: one curl per batch, the batch bodies written beforehand
for ((lo = 0; lo < BLOCKS; lo += BATCH)); do
  body="["
  for ((n = lo; n < lo + BATCH && n < BLOCKS; n++)); do
    [ $n -gt $lo ] && body+=","
    printf -v hex %x $n
    body+="{\"jsonrpc\":\"2.0\",\"id\":$n,\"method\":\"eth_getBlockByNumber\",\"params\":[\"0x$hex\",false]}"
  done
  echo "$body]" >"$WORK/b$lo.json"
done
t0=$(now)
for ((lo = 0; lo < BLOCKS; lo += BATCH)); do
  curl -s -m 60 -H 'content-type: application/json' --data-binary "@$WORK/b$lo.json" "$RPC" >"$WORK/out.json"
done
t1=$(now)
grep -q '"hash"' "$WORK/out.json" || echo "curl loop: unexpected answer: $(head -c 200 "$WORK/out.json")"
anchor=$(awk -v b="$BLOCKS" -v a="$t0" -v z="$t1" 'BEGIN { printf "%.0f", b / (z - a) }')
echo "curl loop (one curl per batch of $BATCH): $BLOCKS blocks in $(awk -v a="$t0" -v z="$t1" 'BEGIN { printf "%.2f", z - a }') s, $anchor blocks/s"
# the same batches from one curl process over one kept-alive connection
args=()
for ((lo = 0; lo < BLOCKS; lo += BATCH)); do
  [ $lo -gt 0 ] && args+=(--next)
  args+=(-s -m 60 -H 'content-type: application/json' --data-binary "@$WORK/b$lo.json" -o "$WORK/out.json" "$RPC")
done
t0=$(now)
curl "${args[@]}"
t1=$(now)
keep=$(awk -v b="$BLOCKS" -v a="$t0" -v z="$t1" 'BEGIN { printf "%.0f", b / (z - a) }')
echo "one curl, kept-alive, the same batches: $BLOCKS blocks in $(awk -v a="$t0" -v z="$t1" 'BEGIN { printf "%.2f", z - a }') s, $keep blocks/s"

cat >"$WORK/bf.lua" <<LUA
return { store = os.getenv("DB"), log = { level = "warning" },
  collectors = { { use = "evm_blocks", rpc_url = "$RPC", batch_size = $BATCH, backfill_step = $STEP,
    limiter = false } } }
LUA
for parallel in 1 4; do
  rm -f "$WORK"/p.db*
  t0=$(now)
  DB="$WORK/p.db" /usr/bin/time -f "%M" -o "$WORK/rss" "$SLUICE" backfill "$WORK/bf.lua" evm_blocks \
    --from 0 --to "$BLOCKS" --parallel $parallel >"$WORK/bf.out" 2>&1 || { cat "$WORK/bf.out"; exit 1; }
  t1=$(now)
  stored=$(DB="$WORK/p.db" "$SLUICE" run "$WORK/count.lua" --control none)
  rate=$(awk -v b="$BLOCKS" -v a="$t0" -v z="$t1" 'BEGIN { printf "%.0f", b / (z - a) }')
  echo "sluice backfill --parallel $parallel: $stored blocks stored in $(awk -v a="$t0" -v z="$t1" 'BEGIN { printf "%.2f", z - a }') s" \
    "(process wall time, start-up included), $rate blocks/s, $(awk -v r="$rate" -v a="$anchor" 'BEGIN { printf "%.2f", r / a }') x the curl loop, $(awk -v r="$rate" -v a="$keep" 'BEGIN { printf "%.2f", r / a }') x one curl," \
    "peak RSS $(awk '{ printf "%.1f", $1 / 1024 }' "$WORK/rss") MiB"
  printf '@figure evm_backfill.parallel%d_vs_curl_loop %s ratio\n' $parallel "$(awk -v r="$rate" -v a="$anchor" 'BEGIN { printf "%.4g", r / a }')"
  printf '@figure evm_backfill.parallel%d_vs_one_curl %s ratio\n' $parallel "$(awk -v r="$rate" -v a="$keep" 'BEGIN { printf "%.4g", r / a }')"
done
