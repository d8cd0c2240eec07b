#!/bin/bash
# Run 13-mmvbulk on the GPU machine, one call (from the pyresa source root, ../whl, ../model and
# ./.carry beside it as for gpu_test.sh / gpu_bench.sh): build (sm_90) and run the matvec kernel
# tests (the bulk-copy kernel's among them), the engine tests with PYRESA_CUDA_MATVEC_BULK=1, write
# the 7B file, time the depth-0 dense step with the default kernels and the bulk-copy ones (same
# build, one process: bench/fixed_step.py, with a kernel timeline of each), then, while time is
# left, gpu_ab.py at depths 0 and 256K. Run it under `timeout 540`.
#   MB_TESTS_K  pytest -k expression for the kernel tests (default: the one-token products)
#   MB_VARIANTS fixed_step.py variants (default: base and the bulk modes 1, 2, 11, 21, 22)
#   MB_AB_AFTER skip gpu_ab.py when this many seconds have passed (default 330)
set -u
source "$(dirname "$0")/gpu_common.sh"  # $src (cwd), $OUT
t0=$(date +%s)
GPU_TEST_FILES=tests/test_cuda_kernels.py bash bench/gpu_test.sh \
  -k "${MB_TESTS_K:-bulk or matvec_matches_cpu_vec_dot or rows_per_warp or matvec_prep or ksplit}" 2>&1 | tail -12
mv "$OUT/pytest.log" "$OUT/pytest_kernels.log" 2>/dev/null
echo "== build + kernel tests: $(( $(date +%s) - t0 )) s"
export PYTHONPATH=/tmp/site:$src
model=$(ls ../model/*.gguf 2>/dev/null | head -1)
PYRESA_CUDA_MATVEC_BULK=1 PYRESA_CUDA_TEST_MODEL=$model python3 -m pytest -q --tb=short -p no:cacheprovider \
  tests/test_cuda_engine.py 2>&1 | tee "$OUT/pytest_engine.log" | grep -vE "^(PASSED|\.)" | tail -12
echo "== engine tests (PYRESA_CUDA_MATVEC_BULK=1): $(( $(date +%s) - t0 )) s"
W=/root/llamacpp
mkdir -p $W
[ -f $W/syn7b.gguf ] || python3 .carry/synth_gguf.py .carry/r1-distill-qwen-7b-q4_k_m.header.gguf $W/syn7b.gguf > /tmp/synth.log 2>&1
echo "== 7B file: $(( $(date +%s) - t0 )) s"
vargs=()
for v in ${MB_VARIANTS:-base: bulk:PYRESA_CUDA_MATVEC_BULK=1 bulk2:PYRESA_CUDA_MATVEC_BULK=2 bulk11:PYRESA_CUDA_MATVEC_BULK=11 bulk21:PYRESA_CUDA_MATVEC_BULK=21 bulk22:PYRESA_CUDA_MATVEC_BULK=22 bulk8:PYRESA_CUDA_MATVEC_BULK=1,PYRESA_CUDA_MATVEC_BULK_MIN_GROUPS=8}; do
  vargs+=(--variant "$v")
done
python3 bench/fixed_step.py --model $W/syn7b.gguf "${vargs[@]}" --timeline ${MB_TIMELINE:-base,bulk,bulk21} --out-dir "$OUT" 2>&1 \
  | tee "$OUT/fixed_step.txt" | grep -E "timeline|matvec|ms/token" | head -40
echo "== fixed step: $(( $(date +%s) - t0 )) s"
# Eager per-op profile of one dense step at depth 0 (the products one by one), default vs bulk.
for e in "" "PYRESA_CUDA_MATVEC_BULK=${MB_PROFILE_MODE:-1}"; do
  [ $(( $(date +%s) - t0 )) -lt "${MB_AB_AFTER:-330}" ] || break
  echo "-- profile with: $e" | tee -a "$OUT/profile.txt"
  env $e python3 bench/gpu_bench.py --model $W/syn7b.gguf --prefill 0 --depths 0 --modes dense --sampling 0 \
    --profile 2>&1 | tee -a "$OUT/profile.txt" | grep -iE "matvec|linear|ffn|qkv|proj|lm_head|output|depth|total" | head -20
done
if [ $(( $(date +%s) - t0 )) -lt "${MB_AB_AFTER:-330}" ]; then
  python3 bench/gpu_ab.py --model $W/syn7b.gguf --depths 0,262144 --modes dense,resa --variant base: \
    --variant bulk:PYRESA_CUDA_MATVEC_BULK=1 --variant bulk21:PYRESA_CUDA_MATVEC_BULK=21 --out "$OUT/gpu_ab.json" 2>&1 \
    | tee "$OUT/gpu_ab.txt" | tail -6
  echo "== gpu_ab: $(( $(date +%s) - t0 )) s"
fi
echo "== summary"
grep -E "passed|failed|error" "$OUT/pytest_kernels.log" 2>/dev/null | tail -2
grep -E "passed|failed|error" "$OUT/pytest_engine.log" 2>/dev/null | tail -2
sed -n '/^variant /,$p' "$OUT/fixed_step.txt"
