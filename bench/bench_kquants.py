#!/usr/bin/env python3
"""Micro-benchmark of the K-quant dot-product kernels: GB/s of weight bytes read, one thread.

A matrix-vector product (every row dotted with one Q8_K activation row, as a decode step does)
is timed for Q4_K, Q5_K and Q6_K on every ISA this CPU runs, over a sweep of matrix sizes:
  L2   ~0.5 MB of weights (kernel throughput; the row stays in cache between repetitions)
  L3   ~12 MB
  DRAM ~256 MB (memory-bound, as decoding a 7B model is)
with row lengths 3584 and 18944 (the hidden and FFN widths of a Qwen2-7B).

The Python binding quantizes x on every call, so the loop is timed in a small C++ harness that
this script compiles against the developer build (build/dev/libpyresa_core.a). If llama-cpp-python
installed ggml's CPU library, the same loop runs ggml's own vec_dot as a reference.

    ./scripts/dev-build.sh && python bench/bench_kquants.py [--quick] [--json out.json]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HARNESS = r"""
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/cpu_kernels.h"
#include "formats/fp16.h"

#ifdef WITH_GGML
#include "ggml-cpu.h"
#endif

using namespace pyresa;

struct Type { const char* name; int id; int block_bytes; std::vector<int> fp16_offsets; };

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Fastest of `reps` matrix-vector products; returns seconds.
template <typename Dot>
static double time_matvec(Dot dot, const uint8_t* w, size_t row_bytes, int64_t rows, double min_time) {
  volatile float sink = 0;
  std::vector<float> y(rows);
  for (int64_t r = 0; r < rows; ++r) y[r] = dot(w + r * row_bytes);  // warm-up
  double best = 1e30, total = 0;
  int reps = 0;
  while (total < min_time || reps < 3) {
    const double t0 = now();
    for (int64_t r = 0; r < rows; ++r) y[r] = dot(w + r * row_bytes);
    const double t = now() - t0;
    best = std::min(best, t);
    total += t;
    ++reps;
    sink = sink + y[rows / 2];
  }
  return best;
}

int main(int argc, char** argv) {
  const double min_time = argc > 1 ? std::atof(argv[1]) : 0.5;
  const bool quick = argc > 2 && std::string(argv[2]) == "quick";
  const std::string want_types = argc > 3 ? argv[3] : "Q4_K,Q5_K,Q6_K";
  const std::string want_isas = argc > 4 ? argv[4] : "";
  auto wanted = [](const std::string& list, const std::string& name) {
    if (list.empty()) return true;
    return ("," + list + ",").find("," + name + ",") != std::string::npos;
  };
  const std::vector<Type> types = {{"Q4_K", 12, 144, {0, 2}}, {"Q5_K", 13, 176, {0, 2}}, {"Q6_K", 14, 210, {208}}};
  const std::vector<int64_t> widths = {3584, 18944};
  struct Size { const char* name; double bytes; };
  std::vector<Size> sizes = {{"L2", 0.5e6}, {"L3", 12e6}, {"DRAM", 256e6}};
  if (quick) sizes = {{"L2", 0.5e6}, {"DRAM", 64e6}};

  std::vector<std::pair<std::string, const cpu::CpuKernels*>> isas;
  for (const auto& name : cpu::supported_isas())
    isas.emplace_back(name, name == "scalar" ? cpu::kernels_scalar() : name == "avx2" ? cpu::kernels_avx2() : cpu::kernels_avx512());
#ifdef WITH_GGML
  ggml_cpu_init();
#endif

  std::mt19937_64 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> scale(1e-3f, 5e-2f);
  for (const Type& t : types) {
    if (!wanted(want_types, t.name)) continue;
    for (int64_t n : widths) {
      const size_t row_bytes = (size_t)(n / 256) * t.block_bytes;
      std::vector<float> x(n);
      for (auto& v : x) v = normal(rng);
      for (const Size& s : sizes) {
        const int64_t rows = std::max<int64_t>(1, (int64_t)(s.bytes / row_bytes));
        std::vector<uint8_t> w(rows * row_bytes);
        for (size_t i = 0; i < w.size(); i += 8) { uint64_t r = rng(); std::memcpy(&w[i], &r, std::min<size_t>(8, w.size() - i)); }
        for (size_t b = 0; b < w.size() / t.block_bytes; ++b)  // finite, realistic scales
          for (int off : t.fp16_offsets) { fp16_t h = fp32_to_fp16(scale(rng)); std::memcpy(&w[b * t.block_bytes + off], &h, 2); }
        const double gb = (double)w.size() / 1e9;
        for (const auto& [name, k] : isas) {
          auto vd = k->types[t.id].vec_dot;
          auto quantize = k->types[(int)GgmlType::Q8_K].quantize_row;
          if (!vd || !quantize || !wanted(want_isas, name)) continue;
          std::vector<uint8_t> act(n / 256 * sizeof(block_q8_K));
          quantize(x.data(), act.data(), n);
          const double sec = time_matvec([&](const uint8_t* row) { return vd(n, row, act.data()); }, w.data(), row_bytes, rows,
                                         name == "scalar" ? min_time / 4 : min_time);
          std::printf("%s %lld %s %s %.6g %.4f\n", t.name, (long long)n, s.name, name.c_str(), gb / sec, gb);
          std::fflush(stdout);
        }
#ifdef WITH_GGML
        if (wanted(want_isas, "ggml")) {
          const auto* tt = ggml_get_type_traits_cpu((ggml_type)t.id);
          const auto* qt = ggml_get_type_traits_cpu(GGML_TYPE_Q8_K);
          std::vector<uint8_t> act(n / 256 * sizeof(block_q8_K));
          qt->from_float(x.data(), act.data(), n);
          const double sec = time_matvec([&](const uint8_t* row) { float s; tt->vec_dot((int)n, &s, 0, row, 0, act.data(), 0, 1); return s; },
                                         w.data(), row_bytes, rows, min_time);
          std::printf("%s %lld %s %s %.6g %.4f\n", t.name, (long long)n, s.name, "ggml", gb / sec, gb);
          std::fflush(stdout);
        }
#endif
      }
    }
  }
  return 0;
}
"""


def find_ggml():
    """ggml's headers and CPU library as installed by llama-cpp-python, if present."""
    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        inc, lib = Path(base) / "include", Path(base) / "lib"
        if (inc / "ggml-cpu.h").exists() and (lib / "libggml-cpu.so").exists():
            return inc, lib
    return None


def build_harness(build_dir, workdir, use_ggml):
    lib = Path(build_dir) / "libpyresa_core.a"
    if not lib.exists():
        sys.exit(f"{lib} not found: run ./scripts/dev-build.sh first")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    src = Path(workdir) / "bench_kquants.cpp"
    src.write_text(HARNESS)
    exe = Path(workdir) / "bench_kquants"
    cmd = [cxx, "-O2", "-std=c++17", f"-I{ROOT / 'native'}", str(src), str(lib), "-lpthread", "-o", str(exe)]
    ggml = find_ggml() if use_ggml else None
    if ggml:
        inc, gl = ggml
        cmd[1:1] = ["-DWITH_GGML", f"-I{inc}"]
        cmd += [f"-L{gl}", "-lggml-cpu", "-lggml-base", f"-Wl,-rpath,{gl}"]
    subprocess.run(cmd, check=True)
    return exe, bool(ggml)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.environ.get("PYRESA_BUILD_DIR", str(ROOT / "build" / "dev")))
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per measurement")
    ap.add_argument("--quick", action="store_true", help="fewer sizes, shorter timings")
    ap.add_argument("--no-ggml", action="store_true", help="skip ggml's kernels as a reference")
    ap.add_argument("--types", default="Q4_K,Q5_K,Q6_K", help="comma-separated subset of Q4_K,Q5_K,Q6_K")
    ap.add_argument("--isas", default="", help="comma-separated subset of the ISAs (and 'ggml'); default all")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        exe, has_ggml = build_harness(args.build_dir, tmp, not args.no_ggml)
        min_time = min(args.min_time, 0.2) if args.quick else args.min_time
        proc = subprocess.Popen([str(exe), str(min_time), "quick" if args.quick else "full", args.types, args.isas],
                                stdout=subprocess.PIPE, text=True)
        rows = []
        header = f"{'type':5} {'n':>6} {'size':>5} {'MB':>7}  {'isa':7} {'GB/s':>7}"
        print(header)
        for line in proc.stdout:
            t, n, size, isa, gbs, gb = line.split()
            rows.append({"type": t, "n": int(n), "size": size, "isa": isa, "gb_per_s": float(gbs), "mb": float(gb) * 1e3})
            print(f"{t:5} {n:>6} {size:>5} {float(gb) * 1e3:7.1f}  {isa:7} {float(gbs):7.2f}", flush=True)
        if proc.wait() != 0:
            sys.exit(f"harness failed with status {proc.returncode}")
    if not has_ggml and not args.no_ggml:
        print("(ggml's CPU library not found: no reference figures)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
