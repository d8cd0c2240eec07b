#!/bin/bash
# On the GPU machine (no network), from the pyresa source root: build pyresa with CUDA and
# llama.cpp (llama-bench, CUDA, flash attention) and measure both on the 7B model in one run.
# Needs beside the source: ../whl/*.whl (gguf) and, in ./.carry/, what
# shared/gpu-bench/llamacpp-carry.sh packs (llama.cpp source, the 7B header, synth_gguf.py).
#   bash bench/gpu_bench.sh [--quick]      (--quick: pyresa only, no llama.cpp)
set -u
source "$(dirname "$0")/gpu_common.sh"  # $src (cwd), $OUT
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
W=/root/llamacpp
mkdir -p $W
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ../whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$src
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
nvcc --version | tail -1 | tee -a "$OUT/gpu.txt"

# The 7B model with random weights (the same file llama.cpp reads).
[ -f $W/syn7b.gguf ] || python3 .carry/synth_gguf.py .carry/r1-distill-qwen-7b-q4_k_m.header.gguf $W/syn7b.gguf
# llama.cpp builds in the background, at low priority, while pyresa builds and runs.
if [ $QUICK = 0 ]; then
  nice -n 19 bash .carry/llamacpp-bench.sh build > "$OUT/llama_build.log" 2>&1 &
fi

t0=$(date +%s)
CUDAARCHS=${CUDAARCHS:-90} cmake -S . -B build/gpu -G Ninja -DPYRESA_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v python3)" > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
cmake --build build/gpu -j8 > "$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -80; exit 1; }
ln -sf "$src"/build/gpu/_core*.so pyresa/
echo "pyresa build: $(( $(date +%s) - t0 )) s"
python3 bench/gpu_bench.py --model $W/syn7b.gguf --out "$OUT/pyresa_bench.json" ${PYRESA_BENCH_ARGS:-} 2>&1 | tee "$OUT/pyresa_bench.txt"

if [ $QUICK = 0 ]; then
  bash .carry/llamacpp-bench.sh run -p 4096 -n 0 2>&1 | tee "$OUT/llama_prefill.txt"
  bash .carry/llamacpp-bench.sh run -p 0 -n 64 -d 0,32768,131072,262144 2>&1 | tee "$OUT/llama_decode.txt"
fi
