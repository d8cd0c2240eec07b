# Sourced (after gpu_common.sh) by the device scripts that build pyresa and then time the 7B model:
#   prepare_build [WANT_7B]: the gguf wheel on PYTHONPATH; with WANT_7B=1 (and .carry/ present) the
#     7B file ($W/syn7b.gguf) written in the background while pyresa builds (quietly: build
#     errors, ptxas spills and C75xx warnings shown); exits when the build fails. Sets $M, the
#     8-layer test model in ../model.
#   wait_7b: waits for the 7B file (once).
W=/root/llamacpp
prepare_build() {
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ../whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$src
  mkdir -p $W
  if [ "${1:-0}" = 1 ] && [ -d .carry ] && [ ! -f $W/syn7b.gguf ]; then
    nice -n 10 python3 .carry/synth_gguf.py .carry/r1-distill-qwen-7b-q4_k_m.header.gguf $W/syn7b.gguf \
      > "$OUT/synth.log" 2>&1 &
    SYNTH=$!
  fi
  bash bench/gpu_test.sh -k "no_test_has_this_name" 2>&1 | grep -E "build:|error|warning.*(C75|spill)" | head -20
  ls pyresa/_core*.so > /dev/null || { echo "build failed"; tail -40 "$OUT/build.log"; exit 1; }
  M=$(ls ../model/*.gguf | head -1)
}
wait_7b() {
  if [ -n "${SYNTH:-}" ]; then wait $SYNTH; SYNTH=""; fi
}
