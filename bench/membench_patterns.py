"""How fast the H100 reads a quantized weight matrix under the access patterns of our one-token
products (run 12, docs/perf-cuda.md "Run 12-mmv-tiled"). No pyresa code: CuPy raw kernels that
only load the bytes (XOR them, so the loads stay) in the order each product kernel reads them.

Patterns, for a matrix of `rows` rows of `row_bytes` (Q4_K: 144 bytes per 256-weight superblock):
  linear        every byte in address order, 16 B per lane, grid-stride: the read-rate reference.
  dp4a          a warp reads 2 rows, 512 contiguous bytes of each per step (the dp4a kernels:
                matvec_rows_kernel<2, 2>, 8 rows per 128-thread CTA, one CTA per 8 rows).
  tile16        a warp reads a 16-row tile, one superblock (144 B) of each of the 16 rows per step
                (the tensor-core kernel, matvec_mma.cu), one-wave grid looping over tiles.
  tile16x4      the same, 4 superblocks (576 contiguous bytes) of each row per step.
  tiled         the same bytes per step as tile16 (16 x 144 B) but contiguous: what a layout that
                stores each 16-row x 256-weight tile together (in fragment order) would read.
  tiledx4       contiguous, 4 tiles' worth (9,216 B) per warp step.
Each is timed over several copies of the matrix in turn (more bytes than the 50 MB L2), and
reported as GB/s of matrix bytes and microseconds per matrix.
"""
import argparse
import sys

import cupy as cp

SRC = r"""
typedef unsigned long long u64;
__device__ __forceinline__ uint4 ldg_nc(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ unsigned fold(uint4 v) { return v.x ^ v.y ^ v.z ^ v.w; }

extern "C" __global__ void linear(const uint4* __restrict__ w, u64 n16, unsigned* out) {
  unsigned acc = 0;
  u64 stride = (u64)gridDim.x * blockDim.x;
  u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n16; i += 4 * stride) {
    uint4 a = ldg_nc(w + i), b = ldg_nc(w + i + stride), c = ldg_nc(w + i + 2 * stride), d = ldg_nc(w + i + 3 * stride);
    acc ^= fold(a) ^ fold(b) ^ fold(c) ^ fold(d);
  }
  for (; i < n16; i += stride) acc ^= fold(ldg_nc(w + i));
  if (acc == 0x9e3779b9u) out[0] = acc;
}

// 2 rows per warp, 512 B of each per step, STEPS steps of loads issued before they are used.
extern "C" __global__ void dp4a(const uint4* __restrict__ w, int rows, int row16, unsigned* out) {
  const int lane = threadIdx.x & 31;
  const int r0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * 2;
  if (r0 >= rows) return;
  const uint4* a = w + (u64)r0 * row16;
  const uint4* b = a + row16;
  unsigned acc = 0;
  for (int c = 0; c < row16; c += 64) {
    uint4 v[4];
    int i0 = c + lane, i1 = c + 32 + lane;
    v[0] = i0 < row16 ? ldg_nc(a + i0) : make_uint4(0, 0, 0, 0);
    v[1] = i0 < row16 ? ldg_nc(b + i0) : make_uint4(0, 0, 0, 0);
    v[2] = i1 < row16 ? ldg_nc(a + i1) : make_uint4(0, 0, 0, 0);
    v[3] = i1 < row16 ? ldg_nc(b + i1) : make_uint4(0, 0, 0, 0);
    acc ^= fold(v[0]) ^ fold(v[1]) ^ fold(v[2]) ^ fold(v[3]);
  }
  if (acc == 0x9e3779b9u) out[0] = acc;
}

// A warp per 16-row tile at a time (one-wave grid looping over tiles); per step SB superblocks
// (9 x 16 B each) of each of the 16 rows: CONTIG = 0 at their place in the row-major matrix,
// CONTIG = 1 as one contiguous piece (a tiled layout).
template <int SB, int CONTIG>
__device__ void tile_pattern(const uint4* __restrict__ w, int rows, int row16, unsigned* out) {
  const int lane = threadIdx.x & 31;
  const int warps = gridDim.x * (blockDim.x >> 5);
  const int n_tiles = rows / 16;
  const int nsb = row16 / 9;
  constexpr int PER = 16 * 9 * SB;  // 16-byte pieces per warp step
  constexpr int LOADS = (PER + 31) / 32;
  unsigned acc = 0;
  for (int t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); t < n_tiles; t += warps) {
    const uint4* tile = w + (u64)t * 16 * row16;
    for (int s = 0; s < nsb; s += SB) {
      uint4 v[LOADS];
#pragma unroll
      for (int k = 0; k < LOADS; ++k) {
        const int p = k * 32 + lane;  // piece of this step
        v[k] = make_uint4(0, 0, 0, 0);
        if (p < PER) {
          u64 off;
          if (CONTIG) off = (u64)s * 16 * 9 + p;
          else off = (u64)(p / (9 * SB)) * row16 + (u64)s * 9 + p % (9 * SB);
          v[k] = ldg_nc(tile + off);
        }
      }
#pragma unroll
      for (int k = 0; k < LOADS; ++k) acc ^= fold(v[k]);
    }
  }
  if (acc == 0x9e3779b9u) out[0] = acc;
}
extern "C" __global__ void __launch_bounds__(256, 2) tile16(const uint4* w, int rows, int row16, unsigned* out) { tile_pattern<1, 0>(w, rows, row16, out); }
extern "C" __global__ void __launch_bounds__(256, 2) tile16x4(const uint4* w, int rows, int row16, unsigned* out) { tile_pattern<4, 0>(w, rows, row16, out); }
extern "C" __global__ void __launch_bounds__(256, 2) tile16x2(const uint4* w, int rows, int row16, unsigned* out) { tile_pattern<2, 0>(w, rows, row16, out); }
extern "C" __global__ void __launch_bounds__(256, 2) tiled(const uint4* w, int rows, int row16, unsigned* out) { tile_pattern<1, 1>(w, rows, row16, out); }
extern "C" __global__ void __launch_bounds__(256, 2) tiledx2(const uint4* w, int rows, int row16, unsigned* out) { tile_pattern<2, 1>(w, rows, row16, out); }
extern "C" __global__ void __launch_bounds__(256, 2) tiledx4(const uint4* w, int rows, int row16, unsigned* out) { tile_pattern<4, 1>(w, rows, row16, out); }
"""

SHAPES = {  # the 7B's one-token products (Q4_K: 144 B per 256 weights)
    "gate+up 37888x3584": (37888, 14 * 144),
    "down 3584x18944": (3584, 74 * 144),
    "o 3584x3584": (3584, 14 * 144),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--copies", type=int, default=4, help="matrix copies read in turn (defeat the L2)")
    args = ap.parse_args()
    mod = cp.RawModule(code=SRC, options=("-std=c++17",), name_expressions=None)
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    out = cp.zeros(1, cp.uint32)
    print(f"{cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, {sms} SMs")
    for shape, (rows, row_bytes) in SHAPES.items():
        nbytes = rows * row_bytes
        bufs = [cp.random.randint(0, 2**31 - 1, nbytes // 4, dtype=cp.int32) for _ in range(args.copies)]
        row16 = row_bytes // 16
        n16 = nbytes // 16
        variants = [("linear", lambda b: (mod.get_function("linear"), (sms * 8,), (256,), (b, cp.uint64(n16), out)))]
        variants.append(("dp4a (2 rows x 512 B, 8 rows per CTA)",
                         lambda b: (mod.get_function("dp4a"), ((rows + 7) // 8,), (128,), (b, cp.int32(rows), cp.int32(row16), out))))
        for name, label in (("tile16", "16 rows x 144 B per step"), ("tile16x2", "16 rows x 288 B"),
                            ("tile16x4", "16 rows x 576 B"), ("tiled", "2,304 contiguous B per step"),
                            ("tiledx2", "4,608 contiguous B"), ("tiledx4", "9,216 contiguous B")):
            for ctas in (1, 2):
                variants.append((f"{name} ({label}; {ctas} x 8 warps per SM)",
                                 (lambda n, c: lambda b: (mod.get_function(n), (sms * c,), (256,),
                                                          (b, cp.int32(rows), cp.int32(row16), out)))(name, ctas)))
        print(f"\n== {shape}: {nbytes / 1e6:.1f} MB per matrix, {args.copies} copies in turn, {args.reps} reads")
        for label, make in variants:
            for b in bufs[:2]:  # warm-up (and compile)
                f, g, blk, a = make(b)
                f(g, blk, a)
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            for i in range(args.reps):
                f, g, blk, a = make(bufs[i % args.copies])
                f(g, blk, a)
            stop.record()
            stop.synchronize()
            us = cp.cuda.get_elapsed_time(start, stop) * 1e3 / args.reps
            print(f"  {label:62s} {us:8.2f} us  {nbytes / us / 1e3:7.0f} GB/s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
