#!/bin/bash
# One device call for the batched attention kernel (docs/perf-cuda.md, run 9-rect-attn): build and
# attention kernel tests, the kernels timed alone (bench/attn_bench.py, picks the fastest variants),
# the engine tests with those variants, then the 7B ReSA@256K benchmark new vs old (same machine).
# Needs ../whl, ../model (8-layer test model) and .carry/ (gpu_bench.sh) beside/in this tree.
set -u
source "$(dirname "$0")/gpu_common.sh"  # $src (cwd), $OUT
bash bench/gpu_test.sh -k "no_test_has_this_name" 2>&1 | grep -E "build|error" | head -20  # build only
export PYTHONPATH=/tmp/site:$src
timeout 100 python3 -m pytest -q --tb=line -p no:cacheprovider tests/test_cuda_kernels.py -k attention > "$OUT/kernel_tests.txt" 2>&1
rc=$?
grep -E "FAILED|passed|failed" "$OUT/kernel_tests.txt" | tail -12
# A variant whose tests failed or hung (timeout: rc 124, blamed on the ping-pong one) is left out of the timings.
v=""
for k in 1 2 3 4; do grep -qE "FAILED .*test_batched_attention\[.*-$k-(64|128)\]" "$OUT/kernel_tests.txt" || v="$v,$k"; done
[ $rc -eq 124 ] && v=$(echo "$v" | sed 's/,4//')
export ATTN_VARIANTS=${v#,}
echo "kernel tests rc $rc: timing variants $ATTN_VARIANTS"
timeout 120 python3 bench/attn_bench.py --best "$OUT/best.env" > "$OUT/attn_bench.txt" 2>&1
sed -n '/BEST_RECT/,$p' "$OUT/attn_bench.txt"
BEST_RECT=1
BEST_PREFILL=old
[ -f "$OUT/best.env" ] && source "$OUT/best.env"
M=$(ls ../model/*.gguf | head -1)
echo "== engine tests, rect kernel $BEST_RECT, prefill kernel $BEST_PREFILL"
PYRESA_CUDA_RECT_KERNEL=$BEST_RECT PYRESA_CUDA_PREFILL_KERNEL=$BEST_PREFILL PYRESA_CUDA_TEST_MODEL=$M timeout 200 \
  python3 -m pytest -q -s -p no:cacheprovider tests/test_cuda_engine.py 2>&1 | tee "$OUT/engine_tests.txt" |
  grep -E "resa greedy|prefill 300|passed|failed|Error|^E " | head -20
echo "== engine tests, old kernels"
PYRESA_CUDA_RECT_KERNEL=old PYRESA_CUDA_PREFILL_KERNEL=old PYRESA_CUDA_TEST_MODEL=$M timeout 60 \
  python3 -m pytest -q -s -p no:cacheprovider tests/test_cuda_engine.py -k "resa_greedy or prefill_logits" 2>&1 |
  grep -E "resa greedy|prefill 300|passed|failed"
[ -d .carry ] || exit 0
for cfg in "$BEST_RECT $BEST_PREFILL" ${E2E_OLD:+"old old"}; do
  set -- $cfg
  echo "== 7B bench: rect kernel $1, prefill kernel $2"
  mkdir -p "$OUT/e2e_$1_$2"
  PYRESA_CUDA_RECT_KERNEL=$1 PYRESA_CUDA_PREFILL_KERNEL=$2 OUT="$OUT/e2e_$1_$2" \
    PYRESA_BENCH_ARGS="--depths 262144 --modes resa --profile" timeout 240 bash bench/gpu_bench.sh --quick 2>&1 |
    grep -E "prefill pp|depth|profile_rectification" | cut -c1-600
done
