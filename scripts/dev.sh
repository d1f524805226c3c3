#!/usr/bin/env bash
# dev.sh -- install what is missing, build, then run the example or the tests.
#
#   scripts/dev.sh example   build and run examples/quickstart.lua (offline:
#                            the Binance collector against a mock exchange)
#   scripts/dev.sh test      fresh build, whole suite; then the same under
#                            ASan+UBSan (ctest's summary is the last line)
#   scripts/dev.sh build     just build (into build/)
#   scripts/dev.sh deps      just install the Debian packages and the test
#                            tools from npm (anvil, into tests/tools)
#
# Needs Debian 12, as root or with sudo. Set SLUICE_NO_SANITIZE=1 to skip the
# sanitizer pass of `test`.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake pkg-config
  libluajit2-5.1-dev libcurl4-openssl-dev libevent-dev libhiredis-dev
  lua-cjson-dev libsqlite3-dev libedit-dev libssl-dev libyajl-dev libpq-dev
  librabbitmq-dev libwslay-dev
  lua-busted
  nginx-light curl lua-check prometheus redis-server python3 openssl
  postgresql clickhouse-server clickhouse-client rabbitmq-server
  python3-websockets chromium systemd python3-kubernetes sqlite3 iproute2
)

install_missing() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
      missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "installing: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
}

# Test servers that Debian does not package come from the npm registry,
# pinned by tests/tools/package-lock.json: anvil (Foundry's Ethereum node)
# for the on-chain collectors' tests. npm itself comes from Debian when the
# machine has none.
ANVIL=tests/tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil

install_tools() {
  [ -x "$ANVIL" ] && return 0
  if ! command -v npm >/dev/null 2>&1; then
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "installing: nodejs npm"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
      --no-install-recommends nodejs npm >/dev/null
  fi
  echo "installing: anvil (npm, tests/tools)"
  (cd tests/tools && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  "$ANVIL" --version >/dev/null
}

build() { # build DIR [cmake args...]
  local dir=$1; shift
  cmake -S . -B "$dir" -DSLUICE_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j "$(nproc)"
}

case "${1:-}" in
  deps) install_missing; install_tools ;;
  build) install_missing; build build ;;
  example)
    install_missing
    build build
    exec build/sluice run examples/quickstart.lua
    ;;
  test)
    install_missing
    install_tools
    rm -rf build/test build/sanitize
    build build/test
    (cd build/test && ctest --output-on-failure)
    if [ "${SLUICE_NO_SANITIZE:-0}" != 1 ]; then
      build build/sanitize -DSLUICE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
      (cd build/sanitize && ctest --output-on-failure)
    fi
    ;;
  *)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
