#!/bin/bash
# One device call for the block selection's top-n (docs/perf-cuda.md "Run 11-topn"): build + the
# selection tests of every top-n variant (and the engine's ReSA tests with the default), the kernel
# table (bench/topn_bench.py), then the 7B engine at 256K, ReSA, one process per variant
# (interleaved rounds, as bench/gpu_ab.py). Output under $OUT.
#   carry [".gpuwork/src-<name>", ".gpuwork/whl", ".gpuwork/model"], with .carry/ inside the copy;
#   cd .gpuwork/src-<name> && BUDGET=530 bash bench/topn_device.sh
# Variables: TEST_K (pytest -k), KDEPTHS (kernel table depths), AB_VARIANTS ("name:VAR=V,VAR=V ..."),
# AB_ROUNDS, AB_DEPTHS, NO_ENGINE=1.
set -u
source "$(dirname "$0")/gpu_common.sh"  # $src (cwd), $OUT
t0=$(date +%s)
left() { echo $(( ${BUDGET:-530} - ($(date +%s) - t0) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ../whl/*.whl || exit 1
W=/root/llamacpp
mkdir -p $W
if [ -z "${NO_ENGINE:-}" ] && [ ! -f $W/syn7b.gguf ]; then  # the 7B file, written while the build runs
  (PYTHONPATH=/tmp/site:$src nice -n 5 python3 .carry/synth_gguf.py .carry/r1-distill-qwen-7b-q4_k_m.header.gguf \
    $W/syn7b.gguf > "$OUT/synth.log" 2>&1; echo "synth rc=$?" >> "$OUT/synth.log") &
fi
timeout $(( $(left) - 190 )) bash bench/gpu_test.sh -k "${TEST_K:-select or resa or every_block or graph_replay}" \
  > "$OUT/tests.txt" 2>&1
echo "tests rc=$? at $(( $(date +%s) - t0 )) s"
export PYTHONPATH=/tmp/site:$src
timeout $(( $(left) - 150 )) python3 bench/topn_bench.py --depths "${KDEPTHS:-32768,131072,262144}" \
  --json "$OUT/topn.json" > "$OUT/kernels.txt" 2>&1
echo "kernel bench rc=$? at $(( $(date +%s) - t0 )) s"
if [ -z "${NO_ENGINE:-}" ]; then
  # As bench/gpu_ab.py (one process per variant, interleaved rounds), each run's line kept as it
  # comes so that a cut-off call still reports the runs it finished.
  for _ in $(seq 1 40); do grep -q "synth rc" "$OUT/synth.log" 2>/dev/null && break; sleep 3; done
  eval "set -- ${AB_VARIANTS:-old:PYRESA_CUDA_TOPN=old,PYRESA_CUDA_SCORE_EARLY_Q=0 new: new_late_q:PYRESA_CUDA_SCORE_EARLY_Q=0}"
  for rnd in $(seq 1 "${AB_ROUNDS:-2}"); do
    for v in "$@"; do
      [ $(left) -lt 40 ] && break 2
      name=${v%%:*}; assigns=${v#*:}
      line=$(env ${assigns//,/ } timeout $(( $(left) - 5 )) python3 bench/gpu_bench.py --model $W/syn7b.gguf \
        --depths "${AB_DEPTHS:-262144}" --modes resa --prefill 0 --sampling 0 2>&1 | grep -E "tok/s|Error" | tail -3 | tr "\n" " ")
      echo "round $rnd $name [$assigns] $line" | tee -a "$OUT/engine.txt"
    done
  done
  echo "engine runs done at $(( $(date +%s) - t0 )) s"
fi
echo "=== tests"; grep -E "FAILED|Error|error" "$OUT/tests.txt" | sort | uniq | head -20; tail -4 "$OUT/tests.txt"
echo "=== engine"; cat "$OUT/engine.txt" 2>/dev/null
echo "=== kernels"; sed -n '/^us per layer/,$p' "$OUT/kernels.txt"; grep -iE "error|Traceback" -A3 "$OUT/kernels.txt" | head
rm -f "$OUT"/cmake.log "$OUT"/build.log
