"""The rectification's attention inside the 7B engine under environment variants (run
11-rect-wgmma): one engine per variant (the switches are read when an engine is made), the KV
cache filled synthetically to --depth, ReSA set, then the eager per-op profile of a rectification
step (CudaEngine.profile_step(tok, True)) --reps times; prints the attention's and the whole
rectification's best time per variant. The kernel alone (bench/attn_bench.py) and the engine
disagreed in run 11's first call (14.7 vs 27.1 ms): the engine had run the general kernel
("4" was not a value its switch took; run 12-attn12); the kernels each engine really uses are
printed with its line.

    python3 bench/rect_engine_probe.py --model syn7b.gguf --variant k3:PYRESA_CUDA_RECT_KERNEL=3 \
        --variant k4:PYRESA_CUDA_RECT_KERNEL=4 [--reps 3] [--once]
--once: one variant, one rectification step and nothing else (for Nsight Compute).
"""
import argparse
import gc
import os
import time

import numpy as np

import pyresa._core as core
from pyresa.gguf_file import open_gguf


def parse_variant(text):
    name, _, assigns = text.partition(":")
    return name, dict(item.split("=", 1) for item in filter(None, assigns.split(",")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--depth", type=int, default=262144)
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--once", action="store_true")
    args = ap.parse_args()
    g = open_gguf(args.model)
    tok = 1234
    rows = []
    if not args.once:  # the kernel alone, short and sustained (clock/power under a long tensor load)
        q = np.random.default_rng(1).standard_normal((33, 28, 128)).astype(np.float32).reshape(-1)
        for k in (3, 4):
            s = core.cuda_test.attention_batched_splits(33, 28, 4, args.depth, k)
            for iters in (5, 140, 5):
                ms, _ = core.cuda_test.attention_timed(q, 33, 28, 4, 128, args.depth, k, True, True, s, iters)
                print(f"kernel alone v{k} splits {s}: {iters:4d} calls back to back: {ms:.3f} ms/layer = "
                      f"{ms * 28:.2f} ms/28", flush=True)
    for name, env in map(parse_variant, args.variant):
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        t0 = time.perf_counter()
        eng = core.CudaEngine(g.config, g.tensor_table(), args.depth + 256, 0, 2048, 0)
        eng.fill_synthetic(args.depth, 1234 + args.depth)
        eng.set_attention("resa", 16, 0.1, 16, 1, 32)
        kernels = eng.dense_attention_kernels()  # (rectification, prefill): what the engine really runs
        if args.once:
            eng.profile_step(tok, True)
            eng.synchronize()
            return
        eng.profile_step(tok, True)  # warm-up
        prof = [eng.profile_step(tok, True) for _ in range(args.reps)]
        att = min(p["attention"] for p in prof)
        tot = min(sum(p.values()) for p in prof)
        rows.append((name, env, att, tot, kernels))
        print(f"{name:>14} {env} kernels {kernels}: rectification attention {att:7.2f} ms (all reps: "
              f"{', '.join('%.2f' % p['attention'] for p in prof)}), rectification {tot:7.2f} ms "
              f"[{time.perf_counter() - t0:.1f} s]", flush=True)
        del eng
        gc.collect()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    print("\n== rectification attention in the engine (eager profile, best of reps), per rectification")
    for name, env, att, tot, kernels in rows:
        print(f"{name:>14}: attention {att:7.2f} ms, rectification {tot:7.2f} ms   {env} (rect, prefill kernel {kernels})")


if __name__ == "__main__":
    main()
