# common.bash -- helpers sourced by the integration scripts (not a test).
# Each script gets the sluice binary as $1, works in its own temp dir, and
# prints one "N passed, M failed" line at the end.
set -u
SLUICE=$(readlink -f "$1")
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

finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}
