"""Micro-benchmark of the legacy-format CPU kernels: matrix-vector products as decoding runs them.

For every weight type and every kernel set (ISA) this CPU supports, one thread (or --threads)
computes `rows` dot products of length `n` against one activation row (quantized once, as the engine
does), i.e. a sweep over a rows x n weight matrix, and reports
  - dots/s       rows per second,
  - GB/s         weight bytes streamed per second (the figure that matters: decoding is
                 memory-bound, so compare it with the read bandwidth printed first).
Two sweeps by default: the LM head of the default model (576 x 49152, 17-35 MB: may sit in
the L3 cache) and a matrix of ~256 MB (far larger than any cache: DRAM-bound, like a whole
model per token).

The loop runs in C++ (Python calling vec_dot per row would measure Python): a tiny harness
is compiled against the developer build's libpyresa_core.a. Run after ./scripts/dev-build.sh:
    PYTHONPATH=. python bench/bench_kernels.py [--types Q4_0,Q8_0] [--isas avx2] [--n 576 --rows 49152]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyresa import _core  # noqa: E402

TYPES = {"F32": 0, "F16": 1, "BF16": 30, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8}
SCALE_OFFSETS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,)}

HARNESS = r"""
#include <atomic>
#include <chrono>
#include <thread>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>
#include "backends/cpu/cpu_kernels.h"
using namespace pyresa;
using namespace pyresa::cpu;
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

extern "C" {
// Best seconds of `reps` sweeps of rows dot products over a weight matrix, the rows split
// in contiguous chunks over `threads` threads (as the engine's matmul would); -1 if unsupported.
double bench_matvec(const char* isa, int type, const uint8_t* w, int64_t rows, int64_t n,
                    const float* x, int reps, int threads, float* out) {
  try { set_cpu_isa(isa); } catch (...) { return -1; }
  const CpuKernels& k = cpu_kernels();
  const GgmlType t = (GgmlType)type, at = type_traits(t).vec_dot_type;
  const auto dot = k.types[type].vec_dot;
  const auto quant = k.types[(int)at].quantize_row;
  if (!dot || !quant) return -1;
  std::vector<uint8_t> act(row_size(at, n));
  const size_t rb = row_size(t, n);
  std::atomic<int> arrived{0};
  std::atomic<int> generation{0};
  auto barrier = [&](int& gen) {  // spin barrier: thread start-up stays out of the timings
    if (arrived.fetch_add(1) + 1 == threads) { arrived = 0; generation.fetch_add(1); }
    else while (generation.load() == gen) std::this_thread::yield();
    ++gen;
  };
  double best = 1e30;
  auto worker = [&](int id) {
    const int64_t lo = rows * id / threads, hi = rows * (id + 1) / threads;
    int gen = 0;
    for (int r = 0; r < reps; ++r) {
      barrier(gen);
      const double t0 = now();
      if (id == 0) quant(x, act.data(), n);
      barrier(gen);  // the activation row is ready
      for (int64_t i = lo; i < hi; ++i) out[i] = dot(n, w + i * rb, act.data());
      barrier(gen);
      const double dt = now() - t0;
      if (id == 0 && dt < best) best = dt;
    }
  };
  std::vector<std::thread> pool;
  for (int id = 1; id < threads; ++id) pool.emplace_back(worker, id);
  worker(0);
  for (auto& th : pool) th.join();
  return best;
}

// Best seconds of `reps` read-only passes over `bytes` (the floor a memory-bound kernel meets).
double bench_read(const uint8_t* p, int64_t bytes, int reps, uint64_t* sink) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now();
    uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const uint64_t* q = (const uint64_t*)p;
    for (int64_t i = 0; i + 8 <= bytes / 8; i += 8)
      for (int j = 0; j < 8; ++j) acc[j] ^= q[i + j];
    const double dt = now() - t0;
    for (int j = 0; j < 8; ++j) *sink += acc[j];
    if (dt < best) best = dt;
  }
  return best;
}
}
"""


def build_harness(tmp: Path) -> ctypes.CDLL:
    lib = Path(os.path.realpath(_core.__file__)).parent / "libpyresa_core.a"
    if not lib.exists():
        sys.exit(f"no {lib}: run ./scripts/dev-build.sh first")
    cxx = shutil.which("g++") or shutil.which("c++")
    (tmp / "harness.cpp").write_text(HARNESS)
    so = tmp / "harness.so"
    # -march=native only for the read-bandwidth loop; the kernels come from the library as built.
    subprocess.run([cxx, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", f"-I{ROOT / 'native'}",
                    str(tmp / "harness.cpp"), str(lib), "-o", str(so), "-lpthread"], check=True)
    h = ctypes.CDLL(str(so))
    P = ctypes.c_void_p
    h.bench_matvec.argtypes = [ctypes.c_char_p, ctypes.c_int, P, ctypes.c_int64, ctypes.c_int64, P, ctypes.c_int, ctypes.c_int, P]
    h.bench_matvec.restype = ctypes.c_double
    h.bench_read.argtypes = [P, ctypes.c_int64, ctypes.c_int, P]
    h.bench_read.restype = ctypes.c_double
    return h


def aligned(data: np.ndarray, offset: int) -> np.ndarray:
    """A copy of the bytes starting `offset` bytes past a 64-byte boundary."""
    raw = np.empty(data.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    out = raw[start:start + data.nbytes]
    out[:] = data.view(np.uint8).reshape(-1)
    return out


def weights(name: str, rows: int, n: int, rng, offset: int) -> np.ndarray:
    return aligned(random_weights(name, rows, n, rng), offset)


def random_weights(name: str, rows: int, n: int, rng) -> np.ndarray:
    """Random weight rows: random quant bits with weight-like fp16 scales."""
    t = TYPES[name]
    nbytes = _core.row_size(t, n) * rows
    if name == "F32":
        return (rng.standard_normal(nbytes // 4).astype(np.float32) * 0.05).view(np.uint8)
    if name == "F16":
        return (rng.standard_normal(nbytes // 2) * 0.05).astype(np.float16).view(np.uint8)
    if name == "BF16":
        f = rng.standard_normal(nbytes // 2).astype(np.float32) * 0.05
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    ts = _core.row_size(t, 32)
    data = rng.integers(0, 256, size=(nbytes // ts, ts), dtype=np.uint8)
    for k, off in enumerate(SCALE_OFFSETS[name]):
        v = (rng.uniform(0.3, 1.0, data.shape[0]) * (0.02 if k == 0 else -0.2)).astype(np.float16)
        data[:, off:off + 2] = v.view(np.uint8).reshape(-1, 2)
    return data.reshape(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--isas", default=",".join(_core.supported_isas()))
    ap.add_argument("--n", type=int, default=576, help="row length (elements)")
    ap.add_argument("--rows", type=int, default=49152, help="rows of the first sweep")
    ap.add_argument("--big-mb", type=float, default=256, help="weight MB of the DRAM-bound sweep (0: skip)")
    ap.add_argument("--align", type=int, default=32,
                    help="weight data starts this many bytes past a 64-byte boundary (GGUF aligns tensors to 32)")
    ap.add_argument("--threads", type=int, default=1, help="threads sharing the rows of a sweep")
    ap.add_argument("--reps", type=int, default=7, help="sweeps per measurement; the best is reported")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        h = build_harness(Path(tmp))
        x = aligned(rng.standard_normal(args.n).astype(np.float32), 0).view(np.float32)
        sink = ctypes.c_uint64(0)
        print(f"CPU: {_cpu_name()}, kernel sets: {', '.join(_core.supported_isas())}; {args.threads} thread(s); "
              f"weights at 64k+{args.align} bytes")
        for label, mb in (("L3-sized", 24), ("DRAM", 512)):
            buf = rng.integers(0, 256, size=int(mb * 2**20), dtype=np.uint8)
            t = h.bench_read(buf.ctypes.data, buf.size, args.reps, ctypes.byref(sink))
            print(f"read bandwidth ({label}, {mb} MB): {buf.size / t / 1e9:.1f} GB/s")
        sweeps = [(args.rows, "x".join(map(str, (args.n, args.rows))))]
        for name in args.types.split(","):
            if args.big_mb > 0:
                big_rows = int(args.big_mb * 2**20 // _core.row_size(TYPES[name], args.n))
                sweeps_t = sweeps + [(big_rows, f"{args.n}x{big_rows}")]
            else:
                sweeps_t = sweeps
            for rows, shape in sweeps_t:
                w = weights(name, rows, args.n, rng, args.align)
                out = np.empty(rows, np.float32)
                cells = []
                for isa in args.isas.split(","):
                    reps = args.reps if rows * args.n < 1e8 else max(2, args.reps // 2)
                    t = h.bench_matvec(isa.encode(), TYPES[name], w.ctypes.data, rows, args.n, x.ctypes.data, reps,
                                       args.threads, out.ctypes.data)
                    if t < 0:
                        cells.append(f"{isa}: n/a")
                        continue
                    cells.append(f"{isa}: {rows / t / 1e6:7.2f} M dots/s {w.nbytes / t / 1e9:6.1f} GB/s")
                print(f"{name:5s} {shape:>11s} ({w.nbytes / 2**20:6.1f} MB)  " + "  |  ".join(cells), flush=True)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
