#!/bin/bash
# One device call for the decode step's kernels (docs/perf-cuda.md, "Run 9-sparse-step"): build +
# the kernel (and engine) tests of every kernel set, the per-layer kernel timings of every variant
# (bench/sparse_step_bench.py), an Nsight Compute summary of the default kernels (NCU=1), the 7B
# engine benchmark with the defaults, and with PYRESA_CUDA_SPARSE_STEP=0 at 256K (ENGINE_OLD=1).
# Needs ../whl, .carry (bench/gpu_bench.sh) and ../model for the engine tests. Output under $OUT.
#   carry [".gpuwork/src-<name>", ".gpuwork/whl", ".gpuwork/model"];
#   cd .gpuwork/src-<name> && BUDGET=560 NCU=1 bash bench/sparse_step_device.sh
set -u
source "$(dirname "$0")/gpu_common.sh"  # $src (cwd), $OUT
t0=$(date +%s)
left() { echo $(( ${BUDGET:-570} - ($(date +%s) - t0) )); }
timeout $(left) bash bench/gpu_test.sh -k "${TEST_K:-attention or select or descriptors}" > "$OUT/tests.txt" 2>&1
echo "tests rc=$? at $(( $(date +%s) - t0 )) s"; grep -E "passed|failed|error" "$OUT/tests.txt" | tail -5
export PYTHONPATH=/tmp/site:$src
timeout $(left) python3 bench/sparse_step_bench.py --json "$OUT/kernels.json" > "$OUT/kernels.txt" 2>&1
echo "kernel bench rc=$? at $(( $(date +%s) - t0 )) s"
if [ -n "${NCU:-}" ] && [ $(left) -gt 200 ]; then
  # Per-kernel durations of the new set at 256K (caches not flushed, clocks not locked: as in a step).
  timeout 120 ncu --csv --print-units base --cache-control none --clock-control none \
    --kernel-name regex:"score|select|attention|combine" --launch-count 80 \
    --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active \
    python3 bench/sparse_step_bench.py --depths 262144 --reps 4 --copies 2 --sets sep > "$OUT/ncu.csv" 2>&1
  echo "ncu rc=$?"
  python3 - "$OUT/ncu.csv" <<'PY' > "$OUT/ncu_summary.txt" 2>&1
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; ki = hdr.index("Kernel Name"); mi = hdr.index("Metric Name"); vi = hdr.index("Metric Value")
acc = collections.defaultdict(lambda: collections.defaultdict(list))
for r in rows[1:]:
    name = r[ki].replace("(anonymous namespace)::", "").replace("pyresa::cuda::", "").replace("void ", "").split("(")[0][:60]
    try: acc[name][r[mi]].append(float(r[vi].replace(",", "")))
    except ValueError: pass
for name, m in acc.items():
    print(name, {k.split("__")[1].split(".")[0]: round(sum(v) / len(v), 2) for k, v in m.items()}, "n", len(next(iter(m.values()))))
PY
  cat "$OUT/ncu_summary.txt"
fi
if [ $(left) -gt 150 ]; then
  PYRESA_BENCH_ARGS="${BENCH_ARGS:---depths 32768,262144 --modes dense,resa --profile --prefill 0}" \
    timeout $(left) bash bench/gpu_bench.sh --quick > "$OUT/engine.txt" 2>&1
  echo "engine bench rc=$? at $(( $(date +%s) - t0 )) s"
fi
if [ -n "${ENGINE_OLD:-}" ] && [ $(left) -gt 120 ]; then
  PYRESA_CUDA_SPARSE_STEP=0 PYRESA_BENCH_ARGS="--depths 262144 --modes resa --profile --prefill 0" \
    timeout $(left) bash bench/gpu_bench.sh --quick > "$OUT/engine_old.txt" 2>&1
  echo "engine bench (old kernels) rc=$? at $(( $(date +%s) - t0 )) s"
fi
echo "=== tests"; grep -E "FAILED|rel err|Error|error" "$OUT/tests.txt" | sort | uniq | head -30; tail -3 "$OUT/tests.txt"
echo "=== engine (new)"; grep -E "tok/s|profile_ms|GPU" "$OUT/engine.txt" 2>/dev/null | cut -c1-900
echo "=== engine (old, PYRESA_CUDA_SPARSE_STEP=0)"; grep -E "tok/s|profile_ms" "$OUT/engine_old.txt" 2>/dev/null | cut -c1-900
echo "=== kernels"; sed -n '/^  depth/,$p' "$OUT/kernels.txt"; grep -iE "error|Traceback" "$OUT/kernels.txt" | head
# At most 8 files come back: keep the summaries.
rm -f "$OUT"/cmake.log "$OUT"/build.log "$OUT"/pytest.log "$OUT"/pyresa_bench.txt "$OUT"/kernels.json "$OUT"/ncu.csv
