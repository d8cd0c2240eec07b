# Sourced by the bench/*.sh scripts that run on the GPU machine: work from the pyresa source root
# ($src), write results under $OUT (set by the device tool; /tmp/pyresa-out elsewhere), and let
# Python print as it goes (a call's reply carries only the end of its output).
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$src"
OUT=${OUT:-/tmp/pyresa-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
