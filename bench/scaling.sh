#!/usr/bin/env bash
# Time growth of the Monte Carlo driver with S, d and threads (docs/performance.md).
# Each row: the best of 3 runs of build/bin/mc_paper (float, L = 4, L2, causal, alpha = 0.2).
#   bench/scaling.sh [build/bin]
set -euo pipefail
bin="${1:-build/bin}"
best() {  # best wall time of 3 runs; prints the mc_paper line of that run
  local out best_line="" best_wall=1e9
  for _ in 1 2 3; do
    out=$("$bin/mc_paper" --quiet "$@" | tail -1)
    wall=$(sed -E 's/.*wall_s=([0-9.]+).*/\1/' <<<"$out")
    if awk -v a="$wall" -v b="$best_wall" 'BEGIN { exit !(a < b) }'; then best_wall=$wall; best_line=$out; fi
  done
  printf '%-44s %s\n' "$*" "$best_line"
}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "sgemm_rate 1 thread: $("$bin/sgemm_rate" --threads 1) GFLOP/s, 2 threads: $("$bin/sgemm_rate" --threads 2) GFLOP/s"
# S: the default path (the triangular frame for these Gaussian inputs) and the direct path
for path in auto direct; do
  best --samples 40000 --seq-len 50 --threads 1 --path $path
  best --samples 8000 --seq-len 128 --threads 1 --path $path
  best --samples 2000 --seq-len 256 --threads 1 --path $path
  best --samples 500 --seq-len 512 --threads 1 --path $path
  best --samples 120 --seq-len 1024 --threads 1 --path $path
done
# threads
best --samples 40000 --seq-len 50 --threads 2 --path auto
# d: every path
for path in auto direct gram; do
  best --samples 40000 --dim 128 --threads 1 --path $path
  best --samples 10000 --dim 512 --threads 1 --path $path
done
best --samples 40000 --seq-len 50 --threads 1 --path gram
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
