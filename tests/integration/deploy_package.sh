#!/usr/bin/env bash
# deploy_package.sh -- the .deb as shipped: `cpack -G DEB` in the build
# tree of the sluice under test, its Depends (every shared library the
# binary needs, from the package that has it; LuaJIT and lua-cjson linked
# in), its files; installed into this machine with dpkg -i, `sluice version`
# and the README's quick start run from the installed paths, the installed
# unit checked by systemd-analyze; then dpkg -r (only the conffile stays)
# and dpkg -P (nothing stays). Needs root (dpkg -i): skipped, saying so,
# when not root and not in CI; in CI it runs (and fails if it cannot).
. "$(dirname "$0")/common.bash"

BUILD=$(dirname "$SLUICE")
if [ "$(id -u)" != 0 ]; then
  if [ -n "${CI:-}" ]; then
    not_ok "root to install the .deb (CI must run this test as root)"
    finish
    exit 1
  fi
  echo "SKIP: deploy_package needs root (dpkg -i into this machine); not in CI"
  exit 0
fi
for tool in cpack dpkg-deb dpkg-shlibdeps systemd-analyze; do
  if ! command -v "$tool" >/dev/null; then
    not_ok "$tool available (apt-get install cmake dpkg-dev systemd)"
    finish
    exit 1
  fi
done

# --- the package --------------------------------------------------------------
cpack --config "$BUILD/CPackConfig.cmake" -B "$WORK/pkg" >"$WORK/cpack.out" 2>&1
debs=("$WORK"/pkg/sluice_*.deb)
if [ ${#debs[@]} -eq 1 ] && [ -f "${debs[0]}" ]; then ok "cpack -G DEB builds one .deb"; else
  not_ok "cpack -G DEB builds one .deb"; sed 's/^/    /' "$WORK/cpack.out"; finish; exit 1; fi
DEB=${debs[0]}
arch=$(dpkg --print-architecture)
check "named sluice_0.1.0_$arch.deb" [ "$(basename "$DEB")" = "sluice_0.1.0_$arch.deb" ]

field() { dpkg-deb -f "$DEB" "$1"; }
check "Package: sluice" [ "$(field Package)" = sluice ]
check "Version: 0.1.0 (the project's)" [ "$(field Version)" = 0.1.0 ]
check "Architecture: $arch" [ "$(field Architecture)" = "$arch" ]

# Depends names exactly the packages of the libraries the binary links:
# for each NEEDED soname, the package that ships the library ld.so
# resolves it to.
depends=$(field Depends | tr ',' '\n' | sed 's/^ *//; s/ .*//' | sort -u)
needed=$(dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./usr/bin/sluice >"$WORK/sluice.bin";
  readelf -d "$WORK/sluice.bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
want=$(for so in $needed; do
    path=$(ldconfig -p | awk -v so="$so" '$1 == so && /x86-64|64bit|AArch64/ { print $NF; exit }')
    [ -n "$path" ] || path=$(ldconfig -p | awk -v so="$so" '$1 == so { print $NF; exit }')
    real=$(readlink -f "$path")
    # dpkg knows a file by the path its package ships (/lib or /usr/lib
    # on a merged /usr)
    { dpkg -S "$path" || dpkg -S "$real" || dpkg -S "${real#/usr}"; } 2>/dev/null | head -1 | sed 's/:.*//'
  done | sort -u)
if [ -n "$want" ] && [ "$depends" = "$want" ]; then ok "Depends: one package per linked library, no more"; else
  not_ok "Depends: one package per linked library, no more"
  diff <(echo "$want") <(echo "$depends") | sed 's/^/    /'; fi
for lib in libcurl4 libevent-2.1-7 libsqlite3-0 libhiredis0.14 libedit2 libssl3 libyajl2 libpq5 \
    librabbitmq4 libwslay1; do
  case " $(echo $depends) " in *" $lib "*) ok "Depends: $lib" ;; *) not_ok "Depends: $lib" ;; esac
done
case "$depends" in *luajit*|*cjson*) not_ok "LuaJIT and lua-cjson are linked in, not depended on" ;;
  *) ok "LuaJIT and lua-cjson are linked in, not depended on" ;; esac

files=$(dpkg-deb -c "$DEB" | awk '{ print $6 }' | grep -v '/$' | sed 's|^\./|/|' | sort)
docs=$(cd "$(dirname "$0")/../../docs" && ls *.md | sed 's|^|/usr/share/doc/sluice/|')
expected=$(printf '%s\n' /usr/bin/sluice /etc/sluice/sluice.lua /usr/lib/systemd/system/sluice.service \
  /usr/share/doc/sluice/README.md $docs /usr/share/doc/sluice/examples/{quickstart,hello,custom,ticker_collector}.lua |
  sort)
if [ "$files" = "$expected" ]; then ok "the files: binary, configuration, unit, docs, examples"; else
  not_ok "the files: binary, configuration, unit, docs, examples"
  diff <(echo "$expected") <(echo "$files") | sed 's/^/    /'; fi
check "/etc/sluice/sluice.lua is a conffile" \
  [ "$(dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles)" = /etc/sluice/sluice.lua ]

# --- installed into this machine ------------------------------------------------
if dpkg-query -W -f='${Status}' sluice 2>/dev/null | grep -q 'installed'; then
  not_ok "no sluice package installed before the test (it installs and removes its own: dpkg -P sluice)"
  finish
  exit 1
fi
# one install at a time on this machine (the dev and sanitizer builds' runs)
exec 9>/tmp/sluice-deploy-package.lock
flock -w 240 9 || { not_ok "the package lock (/tmp/sluice-deploy-package.lock)"; finish; exit 1; }
trap 'dpkg -P sluice >/dev/null 2>&1; rm -rf "$WORK"' EXIT

expect_exit "dpkg -i installs it (its Depends are met)" 0 dpkg -i "$DEB"
check "installed: every file" bash -c "for f in $(echo $expected); do [ -e \"\$f\" ] || exit 1; done"
check "the binary on PATH is the package's" [ "$(command -v sluice)" = /usr/bin/sluice ]

/usr/bin/sluice version >"$WORK/version" 2>&1
check "sluice version runs from /usr/bin" [ "$(head -1 "$WORK/version")" = "sluice 0.1.0" ]
contains "it names LuaJIT (linked in)" "$WORK/version" "LuaJIT 2.1"

# the README's quick start from the installed example: the offline mock
# exchange, seven seconds, a summary of what landed
mkdir "$WORK/qs"
(cd "$WORK/qs" && timeout 60 /usr/bin/sluice run /usr/share/doc/sluice/examples/quickstart.lua \
  --control none >"$WORK/qs.out" 2>&1)
code=$?
check "the quick start exits 0" [ "$code" = 0 ]
contains "it collected BTCUSDT candles" "$WORK/qs.out" "BTCUSDT  "
contains "it collected ETHUSDT candles" "$WORK/qs.out" "ETHUSDT  "
contains "and ends healthy" "$WORK/qs.out" "health: healthy; requests:"
check "into quickstart.db in the working directory" [ -s "$WORK/qs/quickstart.db" ]

systemd-analyze verify --man=no /usr/lib/systemd/system/sluice.service >"$WORK/verify.out" 2>&1
code=$?
if [ "$code" = 0 ] && [ ! -s "$WORK/verify.out" ]; then ok "systemd-analyze verify: the installed unit, no complaint"; else
  not_ok "systemd-analyze verify: the installed unit, no complaint (exit $code)"; sed 's/^/    /' "$WORK/verify.out"; fi
check "the installed unit runs the installed binary and configuration" \
  grep -qx 'ExecStart=/usr/bin/sluice run /etc/sluice/sluice.lua --control /run/sluice/sluice.sock' \
  /usr/lib/systemd/system/sluice.service

# --- removed: dpkg -r keeps the conffile, dpkg -P nothing ----------------------------
expect_exit "dpkg -r removes it" 0 dpkg -r sluice
left=$(for f in $expected; do [ -e "$f" ] && echo "$f"; done)
check "after dpkg -r only the conffile is left" [ "$left" = /etc/sluice/sluice.lua ]
check "dpkg says config-files" [ "$(dpkg-query -W -f='${Status}' sluice 2>/dev/null)" = "deinstall ok config-files" ]
expect_exit "dpkg -P purges it" 0 dpkg -P sluice
left=$(for f in $expected /etc/sluice /usr/share/doc/sluice; do [ -e "$f" ] && echo "$f"; done)
check "after dpkg -P nothing is left" [ -z "$left" ]
check "dpkg no longer knows it" bash -c "! dpkg-query -W sluice >/dev/null 2>&1"
check "sluice is off PATH" bash -c "! command -v sluice >/dev/null"

finish
