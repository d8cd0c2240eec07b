#!/bin/bash
# Run 12-rectmmq on the GPU machine, in one call (carry the source copy with .carry/ in it,
# .gpuwork/whl and .gpuwork/model): build and the few-token product tests (the int8 tensor-core
# kernel matmul_mma.cu against the CPU's vec_dot), the kernels alone on the 7B shapes
# (bench/dqmm_bench.py: dqmm-pipe vs matmul_mma: stages, mode 2), the 7B engine with
# PYRESA_CUDA_SMALL_MMQ=0 and =RM_MODE (same build, ReSA at depths 0 and 256K, --profile: the
# rectification's per-op breakdown), then the CUDA engine tests with the new path on.
# RM_STAGES: the ring depth for the engine runs (0: the most that fit); RM_MODE: the switch value
# compared with 0 (1, or 2: two CTAs per SM); RM_PATHS: dqmm_bench.py paths (5-9: matmul_mma).
set -u
source "$(dirname "$0")/gpu_common.sh"  # $src (cwd), $OUT
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
timeout 330 bash bench/gpu_test.sh -k "small_mmq" 2>&1 | tail -25
echo "kernel tests done at $(el) s"
export PYTHONPATH=/tmp/site:$src
timeout 90 python3 bench/dqmm_bench.py --paths ${RM_PATHS:-2,5,6,9} --reps 10 ${DQMM_BENCH_ARGS:-} 2>&1 | tee "$OUT/dqmm_bench.txt" \
  | grep -v "^check\|^M="
grep "^check" "$OUT/dqmm_bench.txt" | tail -8
echo "kernel bench done at $(el) s"
W=/root/llamacpp
mkdir -p $W
if [ -d .carry ] && [ "${RM_E2E:-1}" = 1 ]; then
  [ -f $W/syn7b.gguf ] || timeout 120 python3 .carry/synth_gguf.py .carry/r1-distill-qwen-7b-q4_k_m.header.gguf $W/syn7b.gguf \
    > "$OUT/synth.log" 2>&1
  echo "7B file at $(el) s"
  for v in 0 ${RM_MODE:-1}; do
    PYRESA_CUDA_SMALL_MMQ=$v PYRESA_CUDA_SMALL_MMQ_STAGES=${RM_STAGES:-0} timeout 100 python3 bench/gpu_bench.py \
      --model $W/syn7b.gguf --depths 0,262144 --modes resa --prefill 0 --sampling 0 --profile \
      --out "$OUT/e2e_mmq$v.json" > "$OUT/e2e_mmq$v.txt" 2>&1
    echo "== PYRESA_CUDA_SMALL_MMQ=$v (at $(el) s)"
    grep -E "tok/s|rectification_ms" "$OUT/e2e_mmq$v.txt" | sed -E 's/(profile_rectification_ms: total [0-9.]+ ms).*/\1/'
    python3 - "$OUT/e2e_mmq$v.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for d in r["decode"]:
    p = d.get("profile_rectification_ms", {})
    keys = [k for k in p if any(s in k for s in ("qkv", "output projection", "gate + up", "down"))]
    print(f"  depth {d['depth']}: rectification products {sum(p[k] for k in keys):.3f} ms "
          + " ".join(f"[{k} {p[k]:.3f}]" for k in keys))
EOF
  done
fi
model=$(ls ../model/*.gguf 2>/dev/null | head -1)
left=$(( 535 - $(el) ))
if [ -n "$model" ] && [ $left -gt 30 ]; then
  PYRESA_CUDA_SMALL_MMQ=${RM_MODE:-1} PYRESA_CUDA_TEST_MODEL=$model timeout $left python3 -m pytest -q --tb=short -p no:cacheprovider \
    tests/test_cuda_engine.py 2>&1 | tee "$OUT/engine_tests.log" | tail -8
fi
echo "all done at $(el) s"
(cd "$OUT" && tar czf logs.tgz cmake.log build.log gpu.txt pytest.log 2>/dev/null; rm -f cmake.log build.log pytest.log)
