#!/bin/sh
# run.sh -- build a fuzz harness with libFuzzer and run it for a bounded time
#
#   tests/fuzz/run.sh [NAME] [seconds]       time-bounded (default 60, or $FUZZ_TIME)
#   tests/fuzz/run.sh NAME -runs=N           N executions (e.g. -runs=10000000)
#
# NAME: rlheaders (the default: the pure-C rate-limit header parser), or
# config, store, admin (the Lua harnesses, tests/fuzz/fuzz_lua.c with a
# driver from tests/fuzz/drivers/; see tests/fuzz/README.md). Everything
# is built with clang's libFuzzer, ASan and UBSan (UB aborts). The work
# directory is $FUZZ_DIR, default ${TMPDIR:-/tmp}/sluice-fuzz; it is kept
# between runs so the corpus grows (seeded from tests/fuzz/corpus/NAME).
# The Lua harnesses are built by CMake in $FUZZ_DIR/build (-DSLUICE_FUZZ=ON);
# the binary is copied next to the corpus, so rebuilding never touches a
# running fuzzer. Prints libFuzzer's final statistics (executions, exec/s).
# Exit status is the fuzzer's: non-zero when it found a crash, a sanitizer
# report or an invariant violation (see the crash-* files).
# Stop a run with SIGKILL or wait for it: the runtime inside a Lua harness
# handles SIGINT/SIGTERM itself, and libFuzzer then reports a deadly signal.
# Needs clang with the libFuzzer runtime (Debian: clang libclang-rt-14-dev).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
name=rlheaders
case "${1:-}" in
    rlheaders | config | store | admin) name=$1; shift ;;
esac
limit="-max_total_time=${FUZZ_TIME:-60}"
case "${1:-}" in
    -runs=*) limit=$1 ;;
    "") ;;
    *) limit="-max_total_time=$1" ;;
esac
work=${FUZZ_DIR:-${TMPDIR:-/tmp}/sluice-fuzz}
cc=${CC_FUZZ:-clang}

if ! command -v "$cc" >/dev/null 2>&1; then
    echo "run.sh: $cc not found (apt-get install -y clang libclang-rt-14-dev)" >&2
    exit 2
fi

if [ "$name" != rlheaders ]; then
    mkdir -p "$work/$name"
    CC=$cc cmake -S "$root" -B "$work/build" -DSLUICE_FUZZ=ON \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$work/build" -j2 --target "fuzz_$name" >/dev/null
    cp "$work/build/fuzz_$name" "$work/$name/fuzz_$name.bin"
    mkdir -p "$work/$name/corpus"
    cp "$here/corpus/$name"/* "$work/$name/corpus/"
    cd "$work/$name"
    echo "fuzzing $name ($limit) in $work/$name"
    # LuaJIT's heap is mmap-ed, which LeakSanitizer does not scan: every
    # native block that only a Lua object points to would look leaked.
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} exec "./fuzz_$name.bin" \
        "$limit" -detect_leaks=0 -max_len=4096 -dict="$here/dict/$name.dict" \
        -print_final_stats=1 corpus
fi

mkdir -p "$work/corpus"
"$cc" -std=c11 -g -O1 -Wall -Wextra -Werror \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$root/runtime" \
    "$here/fuzz_rlheaders.c" "$root/runtime/core/rlheaders.c" \
    "$root/runtime/core/limiter.c" "$root/runtime/core/limiter_scope.c" \
    -lm -o "$work/fuzz_rlheaders"

# Seeds: two control bytes, then "name: value" lines.
seed() { printf '%b' "$2" >"$work/corpus/seed-$1"; }
seed github '\000\000X-RateLimit-Limit: 5000\nX-RateLimit-Remaining: 4987\nX-RateLimit-Reset: 1372700873\nDate: Mon, 01 Jul 2013 17:27:06 GMT\n'
seed ms '\000\000X-RateLimit-Limit: 1200\nX-RateLimit-Remaining: 847\nX-RateLimit-Reset: 1731619230000\n'
seed draft '\000\003RateLimit-Limit: 10, 10;w=1, 1000;w=3600\nRateLimit-Remaining: 9\nRateLimit-Reset: 1\n'
seed dict '\000\000RateLimit: limit=100, remaining=50, reset=50\n'
seed ietf '\000\000RateLimit-Policy: "burst";q=100;w=60, "daily";q=1000;w=86400;pk=:cHsdsRa894==:\nRateLimit: "burst";r=50;t=30, "daily";r=5;t=3600\n'
seed imf '\001\000Retry-After: Wed, 21 Oct 2015 07:28:00 GMT\nDate: Wed, 21 Oct 2015 07:27:30 GMT\n'
seed rfc850 '\001\000Retry-After: Wednesday, 21-Oct-15 07:28:00 GMT\n'
seed asctime '\003\000Retry-After: Wed Oct 21 07:28:00 2015\n'
seed delta '\001\004Retry-After: 120\n'
seed binance '\002\000x-mbx-used-weight: 1250\nx-mbx-used-weight-1m: 1250\nX-MBX-USED-WEIGHT-1S: 5\nRetry-After: 120\n'
seed bybit '\000\000X-Bapi-Limit: 10\nX-Bapi-Limit-Status: 9\nX-Bapi-Limit-Reset-Timestamp: 1672738134824\n'
seed discord '\001\000X-RateLimit-Limit: 5\nX-RateLimit-Remaining: 0\nX-RateLimit-Reset: 1470173023.125\nX-RateLimit-Reset-After: 1.25\n'

cat >"$work/rlh.dict" <<'EOF'
"retry-after"
"date"
"x-ratelimit-limit"
"x-ratelimit-remaining"
"x-ratelimit-reset"
"x-ratelimit-reset-after"
"x-rate-limit-reset"
"ratelimit"
"ratelimit-policy"
"ratelimit-limit"
"ratelimit-remaining"
"ratelimit-reset"
"x-mbx-used-weight-"
"x-bapi-limit"
"x-bapi-limit-status"
"x-bapi-limit-reset-timestamp"
";q="
";w="
";r="
";t="
";pk=:"
"limit="
" GMT"
"Wed, "
"Wednesday, "
"-Oct-"
" Feb "
"1700000000"
"1700000000000"
"999999999999999"
"\x0a"
EOF

cd "$work"
echo "fuzzing rlheaders ($limit) in $work"
exec ./fuzz_rlheaders "$limit" -dict=rlh.dict \
    -max_len=4096 -print_final_stats=1 corpus
