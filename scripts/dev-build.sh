#!/usr/bin/env bash
# Developer build: compile pyresa._core into build/dev and link it into the source tree,
# so `PYTHONPATH=. pytest tests` runs against the working copy without reinstalling.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${PYRESA_BUILD_DIR:-build/dev}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} -DPYRESA_CUDA=${PYRESA_CUDA:-OFF} \
  -DPython_EXECUTABLE="$(command -v python3)" >/dev/null
cmake --build "$build" -j "${JOBS:-2}"
so=$(ls "$build"/_core*.so | head -1)
ln -sf "$(realpath "$so")" pyresa/
echo "built $(basename "$so")"
