#!/usr/bin/env python3
"""The products of one rectification of the 7B model (DeepSeek-R1-Distill-Qwen-7B Q4_K_M shapes)
through dequant_matmul_small alone, old kernel vs the pipelined one, on the GPU.

Per rectification: 28 layers x (q, o 3584x3584 Q4_K; k 512x3584 Q4_K; v 512x3584 Q6_K; gate, up
18944x3584 Q4_K) + down 3584x18944 (15 layers Q4_K, 13 Q6_K). Each call cycles through weight
copies larger than the L2, so every call reads its weights from DRAM. Also checks, on the real
shapes, that the variants agree with the old kernel (same F16 operands; summation order only).

    PYTHONPATH=. python3 bench/dqmm_bench.py [--ms 16,33,64] [--paths 3,2,12,13,14,212,312]

Paths 5-9 (run 12-rectmmq): matmul_mma.cu (9: its mode 2, two CTAs per SM) on Q8_K activations (the random F16 activations
quantized), the products the engine takes with PYRESA_CUDA_SMALL_MMQ=1; its check against the
old kernel differs by the activations' quantization (~1e-2), not only the summation order.
"""
import argparse
import json
import os

import numpy as np

import pyresa._core as core

Q4_K, Q6_K = 12, 14
BYTES = {Q4_K: 144 / 256, Q6_K: 210 / 256}
# (name, type, rows, cols, calls per rectification)
SHAPES = [
    ("q,o", Q4_K, 3584, 3584, 56),
    ("k", Q4_K, 512, 3584, 28),
    ("v", Q6_K, 512, 3584, 28),
    ("gate,up", Q4_K, 18944, 3584, 56),
    ("down q4k", Q4_K, 3584, 18944, 15),
    ("down q6k", Q6_K, 3584, 18944, 13),
]
NAMES = {2: "dqmm-pipe", 3: "old", 5: "mmq", 6: "mmq S2", 7: "mmq S3", 8: "mmq S4", 9: "mmq 2cta"}  # 5-9: matmul_mma.cu


def name(p):
    """3 old, 2 default, 5-8 the int8 tensor-core kernel (most stages, 2, 3, 4), 100 * variant +
    10 * (prefetch + 1) + stages: the pipelined kernel."""
    if p in NAMES:
        return NAMES[p]
    pf = (p // 10) % 10 - 1
    return f"v{max(1, p // 100 % 10)} S{p % 10}" + (f" pf{pf}" if pf > 0 else "") + (" trig" if p >= 1000 else "")


def check(paths):
    """New variants vs the old kernel on the real shapes (random realistic weights)."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from cuda_util import random_weights, rel_err

    rng = np.random.default_rng(1)
    out = []
    for (nm, t, rows, cols, _) in SHAPES:
        if nm in ("q,o", "k"):
            continue
        w = random_weights(rng, t, rows, cols)
        for M in (33,):
            x = rng.standard_normal((M, cols)).astype(np.float32)
            ref = np.asarray(core.cuda_test.matvec(t, rows, cols, w.reshape(-1), x.reshape(-1), M, None, 3))
            for p in paths:
                if p == 3:
                    continue
                got = np.asarray(core.cuda_test.matvec(t, rows, cols, w.reshape(-1), x.reshape(-1), M, None, p))
                e = rel_err(got, ref) if np.isfinite(got).all() else float("inf")
                out.append((nm, M, name(p), e))
                print(f"check {nm:9s} M={M} {name(p):10s} rel diff vs old {e:.2e}", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="16,33,64")
    ap.add_argument("--paths", default="3,2,12,412,413,212,313")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "/tmp"), "dqmm_bench.json"))
    ap.add_argument("--no-check", action="store_true")
    args = ap.parse_args()
    ms = [int(v) for v in args.ms.split(",")]
    paths = [int(v) for v in args.paths.split(",")]
    checks = [] if args.no_check else check(paths)
    res = {}
    for M in ms:
        for p in paths:
            total = 0.0
            for (nm, t, rows, cols, calls) in SHAPES:
                us = core.cuda_test.time_dqmm(t, rows, cols, M, p, args.reps)
                gbs = rows * cols * BYTES[t] / (us * 1e-6) / 1e9
                res[f"M{M} {name(p)} {nm}"] = us
                total += us * calls
                print(f"M={M:2d} {name(p):10s} {nm:9s} {us:9.1f} us  {gbs:7.0f} GB/s", flush=True)
            res[f"M{M} {name(p)} rectification_ms"] = total / 1e3
    wbytes = sum(rows * cols * BYTES[t] * calls for (_, t, rows, cols, calls) in SHAPES)
    with open(args.out, "w") as f:
        json.dump({"times_us": res, "checks": checks, "weight_bytes": wbytes}, f, indent=1)
    print(f"\nweights per rectification: {wbytes / 1e9:.2f} GB; floor at 3.0 TB/s: {wbytes / 3e12 * 1e3:.2f} ms")
    print("ms of products per rectification (sum over the 7B's calls):")
    print("variant     " + "".join(f"   M={M:<5d}" for M in ms))
    for p in paths:
        print(f"{name(p):10s}  " + "".join(f"{res[f'M{M} {name(p)} rectification_ms']:9.2f}  " for M in ms))
    if 33 in ms:  # the fastest pipelined variant at 33 tokens, as engine switches, for the script
        best = min((p for p in paths if 10 <= p < 1000 or 5 <= p <= 9), key=lambda p: res[f"M33 {name(p)} rectification_ms"], default=None)
        if best is not None:
            with open(os.path.join(os.environ.get("OUT", "/tmp"), "dqmm_best.env"), "w") as f:
                if best <= 9:  # the tensor-core kernel: its mode and ring depth (5, 9: the most that fit)
                    f.write(f"export PYRESA_CUDA_SMALL_MMQ={2 if best == 9 else 1}"
                            f" PYRESA_CUDA_SMALL_MMQ_STAGES={0 if best in (5, 9) else best - 4}"
                            f" DQMM_BEST_PATH={best}\n")
                else:
                    f.write(f"export PYRESA_CUDA_DQMM={max(1, best // 100 % 10)} PYRESA_CUDA_DQMM_STAGES={best % 10}"
                            f" DQMM_BEST_PATH={best}\n")
            print(f"fastest at M=33: {name(best)}")
    print("per shape, M=33 (us):")
    for (nm, t, rows, cols, calls) in SHAPES:
        if 33 in ms:
            print(f"{nm:9s} x{calls:2d} " + "".join(f"{name(p)}={res[f'M33 {name(p)} {nm}']:.1f} " for p in paths))


if __name__ == "__main__":
    main()
