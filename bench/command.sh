#!/usr/bin/env bash
# The maskpos command on the paper configuration (B = 100000, S = 50, d = 64, L = 4, float), timed
# from outside the process: wall time and peak resident memory (GNU time), best wall of 3 runs.
#   bench/command.sh [build/bin]
set -euo pipefail
bin="${1:-build/bin}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
best() {  # best of 3 runs of `maskpos simulate --quiet --no-figure ARGS`: "wall s, peak KB"
  local best_wall=1e9 best_kb=0
  for run in 1 2 3; do
    /usr/bin/time -f "%e %M" -o "$out/time" "$bin/maskpos" simulate --quiet --no-figure --out "$out/run$run" "$@"
    read -r wall kb <"$out/time"
    if awk -v a="$wall" -v b="$best_wall" 'BEGIN { exit !(a < b) }'; then best_wall=$wall; best_kb=$kb; fi
  done
  printf '%-50s %6.2f s %8.1f MB\n' "${*:-(paper configuration, L2)}" "$best_wall" "$(awk -v k="$best_kb" 'BEGIN { print k / 1024 }')"
}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "sgemm_rate 1 thread: $("$bin/sgemm_rate" --threads 1) GFLOP/s, 2 threads: $("$bin/sgemm_rate" --threads 2) GFLOP/s"
best
best --threads 1
best --norm layernorm --score-scale sqrt-d
best --norm layernorm --score-scale d
best --rope --rope-theta 10000
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
