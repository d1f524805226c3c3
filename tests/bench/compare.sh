#!/usr/bin/env bash
# compare.sh -- two runs of tests/bench/run.sh side by side.
#   tests/bench/compare.sh OLD.json NEW.json
# Prints, for every figure in both files, its name, old value, new value,
# new/old and the unit; then the figures found in only one of them. Reads
# the files run.sh writes (one figure a line); asserts nothing, exits 0.
# Whether a higher ratio is better depends on the figure (rates up, times,
# RSS and "_vs_" ratios of costs down): read the name and unit.
set -euo pipefail
if [ $# -ne 2 ] || [ ! -r "$1" ] || [ ! -r "$2" ]; then
  echo "usage: $0 OLD.json NEW.json (files written by tests/bench/run.sh)" >&2
  exit 2
fi
awk '
  function meta(key, line) {
    if (match(line, "\"" key "\": *\"[^\"]*\"")) {
      s = substr(line, RSTART, RLENGTH); sub(/^"[a-z]+": *"/, "", s); sub(/"$/, "", s); return s
    }
    return ""
  }
  FNR == 1 { f++ }
  /^ *"[a-z0-9_.]+": *\{"value": *[-+0-9.eE]+, *"unit": *"[^"]*"\}/ {
    line = $0
    match(line, /"[a-z0-9_.]+"/); name = substr(line, RSTART + 1, RLENGTH - 2)
    match(line, /"value": *[-+0-9.eE]+/); v = substr(line, RSTART, RLENGTH); sub(/"value": */, "", v)
    match(line, /"unit": *"[^"]*"/); u = substr(line, RSTART, RLENGTH); sub(/"unit": *"/, "", u); sub(/"$/, "", u)
    if (f == 1) { if (!(name in old)) order1[++n1] = name; old[name] = v + 0 }
    else { if (!(name in new)) order2[++n2] = name; new[name] = v + 0 }
    unit[name] = u
    next
  }
  { for (k = 1; k <= 3; k++) { key = (k == 1 ? "commit" : k == 2 ? "date" : "machine"); x = meta(key, $0); if (x != "") info[f, key] = x } }
  END {
    printf "old: %s %s (%s)\nnew: %s %s (%s)\n\n", info[1, "commit"], info[1, "date"], info[1, "machine"],
      info[2, "commit"], info[2, "date"], info[2, "machine"]
    printf "%-48s %14s %14s %9s  %s\n", "figure", "old", "new", "new/old", "unit"
    for (i = 1; i <= n1; i++) {
      name = order1[i]
      if (!(name in new)) continue
      ratio = (old[name] != 0 ? sprintf("%9.3f", new[name] / old[name]) : sprintf("%9s", "-"))
      printf "%-48s %14.6g %14.6g %s  %s\n", name, old[name], new[name], ratio, unit[name]
    }
    for (i = 1; i <= n1; i++) if (!(order1[i] in new)) printf "only in old: %-36s %14.6g  %s\n", order1[i], old[order1[i]], unit[order1[i]]
    for (i = 1; i <= n2; i++) if (!(order2[i] in old)) printf "only in new: %-36s %14.6g  %s\n", order2[i], new[order2[i]], unit[order2[i]]
  }' "$1" "$2"
