#!/bin/bash
# One device call for run 11-rect-wgmma (docs/perf-cuda.md): build (Hopper as sm_90a), the
# attention kernel tests (variant 4 = wgmma, and the others), the kernels alone
# (bench/attn_bench.py, variants 3 and 4), the engine tests with variant 4, the 7B ReSA@256K
# same-build A/B (rectification attention on variant 3 vs 4, one --profile run each), and the
# precision modes at the engine level (bench/rect_precision.py). Stages in RW_STAGES (default
# "tests bench e2e engine prec", in that order); each stage is skipped when too little of RW_BUDGET (s) is left.
# Call 2 adds "v4tests" (variant 4's kernel tests only), "probe" (bench/rect_engine_probe.py: the
# rectification's attention in the engine under PDL / split-count variants) and "ncu" (Nsight
# Compute on one of the engine's wgmma launches).
# Run 12-attn12 found why call 1's engine figures for variant 4 were slow: the engine's switch took
# 1-3, so PYRESA_CUDA_RECT_KERNEL=4 ran the general kernel; fixed there (bench/attn12_device.sh
# was run 12's call; variant 4 is now the default).
# Needs ../whl, ../model (8-layer test model) and .carry/ (7B header, synth_gguf.py) as
# bench/rect_attn_device.sh. Prints a short summary last.
set -u
source "$(dirname "$0")/gpu_common.sh"  # $src (cwd), $OUT
source "$(dirname "$0")/gpu_build_7b.sh"  # prepare_build, wait_7b, $W, $M
T0=$(date +%s)
left() { echo $(( ${RW_BUDGET:-520} - ($(date +%s) - T0) )); }
STAGES=" ${RW_STAGES:-tests bench e2e engine prec} "
has() { [[ "$STAGES" == *" $1 "* ]]; }
prepare_build $( (has e2e || has probe || has ncu) && echo 1)
SUM="$OUT/summary.txt"
: > "$SUM"
python3 -c "import pyresa._core as c; print('wgmma available:', c.cuda_test.attention_wgmma_available())" | tee -a "$SUM"

if has tests; then
  timeout $(( $(left) < 150 ? $(left) : 150 )) python3 -m pytest -q --tb=short -p no:cacheprovider \
    tests/test_cuda_kernels.py -k "batched_attention or dense_attention" > "$OUT/kernel_tests.txt" 2>&1
  echo "kernel tests rc $?: $(tail -1 "$OUT/kernel_tests.txt")" | tee -a "$SUM"
  grep -E "^FAILED" "$OUT/kernel_tests.txt" | head -12 | tee -a "$SUM"
  grep -E "^E .*rel err|^E  +assert" "$OUT/kernel_tests.txt" | head -6
fi
if has v4tests; then  # only variant 4's cases of the batched attention tests
  ids=$(python3 -m pytest --collect-only -q -p no:cacheprovider tests/test_cuda_kernels.py -k batched_attention 2>/dev/null |
    grep -E -- "-4-(64|128)\]$")
  timeout 120 python3 -m pytest -q --tb=short -p no:cacheprovider $ids > "$OUT/kernel_tests.txt" 2>&1
  echo "variant-4 kernel tests rc $?: $(tail -1 "$OUT/kernel_tests.txt")" | tee -a "$SUM"
  grep -E "^FAILED" "$OUT/kernel_tests.txt" | head -12 | tee -a "$SUM"
fi
V4OK=1
grep -qE "FAILED .*test_batched_attention\[.*-4-(64|128)\]" "$OUT/kernel_tests.txt" 2>/dev/null && V4OK=0

if has bench && [ $(left) -gt 100 ]; then
  ATTN_VARIANTS=$([ $V4OK = 1 ] && echo 3,4 || echo 3) timeout 120 python3 bench/attn_bench.py > "$OUT/attn_bench.txt" 2>&1
  echo "attn_bench rc $?" | tee -a "$SUM"
  grep -E "sweep" "$OUT/attn_bench.txt" | cut -c1-130
  sed -n '/== attention alone/,$p' "$OUT/attn_bench.txt" | tee -a "$SUM"
fi

if has probe && [ $V4OK = 1 ] && [ -d .carry ] && [ $(left) -gt 60 ]; then  # the launch context, one engine each
  wait_7b
  timeout $(( $(left) < 120 ? $(left) : 120 )) python3 bench/rect_engine_probe.py --model $W/syn7b.gguf \
    --variant k3:PYRESA_CUDA_RECT_KERNEL=3 --variant k4:PYRESA_CUDA_RECT_KERNEL=4 \
    --variant k4-1wave:PYRESA_CUDA_RECT_KERNEL=4,PYRESA_CUDA_RECT_WAVES=1 \
    --variant k4-4waves:PYRESA_CUDA_RECT_KERNEL=4,PYRESA_CUDA_RECT_WAVES=4 \
    --variant k4-nopdl:PYRESA_CUDA_RECT_KERNEL=4,PYRESA_CUDA_PDL=0 \
    --variant k4-noearly:PYRESA_CUDA_RECT_KERNEL=4,PYRESA_CUDA_PDL_EARLY=0 \
    --variant k3-nopdl:PYRESA_CUDA_RECT_KERNEL=3,PYRESA_CUDA_PDL=0 > "$OUT/probe.txt" 2>&1
  echo "probe rc $?" | tee -a "$SUM"
  grep -E "kernel alone" "$OUT/probe.txt" | tee -a "$SUM"
  sed -n '/== rectification attention in the engine/,$p' "$OUT/probe.txt" | tee -a "$SUM"
  grep -E "Error|error" "$OUT/probe.txt" | head -5
fi

if has ncu && [ $V4OK = 1 ] && [ -d .carry ] && command -v ncu > /dev/null && [ $(left) -gt 100 ]; then
  wait_7b
  timeout 90 ncu --clock-control none --kernel-name regex:attention_wgmma_kernel --launch-skip 3 --launch-count 1 --section SpeedOfLight \
    --section LaunchStats --section Occupancy --section WarpStateStats python3 bench/rect_engine_probe.py \
    --model $W/syn7b.gguf --once --variant k4:PYRESA_CUDA_RECT_KERNEL=4 > "$OUT/ncu.txt" 2>&1
  echo "ncu rc $? (k4 in the engine, one layer's kernel)" | tee -a "$SUM"
  grep -E "Duration|Grid Size|Registers Per|Waves Per SM|Achieved Occupancy|Compute \(SM\) Th|Memory Throughput|SM Frequency|DRAM Through|L2 Cache Through|Dynamic Shared|Warp Cycles Per Issued|No Eligible|==ERR|==WARN" "$OUT/ncu.txt" | head -20 | tee -a "$SUM"
fi

if has e2e && [ $V4OK = 1 ] && [ -d .carry ]; then
  wait_7b
  for k in 3 4; do
    [ $(left) -gt 60 ] || break
    echo "== 7B ReSA@256K, rect kernel $k" | tee -a "$SUM"
    PYRESA_CUDA_RECT_KERNEL=$k timeout $(( $(left) < 90 ? $(left) : 90 )) python3 bench/gpu_bench.py \
      --model $W/syn7b.gguf --depths 262144 --modes resa --prefill 0 --sampling 0 --profile \
      --out "$OUT/e2e_k$k.json" > "$OUT/e2e_k$k.txt" 2>&1
    grep -E "^depth|Error|error" "$OUT/e2e_k$k.txt" | cut -c1-200 | head -4
  done
  python3 - "$OUT"/e2e_k*.json <<'EOF2' 2>&1 | tee -a "$SUM"
import json, sys
for f in sys.argv[1:]:
    r = json.load(open(f))
    for d in r["decode"]:
        pr, p = d.get("profile_rectification_ms", {}), d.get("profile_ms", {})
        print(f"{f.split('/')[-1]}: ReSA@{d['depth']} {d['tokens_per_s']:.1f} tok/s ({d['ms_per_token']:.3f} ms/token); "
              f"one rectification {sum(pr.values()):.2f} ms, its attention {pr.get('attention', float('nan')):.2f} ms; "
              f"sparse step {sum(p.values()):.3f} ms")
EOF2
fi

if has engine && [ $V4OK = 1 ] && [ $(left) -gt 100 ]; then
  PYRESA_CUDA_RECT_KERNEL=4 PYRESA_CUDA_PREFILL_KERNEL=4 PYRESA_CUDA_TEST_MODEL=$M timeout 150 \
    python3 -m pytest -q -s -p no:cacheprovider tests/test_cuda_engine.py \
    -k "resa_greedy or prefill_logits or decode_logits or graph_replay or resa_schedule or truncate" \
    > "$OUT/engine_tests.txt" 2>&1
  echo "engine tests (rect+prefill kernel 4) rc $?: $(tail -1 "$OUT/engine_tests.txt")" | tee -a "$SUM"
  grep -E "resa greedy|prefill 300|decode rel err|FAILED" "$OUT/engine_tests.txt" | head -8 | tee -a "$SUM"
fi

if has prec && [ $V4OK = 1 ] && [ $(left) -gt 40 ]; then
  timeout $(( $(left) - 5 )) python3 bench/rect_precision.py "$M" --prompt ${RW_PREC_PROMPT:-2000} \
    --steps ${RW_PREC_STEPS:-99} > "$OUT/precision.txt" 2>&1
  echo "rect_precision rc $?" | tee -a "$SUM"
  sed -n '/== ReSA logits/,$p' "$OUT/precision.txt" | tee -a "$SUM"
fi
echo "total $(( $(date +%s) - T0 )) s"
echo "===== summary"
cat "$SUM"
