"""Per-layer kernels of a decode step alone (cuda_test.time_sparse_step), old vs new kernel set.

For each depth: the block selection (scoring + top-n), the sparse attention (+ combine) on the
selected blocks, both back to back, and the dense attention at the same depth, in microseconds per
layer (7B shapes: 28 query / 4 KV heads, head_dim 128, 16-token blocks, ratio 0.1), with the
per-step figure (x 28 layers). Run on the GPU machine after a CUDA build (bench/gpu_test.sh or
gpu_bench.sh builds one):  python3 bench/sparse_step_bench.py [--depths 32768,262144] [--json F]
"""
import argparse
import json

import pyresa._core as core

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--depths", default="32768,131072,262144")
ap.add_argument("--reps", type=int, default=200)
ap.add_argument("--copies", type=int, default=4, help="layers' worth of K/V/descriptors cycled (defeats the L2)")
ap.add_argument("--only-new", action="store_true", help="new kernel set only (e.g. under ncu)")
ap.add_argument("--json", default=None)
args = ap.parse_args()

# (name, decode attention kernel?, decode attention stages); "new" = the defaults.
SETS = [("old", False, 4), ("new", True, 4), ("st6", True, 6), ("st12", True, 12)]
rows = []
for d in [int(x) for x in args.depths.split(",") if x]:
    for name, attn, stages in (SETS[1:2] if args.only_new else SETS):
        core.cuda_test.set_sparse_step_kernels(attn, stages)
        r = dict(core.cuda_test.time_sparse_step(d, args.reps, args.copies))
        r.update(depth=d, kernels=name)
        rows.append(r)
        print(r, flush=True)
core.cuda_test.set_sparse_step_kernels(True, 4)

print("sets: old = PYRESA_CUDA_SPARSE_STEP=0; new = defaults (decode attention kernel, 4 stages, old selection "
      "kernels); st6/st12 = PYRESA_CUDA_DECODE_STAGES=6/12")
print(f"\n{'depth':>7} {'set':>4} {'score':>6} {'top-n':>6} {'select':>7} {'sparse att':>10} {'sel+att':>8} "
      f"{'dense att':>9} {'splits s/d':>10} | per step (x28): {'sel+att':>8} {'dense att':>9}")
for r in rows:
    print(f"{r['depth']:>7} {r['kernels']:>4} {r['score_us']:6.1f} {r['topn_us']:6.1f} {r['select_us']:7.1f} "
          f"{r['sparse_attention_us']:10.1f} "
          f"{r['sparse_step_us']:8.1f} {r['dense_attention_us']:9.1f} "
          f"{int(r['sparse_splits']):>4}/{int(r['dense_splits']):<5} | {'':>15} "
          f"{r['sparse_step_us'] * 28 / 1e3:7.3f}ms {r['dense_attention_us'] * 28 / 1e3:8.3f}ms")
if args.json:
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
