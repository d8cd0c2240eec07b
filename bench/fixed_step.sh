#!/bin/bash
# On the GPU machine (from the pyresa source root, ../whl and ./.carry beside it as for
# gpu_bench.sh): build and run the kernel tests (gpu_test.sh), write the 7B file, time variants of
# the decode step's fixed part (bench/fixed_step.py), optionally profile the matvec kernels of
# one eager step with Nsight Compute, and optionally run gpu_bench.py. Stages by environment:
#   FS_TESTS_K  pytest -k expression for gpu_test.sh (default "matvec"; "skip": no tests);
#               FS_TESTS_ENV extra environment for the tests (e.g. a switch to test the engine with)
#   FS_VARIANTS space-separated name:ENV=V,ENV=V (empty: no variant timing)
#   FS_TIMELINE comma-separated variant names to record a kernel timeline of
#   FS_MAIN     1: also build the repository root's own (main) source and time it, before and after
#   FS_NCU      1: ncu --set full on the matvec kernels of layer 1 (5 launches), FS_NCU_ENV extra
#               environment for it
#   FS_BENCH    arguments for gpu_bench.py (empty: not run), run once per '|'-separated entry of
#               FS_BENCH_ENVS (extra environment for that run, e.g. "A=0|A=1"; "@best": the
#               fastest of FS_VARIANTS)
set -u
source "$(dirname "$0")/gpu_common.sh"  # $src (cwd), $OUT
t0=$(date +%s)
if [ "${FS_TESTS_K:-matvec}" != skip ]; then
  env ${FS_TESTS_ENV:-} bash bench/gpu_test.sh -k "${FS_TESTS_K:-matvec}" 2>&1 | tail -25
else
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ../whl/*.whl || exit 1
  CUDAARCHS=90 cmake -S . -B build/gpu -G Ninja -DPYRESA_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$(command -v python3)" > /tmp/cmake.log 2>&1 || { tail -30 /tmp/cmake.log; exit 1; }
  cmake --build build/gpu -j"$(nproc)" > /tmp/build.log 2>&1 || { grep -E "error" -A3 /tmp/build.log | head -80; exit 1; }
  ln -sf "$src"/build/gpu/_core*.so pyresa/
fi
rm -f "$OUT/cmake.log" "$OUT/build.log"
echo "== build + tests: $(( $(date +%s) - t0 )) s"
export PYTHONPATH=/tmp/site:$src
W=/root/llamacpp
mkdir -p $W
[ -f $W/syn7b.gguf ] || python3 .carry/synth_gguf.py .carry/r1-distill-qwen-7b-q4_k_m.header.gguf $W/syn7b.gguf > /tmp/synth.log 2>&1
echo "== 7B file: $(( $(date +%s) - t0 )) s"
if [ "${FS_MAIN:-0}" = 1 ]; then
  # main's code, as the device checkout holds it (the repository root two levels up), built
  # beside this tree and timed first and last with the same script: "main" rows below.
  root=$(cd "$src/../.." && pwd)
  cmake -S "$root" -B "$root/build/main" -G Ninja -DPYRESA_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DPython_EXECUTABLE="$(command -v python3)" > /tmp/cmake_main.log 2>&1 &&
    cmake --build "$root/build/main" -j"$(nproc)" > /tmp/build_main.log 2>&1 || { tail -20 /tmp/build_main.log; exit 1; }
  rm -rf /tmp/mainpy && mkdir -p /tmp/mainpy && cp -r "$root/pyresa" /tmp/mainpy/ &&
    ln -sf "$root"/build/main/_core*.so /tmp/mainpy/pyresa/
  echo "== main build: $(( $(date +%s) - t0 )) s"
fi
main_time() {
  [ "${FS_MAIN:-0}" = 1 ] && PYTHONPATH=/tmp/site:/tmp/mainpy python3 bench/fixed_step.py --model $W/syn7b.gguf \
    --variant "main$1:" 2>&1 | grep -E "^ +main" | tee -a "$OUT/fixed_step_main.txt"
}
main_time 1
if [ -n "${FS_VARIANTS:-}" ]; then
  vargs=()
  for v in $FS_VARIANTS; do vargs+=(--variant "$v"); done
  python3 bench/fixed_step.py --model $W/syn7b.gguf "${vargs[@]}" --timeline "${FS_TIMELINE:-}" --out-dir "$OUT" 2>&1 \
    | tee "$OUT/fixed_step.txt"
  echo "== variants: $(( $(date +%s) - t0 )) s"
fi
main_time 2
if [ -n "${FS_BENCH:-}" ]; then
  IFS='|' read -ra benv <<< "${FS_BENCH_ENVS:-}"
  [ ${#benv[@]} = 0 ] && benv=("")
  for e in "${benv[@]}"; do
    [ "$e" = "@best" ] && e=$(cat /tmp/fs_best_env.txt 2>/dev/null)  # the fastest variant above
    echo "-- gpu_bench.py with: $e" | tee -a "$OUT/bench.txt"
    env $e python3 bench/gpu_bench.py --model $W/syn7b.gguf --prefill 0 $FS_BENCH 2>&1 | grep -v "^ *profile" | tee -a "$OUT/bench.txt"
  done
  echo "== bench: $(( $(date +%s) - t0 )) s"
fi
if [ "${FS_NCU:-0}" = 1 ]; then
  env ${FS_NCU_ENV:-} timeout ${FS_NCU_TIMEOUT:-150} ncu --set full -k regex:matvec --launch-skip 5 --launch-count 5 -f -o /tmp/fs_ncu \
    python3 bench/fixed_step.py --model $W/syn7b.gguf --ncu-steps 2 > /tmp/ncu.log 2>&1
  tail -5 /tmp/ncu.log
  ncu --import /tmp/fs_ncu.ncu-rep --page details --print-units base > "$OUT/ncu_matvec_details.txt" 2>&1
  ncu --import /tmp/fs_ncu.ncu-rep --page details --print-units base --section SpeedOfLight --section Occupancy \
    --section LaunchStats --section WarpStateStats 2>&1 | grep -E "matvec_|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Theoretical Occupancy|Stall|Grid Size|Waves Per SM|Warp Cycles Per Issued" | head -90
  echo "== ncu: $(( $(date +%s) - t0 )) s"
fi
grep -E "passed|failed|error" "$OUT/pytest.log" 2>/dev/null | tail -3
[ -f "$OUT/fixed_step.txt" ] && sed -n '/^variant /,$p' "$OUT/fixed_step.txt"
[ -f "$OUT/fixed_step_main.txt" ] && cat "$OUT/fixed_step_main.txt"
[ -f "$OUT/bench.txt" ] && grep -E "^-- |^depth" "$OUT/bench.txt"
