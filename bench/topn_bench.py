"""The block selection's kernels alone (cuda_test.time_sparse_step, select_only), per top-n variant.

For each depth and variant: score + top-n back to back ("select"), the scoring alone and the top-n
alone (each launched `reps` times back to back, PDL on, 4 layers' worth of descriptors cycled so
the L2 does not hold them), in microseconds per layer at 7B shapes (28 query / 4 KV heads,
head_dim 128, 16-token blocks, ratio 0.1). Variants (docs/perf-cuda.md "Run 11-topn"):
  old       select_kernel, one 1024-thread CTA per KV head (PYRESA_CUDA_TOPN=old)
  cl        the cluster kernel, cluster size from the cache size (the default)
  clN       the cluster kernel with N CTAs per KV head (PYRESA_CUDA_TOPN_CTAS=N; raised where a CTA
            would hold more than 4,096 keys)
  cl-eq     the scoring reading the position before the query (PYRESA_CUDA_SCORE_EARLY_Q=0); old-eq
  cl+trig   the scoring triggering the top-n's launch early (PYRESA_CUDA_SCORE_TRIGGER=1)
  stop1-4   the cluster kernel cut after the launch and griddepcontrol.wait / its loads and key
            range / its first radix pass / every pass (no block list written)
Run on the GPU machine after a CUDA build:  python3 bench/topn_bench.py [--depths ...] [--json F]
"""
import argparse
import json

import pyresa._core as core

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--depths", default="32768,131072,262144")
ap.add_argument("--reps", type=int, default=300)
ap.add_argument("--copies", type=int, default=4)
ap.add_argument("--rounds", type=int, default=2, help="every variant this many times, interleaved (spread)")
ap.add_argument("--json", default=None)
args = ap.parse_args()

# name: (topn, ctas, score_trigger, stop, score_early_q)
VARIANTS = {"old": (0, 0, False, 0, True), "cl": (1, 0, False, 0, True), "cl1": (1, 1, False, 0, True),
            "cl2": (1, 2, False, 0, True), "cl4": (1, 4, False, 0, True), "cl8": (1, 8, False, 0, True),
            "cl16": (1, 16, False, 0, True), "cl-eq": (1, 0, False, 0, False), "old-eq": (0, 0, False, 0, False),
            "cl+trig": (1, 0, True, 0, True),
            "stop1": (1, 0, False, 1, True), "stop2": (1, 0, False, 2, True), "stop3": (1, 0, False, 3, True),
            "stop4": (1, 0, False, 4, True)}
rows = []
for d in [int(x) for x in args.depths.split(",") if x]:
    for rnd in range(args.rounds):
        for name, v in VARIANTS.items():
            core.cuda_test.set_select_kernels(*v)
            r = dict(core.cuda_test.time_sparse_step(d, args.reps, args.copies, select_only=True))
            r.update(depth=d, variant=name, round=rnd)
            rows.append(r)
# A shallow context in a cache made for 256K (as the engine at 32K / 128K with n_ctx 262,400): the
# cluster size follows the cache, the CTAs a launch uses follow the context.
for d in [int(x) for x in args.depths.split(",") if x and int(x) < 262144]:
    for rnd in range(args.rounds):
        for name in ("old", "cl", "cl4"):
            core.cuda_test.set_select_kernels(*VARIANTS[name])
            r = dict(core.cuda_test.time_sparse_step(d, args.reps, args.copies, select_only=True, cap_tokens=262400))
            r.update(depth=d, variant=name + "/c256K", round=rnd)
            rows.append(r)
core.cuda_test.set_select_kernels(1, 0, False, 0, True)
if args.json:
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)

print("\nus per layer: min over rounds (max - min in brackets)")
print(f"{'depth':>7} {'variant':>9} {'select':>13} {'score':>13} {'top-n':>13}")
for d in sorted({r["depth"] for r in rows}):
    for name in dict.fromkeys(r["variant"] for r in rows):
        rr = [r for r in rows if r["depth"] == d and r["variant"] == name]
        if not rr:
            continue
        cell = lambda k: f"{min(r[k] for r in rr):6.2f} ({max(r[k] for r in rr) - min(r[k] for r in rr):4.2f})"
        print(f"{d:>7} {name:>9} {cell('select_us'):>13} {cell('score_us'):>13} {cell('topn_us'):>13}")
