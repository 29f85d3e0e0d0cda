#!/usr/bin/env bash
# Run every full benchmark in sequence (about 45-60 min on the 2-core machine; never two at once,
# they would share the cores). Logs: bench/results/logs/<name>.{out,err}; JSON: bench/results/<name>.json.
# Usage: bash bench/run_all.sh [name ...]   (names: train train_step data eval kernels latency settings aot_depthwise isa_ops pooling distributed tensorboard)
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
mkdir -p bench/results/logs
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(train train_step data eval kernels latency settings aot_depthwise isa_ops pooling distributed tensorboard)
status=0
for n in "${names[@]}"; do
  echo "== $n  (load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$py" "bench/bench_$n.py" > "bench/results/logs/$n.out" 2> "bench/results/logs/$n.err" || { echo "   $n failed"; status=1; }
  tail -n +1 "bench/results/logs/$n.out"
done
exit $status
