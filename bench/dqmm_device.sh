#!/bin/bash
# On the GPU machine, one call: build, the dequantize-and-multiply kernel tests, the 7B
# rectification's products old vs new (bench/dqmm_bench.py, which also picks the fastest
# pipelined variant at 33 tokens), the 7B benchmark (bench/gpu_bench.sh --quick, needs .carry/)
# with that variant and with PYRESA_CUDA_DQMM=old, then the CUDA engine tests with that variant.
# Each step is bounded so a hang cannot eat the call. DQMM_E2E=0 skips the 7B benchmark.
set -u
source "$(dirname "$0")/gpu_common.sh"  # $src (cwd), $OUT
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
timeout 300 bash bench/gpu_test.sh -k "dqmm or f16_paths" -x 2>&1 | tail -8
echo "kernel tests done at $(el) s"
export PYTHONPATH=/tmp/site:$src
timeout 120 python3 bench/dqmm_bench.py ${DQMM_BENCH_ARGS:-} 2>&1 | tee "$OUT/dqmm_bench.txt" | grep -v "^check\|^M="
grep "^check" "$OUT/dqmm_bench.txt" | sort -k6 -g | tail -2
echo "kernel bench done at $(el) s"
[ -f "$OUT/dqmm_best.env" ] && source "$OUT/dqmm_best.env"
echo "variant: PYRESA_CUDA_DQMM=${PYRESA_CUDA_DQMM:-default} PYRESA_CUDA_DQMM_STAGES=${PYRESA_CUDA_DQMM_STAGES:-0}"
if command -v ncu > /dev/null && [ -n "${DQMM_BEST_PATH:-}" ]; then  # one gate/up product of that variant
  timeout 90 ncu --kernel-name regex:dqmm_pipe_kernel --launch-skip 3 --launch-count 1 --section SpeedOfLight \
    --section SchedulerStats --section WarpStateStats --section Occupancy --section MemoryWorkloadAnalysis \
    python3 -c "import pyresa._core as c; c.cuda_test.time_dqmm(12, 18944, 3584, 33, $DQMM_BEST_PATH, 3)" \
    > "$OUT/ncu.txt" 2>&1
  grep -E "Duration|DRAM Throughput|Compute \(SM\)|Issue Slots Busy|No Eligible|Eligible Warps|Active Warps Per|Warp Cycles Per Issued|Achieved Occupancy|Registers Per|Shared Memory Configuration|L1/TEX Hit|Mem Pipes Busy" "$OUT/ncu.txt" | head -20
  echo "ncu done at $(el) s"
fi
if [ "${DQMM_E2E:-1}" = 1 ] && [ -d .carry ]; then
  export PYRESA_BENCH_ARGS=${PYRESA_BENCH_ARGS:-"--depths 0,262144 --modes dense,resa --profile"}
  timeout 200 bash bench/gpu_bench.sh --quick > "$OUT/e2e_new.txt" 2>&1
  grep -vE "^WARNING" "$OUT/e2e_new.txt" | tail -40
  echo "7B new done at $(el) s"
  (export PYRESA_CUDA_DQMM=old; timeout 150 bash bench/gpu_bench.sh --quick > "$OUT/e2e_old.txt" 2>&1)
  grep -vE "^WARNING" "$OUT/e2e_old.txt" | grep -iE "tok/s|ms|rect|matmul|product|dqmm|linear" | tail -25
  echo "7B old done at $(el) s"
fi
model=$(ls ../model/*.gguf 2>/dev/null | head -1)
left=$(( 520 - $(el) ))
if [ -n "$model" ] && [ $left -gt 30 ]; then
  PYRESA_CUDA_TEST_MODEL=$model timeout $left python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_cuda_engine.py \
    2>&1 | tee "$OUT/engine_tests.log" | tail -6
fi
echo "all done at $(el) s"
# At most 8 files come back from $OUT: the build logs and the benchmark's own files go in one archive.
(cd "$OUT" && tar czf logs.tgz cmake.log build.log gpu.txt pytest.log pyresa_bench.json pyresa_bench.txt dqmm_best.env \
  2>/dev/null; rm -f cmake.log build.log gpu.txt pytest.log pyresa_bench.json pyresa_bench.txt dqmm_best.env)
