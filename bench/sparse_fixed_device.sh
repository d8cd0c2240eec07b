#!/bin/bash
# One device call for run 11-sparse-fixed (docs/perf-cuda.md): build + the attention/combine
# kernel tests (TEST_K), the per-layer kernel table of every set (bench/sparse_step_bench.py:
# separate vs in-kernel combine, split counts, the decode kernel alone, contiguous blocks),
# Nsight Compute on the sparse decode attention kernel at 256K (NCU=1), then the 7B engine A/B of
# PYRESA_CUDA_DECODE_COMBINE=0/1 at 256K (bench/gpu_ab.py, AB_ROUNDS rounds) while time is left.
#   carry [".gpuwork/src-<name>", ".gpuwork/whl"] (+ ".gpuwork/model" for the engine tests);
#   cd .gpuwork/src-<name> && BUDGET=530 NCU=1 bash bench/sparse_fixed_device.sh
# Call 1 ran it as above; call 2 (two-warp kernel): TEST_K="attention or combine or cuda_engine"
# KB_ARGS="--sets sep,in,w2,w2in,w2_66" NCU_SETS="w2" AB_DEPTHS=262144 AB_MODES=dense,resa
# AB_VARIANTS="--variant w1:PYRESA_CUDA_DECODE_WARPS=1 --variant w2:PYRESA_CUDA_DECODE_WARPS=2 ..."
# (Run 12-attn12 removed the one-warp kernel and its switches: the sets sep and in are now the
# two-warp kernel; w2... and st6... no longer exist.)
set -u
source "$(dirname "$0")/gpu_common.sh"  # $src (cwd), $OUT
t0=$(date +%s)
left() { echo $(( ${BUDGET:-530} - ($(date +%s) - t0) )); }
W=/root/llamacpp
mkdir -p $W
# The 7B file is written in the background while the build and the tests run.
if [ -f .carry/synth_gguf.py ] && [ -z "${NO_ENGINE:-}" ]; then
  (python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ../whl/*.whl >/dev/null 2>&1;
   PYTHONPATH=/tmp/site nice -n 10 python3 .carry/synth_gguf.py .carry/r1-distill-qwen-7b-q4_k_m.header.gguf $W/syn7b.gguf \
     > "$OUT/synth.log" 2>&1) &
fi
timeout $(left) bash bench/gpu_test.sh -k "${TEST_K:-attention or combine}" > "$OUT/tests.txt" 2>&1
echo "tests rc=$? at $(( $(date +%s) - t0 )) s"; grep -E "passed|failed|error" "$OUT/tests.txt" | tail -3
export PYTHONPATH=/tmp/site:$src
timeout $(( $(left) > 150 ? 150 : $(left) )) python3 bench/sparse_step_bench.py --json "$OUT/kernels.json" \
  ${KB_ARGS:-} > "$OUT/kernels.txt" 2>&1
echo "kernel bench rc=$? at $(( $(date +%s) - t0 )) s"
if [ -n "${NCU:-}" ] && [ $(left) -gt 200 ]; then
  for set in ${NCU_SETS:-sep in}; do
    timeout 60 ncu --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis \
      --section LaunchStats --section Occupancy --section SchedulerStats --cache-control none --clock-control none \
      --kernel-name regex:"decode_attention" --launch-skip 2 --launch-count 1 \
      python3 bench/sparse_step_bench.py --depths 262144 --reps 4 --copies 2 --sets $set > "$OUT/ncu_$set.txt" 2>&1
    echo "ncu $set rc=$?"
  done
fi
if [ -z "${NO_ENGINE:-}" ] && [ $(left) -gt 120 ]; then
  wait
  timeout $(( $(left) - 10 )) python3 bench/gpu_ab.py --model $W/syn7b.gguf --depths ${AB_DEPTHS:-262144} \
    --modes ${AB_MODES:-resa} --rounds ${AB_ROUNDS:-2} --out "$OUT/ab.json" \
    ${AB_VARIANTS:---variant sep:PYRESA_CUDA_DECODE_COMBINE=0 --variant in:PYRESA_CUDA_DECODE_COMBINE=1} \
    > "$OUT/ab.txt" 2>&1
  echo "engine A/B rc=$? at $(( $(date +%s) - t0 )) s"
fi
echo "=== tests"; grep -E "FAILED|rel err|Error|error" "$OUT/tests.txt" | sort | uniq | head -20; tail -2 "$OUT/tests.txt"
for set in ${NCU_SETS:-sep in}; do
  [ -f "$OUT/ncu_$set.txt" ] && { echo "=== ncu $set"; grep -E "Duration|DRAM Throughput|Memory Throughput|Issue Slots Busy|Warp Cycles Per Issued|No Eligible|Stall|Achieved Occupancy|Registers Per|L2 Hit|Mem Busy|Max Bandwidth|One or More|Active Warps|Issued Warp|Eligible Warps" "$OUT/ncu_$set.txt" | sed 's/  */ /g' | head -24; }
done
echo "=== engine A/B"; tail -6 "$OUT/ab.txt" 2>/dev/null
echo "=== kernels"; sed -n '/^  depth/,$p' "$OUT/kernels.txt"; grep -iE "error|Traceback" "$OUT/kernels.txt" | head
rm -f "$OUT"/cmake.log "$OUT"/build.log "$OUT"/kernels.json "$OUT"/synth.log
