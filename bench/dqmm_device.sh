#!/bin/bash
# On the GPU machine, one call: build, the dequantize-and-multiply kernel tests, the CUDA engine
# tests, then the 7B rectification's products old vs new (bench/dqmm_bench.py). Each step is
# bounded so a hang cannot eat the call. Extra arguments go to dqmm_bench.py.
set -u
source "$(dirname "$0")/gpu_common.sh"  # $src (cwd), $OUT
t0=$(date +%s)
timeout 360 bash bench/gpu_test.sh -k "dqmm or f16_paths" -x 2>&1 | tail -25
echo "kernel tests done at $(( $(date +%s) - t0 )) s"
export PYTHONPATH=/tmp/site:$src
model=$(ls ../model/*.gguf 2>/dev/null | head -1)
if [ -n "$model" ]; then
  PYRESA_CUDA_TEST_MODEL=$model timeout 150 python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_cuda_engine.py \
    2>&1 | tee "$OUT/engine_tests.log" | tail -15
fi
echo "engine tests done at $(( $(date +%s) - t0 )) s"
timeout 120 python3 bench/dqmm_bench.py "$@" 2>&1 | tee "$OUT/dqmm_bench.txt" | grep -v "^check\|^M=" 
grep "^check" "$OUT/dqmm_bench.txt"
echo "all done at $(( $(date +%s) - t0 )) s"
