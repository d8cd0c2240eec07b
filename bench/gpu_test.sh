#!/bin/bash
# On the GPU machine: build pyresa with the CUDA backend (sm_90) and run the CUDA tests.
# Expects ../whl/*.whl (gguf) and ../model/*.gguf beside this source tree (see docs/perf-cuda.md).
# Extra arguments go to pytest; GPU_TEST_FILES picks the test files (default: kernels, then engine).
set -u
source "$(dirname "$0")/gpu_common.sh"  # $src (cwd), $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ../whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$src
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
nvcc --version | tail -1
t0=$(date +%s)
CUDAARCHS=${CUDAARCHS:-90} cmake -S . -B build/gpu -G Ninja -DPYRESA_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v python3)" > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
cmake --build build/gpu -j"$(nproc)" > "$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -80; exit 1; }
ln -sf "$src"/build/gpu/_core*.so pyresa/
echo "build: $(( $(date +%s) - t0 )) s"
model=$(ls ../model/*.gguf 2>/dev/null | head -1)
PYRESA_CUDA_TEST_MODEL=$model python3 -m pytest -q --tb=short -p no:cacheprovider \
  ${GPU_TEST_FILES:-tests/test_cuda_kernels.py tests/test_cuda_engine.py} -s "$@" 2>&1 | tee "$OUT/pytest.log" | grep -vE "^(PASSED|\.)" | tail -150
