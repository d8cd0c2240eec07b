#!/bin/bash
# One device call for run 12-attn12 (docs/perf-cuda.md): build (Hopper as sm_90a) while the 7B
# file is written, then
#   tests:   the attention kernel tests (every kernel: the shared epilogue of run 12) and the
#            engine tests with the rectification and prefill on the wgmma kernel (variant 4),
#            plus the kernel switches' test;
#   probe:   bench/rect_engine_probe.py: the rectification's attention in the 7B engine per
#            variant (eager profile), and the kernels alone;
#   ab:      bench/gpu_ab.py, same build: ReSA@256K and prefill tok/s per variant ($AB_VARIANTS);
#   etests:  every engine test with the defaults; kbench: bench/sparse_step_bench.py (the decode
#            kernels alone, one warp vs two); prec: bench/rect_precision.py.
# Stages in A12_STAGES (default "tests probe ab"), each skipped when too little of A12_BUDGET (s)
# is left. Needs ../whl, ../model (8-layer test model) and .carry/ (7B header, synth_gguf.py).
# Prints a short summary last.
set -u
source "$(dirname "$0")/gpu_common.sh"  # $src (cwd), $OUT
source "$(dirname "$0")/gpu_build_7b.sh"  # prepare_build, wait_7b, $W, $M
T0=$(date +%s)
left() { echo $(( ${A12_BUDGET:-530} - ($(date +%s) - T0) )); }
cap() { local l; l=$(left); echo $(( l < $1 ? l : $1 )); }
STAGES=" ${A12_STAGES:-tests probe ab} "
has() { [[ "$STAGES" == *" $1 "* ]]; }
prepare_build $( (has probe || has ab) && echo 1)
SUM="$OUT/summary.txt"
: > "$SUM"
python3 -c "import pyresa._core as c; print('wgmma available:', c.cuda_test.attention_wgmma_available())" | tee -a "$SUM"

if has tests; then
  timeout $(cap 220) python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_cuda_kernels.py \
    -k "attention or combine" > "$OUT/kernel_tests.txt" 2>&1
  echo "attention kernel tests rc $?: $(tail -1 "$OUT/kernel_tests.txt")" | tee -a "$SUM"
  grep -E "^FAILED" "$OUT/kernel_tests.txt" | head -12 | tee -a "$SUM"
  PYRESA_CUDA_TEST_MODEL=$M timeout $(cap 60) python3 -m pytest -q --tb=short -p no:cacheprovider \
    tests/test_cuda_engine.py -k "kernel_switches" > "$OUT/switch_tests.txt" 2>&1
  echo "kernel switch tests rc $?: $(tail -1 "$OUT/switch_tests.txt")" | tee -a "$SUM"
  grep -E "^FAILED|^E " "$OUT/switch_tests.txt" | head -6 | tee -a "$SUM"
  PYRESA_CUDA_RECT_KERNEL=${A12_ENGINE_KERNEL:-4} PYRESA_CUDA_PREFILL_KERNEL=${A12_ENGINE_KERNEL:-4} \
    PYRESA_CUDA_TEST_MODEL=$M timeout $(cap 150) python3 -m pytest -q -s -p no:cacheprovider tests/test_cuda_engine.py \
    -k "resa_greedy or prefill_logits or decode_logits or graph_replay or resa_schedule or truncate or last_row or first_token" \
    > "$OUT/engine_tests.txt" 2>&1
  echo "engine tests (rect+prefill kernel ${A12_ENGINE_KERNEL:-4}) rc $?: $(tail -1 "$OUT/engine_tests.txt")" | tee -a "$SUM"
  grep -E "resa greedy|prefill 300|decode rel err|FAILED" "$OUT/engine_tests.txt" | head -8 | tee -a "$SUM"
fi

if has etests; then  # every engine test with the defaults (rectification and prefill on the wgmma kernel since run 12)
  PYRESA_CUDA_TEST_MODEL=$M timeout $(cap 200) python3 -m pytest -q -s -p no:cacheprovider tests/test_cuda_engine.py \
    > "$OUT/engine_tests.txt" 2>&1
  echo "engine tests (defaults) rc $?: $(tail -1 "$OUT/engine_tests.txt")" | tee -a "$SUM"
  grep -E "resa greedy|prefill 300|decode rel err|FAILED" "$OUT/engine_tests.txt" | head -8 | tee -a "$SUM"
fi

if has kbench && [ $(left) -gt 60 ]; then  # the decode kernels alone (run 12 call 2: sep,st6,w2,in,w2in, before the one-warp kernel went)
  timeout $(cap 90) python3 bench/sparse_step_bench.py --depths ${KB_DEPTHS:-4096,32768,262144} \
    --sets ${KB_SETS:-sep,in} > "$OUT/kbench.txt" 2>&1
  echo "sparse_step_bench rc $?" | tee -a "$SUM"
  tail -22 "$OUT/kbench.txt" | tee -a "$SUM"
fi

if has prec && [ $(left) -gt 100 ]; then  # precision at the engine level (run 11's "k4" rows were the general kernel)
  timeout $(cap 120) python3 bench/rect_precision.py "$M" --prompt ${A12_PREC_PROMPT:-2000} \
    --steps ${A12_PREC_STEPS:-99} > "$OUT/precision.txt" 2>&1
  echo "rect_precision rc $?" | tee -a "$SUM"
  sed -n '/== ReSA logits/,$p' "$OUT/precision.txt" | tee -a "$SUM"
fi

if has probe && [ -d .carry ] && [ $(left) -gt 80 ]; then
  wait_7b
  timeout $(cap 110) python3 bench/rect_engine_probe.py --model $W/syn7b.gguf \
    --variant k3:PYRESA_CUDA_RECT_KERNEL=3 --variant k4:PYRESA_CUDA_RECT_KERNEL=4 \
    --variant k4-1wave:PYRESA_CUDA_RECT_KERNEL=4,PYRESA_CUDA_RECT_WAVES=1 > "$OUT/probe.txt" 2>&1
  echo "probe rc $?" | tee -a "$SUM"
  grep -E "kernel alone" "$OUT/probe.txt" | tee -a "$SUM"
  sed -n '/== rectification attention in the engine/,$p' "$OUT/probe.txt" | tee -a "$SUM"
  grep -E "Error|error" "$OUT/probe.txt" | head -5
fi

if has ab && [ -d .carry ] && [ $(left) -gt 60 ]; then
  wait_7b
  timeout $(( $(left) - 5 )) python3 bench/gpu_ab.py --model $W/syn7b.gguf --depths ${AB_DEPTHS:-262144} --modes ${AB_MODES:-resa} \
    --prefill ${AB_PREFILL:-8192} --rounds ${AB_ROUNDS:-2} --out "$OUT/ab.json" \
    ${AB_VARIANTS:---variant k3:PYRESA_CUDA_RECT_KERNEL=3,PYRESA_CUDA_PREFILL_KERNEL=3 --variant k4:PYRESA_CUDA_RECT_KERNEL=4,PYRESA_CUDA_PREFILL_KERNEL=4} \
    > "$OUT/ab.txt" 2>&1
  echo "gpu_ab rc $?" | tee -a "$SUM"
  grep -E "^   |^ *[a-z0-9_-]+  " "$OUT/ab.txt" | tail -20 | tee -a "$SUM"
  sed -n '/^tok\/s/,$p' "$OUT/ab.txt" | tee -a "$SUM"
fi
echo "total $(( $(date +%s) - T0 )) s"
echo "===== summary"
cat "$SUM"
