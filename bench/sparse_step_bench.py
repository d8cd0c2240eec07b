"""Per-layer kernels of a decode step alone (cuda_test.time_sparse_step), for each kernel set.

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
ap.add_argument("--sets", default=None, help="comma-separated set names (default: all)")
ap.add_argument("--json", default=None)
args = ap.parse_args()

# (name, decode attention kernel?, combine: 0 separate / 1 inside the attention kernel, sparse
# splits: 0 = the engine's choice). Until run 12 the decode kernel had one-warp builds (4, 6, 12
# stages: sets sep, st6, in...) beside the two-warp one (w2...); the two-warp kernel is the only
# one now, under the old one-warp names.
# Run 13: sNNN = the decode kernel's shape NNN (PYRESA_CUDA_DECODE_SHAPE: warps x 100 + stages x 10 +
# two mma chains), separate combine, the engine's split count; every other set runs the default
# shape (431 since run 13; it was 240 in run 13's measurement, where "sep" meant s240).
SETS = [("old", False, 0, 0), ("sep", True, 0, 0), ("in", True, 1, 0), ("in66", True, 1, 66), ("in50", True, 1, 50),
        ("in132", True, 1, 132), ("sep66", True, 0, 66), ("sep132", True, 0, 132)]
SHAPES = {"s240": 240, "s241": 241, "s221": 221, "s421": 421, "s420": 420, "sep": 431}
SETS += [(name, True, 0, 0) for name in SHAPES if name != "sep"]
ap2 = [s for s in (args.sets or "").split(",") if s]
rows = []
for d in [int(x) for x in args.depths.split(",") if x]:
    for name, attn, comb, splits in SETS:
        if ap2 and name not in ap2:
            continue
        core.cuda_test.set_sparse_step_kernels(attn, comb, SHAPES.get(name, 431))
        r = dict(core.cuda_test.time_sparse_step(d, args.reps, args.copies, sparse_splits=splits))
        r.update(depth=d, kernels=name)
        rows.append(r)
        print(r, flush=True)
core.cuda_test.set_sparse_step_kernels(True, 0, 431)

print("sets: old = PYRESA_CUDA_SPARSE_STEP=0; sep = decode attention kernel + separate combine kernel (run 10); "
      "in = combine inside the attention kernel (PYRESA_CUDA_DECODE_COMBINE=1), inNN = with NN sparse splits; "
      "sepNN = separate combine, NN sparse splits. 'partials' = the decode kernel alone, no combine; 'contig' = the sparse "
      "attention over the first n_sel blocks (same bytes, contiguous)")
print(f"\n{'depth':>7} {'set':>5} {'score':>6} {'top-n':>6} {'select':>7} {'sparse att':>10} {'partials':>8} "
      f"{'contig':>7} {'sel+att':>8} {'dense att':>9} {'splits s/d':>10} | per step (x28): {'sel+att':>8} {'dense att':>9}")
for r in rows:
    print(f"{r['depth']:>7} {r['kernels']:>5} {r['score_us']:6.1f} {r['topn_us']:6.1f} {r['select_us']:7.1f} "
          f"{r['sparse_attention_us']:10.1f} {r['sparse_partials_us']:8.1f} {r['sparse_contig_us']:7.1f} "
          f"{r['sparse_step_us']:8.1f} {r['dense_attention_us']:9.1f} "
          f"{int(r['sparse_splits']):>4}/{int(r['dense_splits']):<5} | {'':>15} "
          f"{r['sparse_step_us'] * 28 / 1e3:7.3f}ms {r['dense_attention_us'] * 28 / 1e3:8.3f}ms")
if args.json:
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
