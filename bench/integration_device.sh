#!/bin/bash
# The merged tree on the GPU machine in two calls on one warm machine (see docs/perf-cuda.md,
# "How the runs are made"). Carry the source copy (with .carry/ from llamacpp-carry.sh inside),
# ../whl and ../model (the default model, or its 8-layer cut).
#   bash bench/integration_device.sh a   llama.cpp builds in the background (state in /root/llamacpp);
#                                        pyresa builds; every GPU test; the 7B file; an A/B of the
#                                        switches in $AB_VARIANTS (bench/gpu_ab.py --variant args)
#   bash bench/integration_device.sh b   pyresa and llama.cpp side by side (bench/gpu_bench.sh)
set -u
source "$(dirname "$0")/gpu_common.sh"  # $src (cwd), $OUT
case "${1:-}" in
a)
  nice -n 10 bash .carry/llamacpp-bench.sh build > "$OUT/llama_build.log" 2>&1 &
  timeout ${TEST_TIMEOUT:-330} bash bench/gpu_test.sh ${TEST_ARGS:-} || echo "GPU TESTS FAILED OR TIMED OUT"
  grep -E "passed|failed" "$OUT/pytest.log" | tail -3
  for _ in $(seq 1 60); do  # the 7B file, written by the llama.cpp script
    [ -f /root/llamacpp/syn7b.gguf ] && ! pgrep -f synth_gguf.py > /dev/null && break; sleep 3
  done
  export PYTHONPATH=/tmp/site:$src
  eval "set -- ${AB_VARIANTS:-}"
  args=()
  for v in "$@"; do args+=(--variant "$v"); done
  [ ${#args[@]} -gt 0 ] && timeout ${AB_TIMEOUT:-330} python3 bench/gpu_ab.py --model /root/llamacpp/syn7b.gguf \
    --depths "${AB_DEPTHS:-0,262144}" --modes "${AB_MODES:-dense,resa}" --rounds "${AB_ROUNDS:-1}" \
    --out "$OUT/ab.json" "${args[@]}" 2>&1 | tee "$OUT/ab.txt" | tail -40
  ;;
b)
  timeout 560 bash bench/gpu_bench.sh
  ;;
*) echo "usage: $0 a | b"; exit 2 ;;
esac
