#!/bin/sh
# run.sh -- build the rate-limit header fuzzer and run it for a bounded time
#
#   tests/fuzz/run.sh [seconds]        default 60 (or $FUZZ_TIME)
#
# Builds tests/fuzz/fuzz_rlheaders.c with clang's libFuzzer, ASan and UBSan
# (UB aborts), seeds a corpus with real-world headers, and runs the fuzzer
# with -max_total_time. The work directory (binary, corpus, crash files)
# is $FUZZ_DIR, default ${TMPDIR:-/tmp}/sluice-fuzz; it is kept between
# runs so the corpus grows. Exit status is the fuzzer's: non-zero when it
# found a crash, a leak or an invariant violation (see crash-* files).
# Needs clang with the libFuzzer runtime (Debian: clang libclang-rt-14-dev).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
secs=${1:-${FUZZ_TIME:-60}}
work=${FUZZ_DIR:-${TMPDIR:-/tmp}/sluice-fuzz}
cc=${CC_FUZZ:-clang}

if ! command -v "$cc" >/dev/null 2>&1; then
    echo "run.sh: $cc not found (apt-get install -y clang libclang-rt-14-dev)" >&2
    exit 2
fi

mkdir -p "$work/corpus"
"$cc" -std=c11 -g -O1 -Wall -Wextra -Werror \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$root/runtime/core" \
    "$here/fuzz_rlheaders.c" "$root/runtime/core/rlheaders.c" \
    "$root/runtime/core/limiter.c" -lm -o "$work/fuzz_rlheaders"

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
echo "fuzzing for ${secs}s in $work"
exec ./fuzz_rlheaders -max_total_time="$secs" -dict=rlh.dict \
    -max_len=4096 -print_final_stats=1 corpus
