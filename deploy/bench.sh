#!/usr/bin/env bash
# make bench: micro-benchmarks of the hot paths (criterion, release profile). Prints one
# summary table and appends it, with date, commit and machine, to docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
raw=$(cargo bench --locked -p delivery -p qualifier --bench hot_paths --bench evaluate -- --output-format bencher 2>/dev/null | grep '^test ')
commit=$(git rev-parse --short HEAD)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
table=$(awk '
  BEGIN { print "| benchmark | ns per iteration | ± | per user / event |"; print "|---|---:|---:|---:|" }
  {
    name = $0; sub(/^test /, "", name); sub(/ \.\.\. bench:.*/, "", name)
    ns = $0; sub(/.*bench: */, "", ns); sub(/ ns\/iter.*/, "", ns); gsub(/,/, "", ns)
    pm = $0; sub(/.*\(\+\/- */, "", pm); sub(/\).*/, "", pm); gsub(/,/, "", pm)
    per = (name ~ /^batch of 1000 users/) ? sprintf("%.1f ns", ns / 1000) : "-"
    printf "| %s | %s | %s | %s |\n", name, ns, pm, per
  }' <<<"$raw")
summary=$(printf '### %s — commit %s — %s cores, %s\n\nCommand: `make bench` (criterion, release profile).\n\n%s\n' \
  "$(date -u +%Y-%m-%dT%H:%MZ)" "$commit" "$(nproc)" "$cpu" "$table")
echo "$summary"
printf '\n%s\n' "$summary" >>docs/BENCHMARKS.md
echo "bench: appended to docs/BENCHMARKS.md"
