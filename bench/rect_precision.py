"""What the precision of a rectification's attention is worth at the engine level (run
11-rect-wgmma): the GPU engine's ReSA logits against the CPU engine's, step by step, with the
rectification's attention in the precise mode (two-term F16 query and probabilities) and in plain
F16 (PYRESA_CUDA_RECT_PRECISE=0), on the mma.sync variant (3) and the wgmma one (4).

Both engines are teacher-forced by the CPU's greedy tokens after a prompt (as
tests/test_cuda_engine.py's ReSA test). Printed per configuration, over the decode steps:
  - vs CPU: ||z_gpu - z_cpu|| / ||z_cpu|| (mean, max), argmax disagreements;
  - vs GPU precise: the same against the GPU's own precise run (k3) -- what the attention mode
    alone moves, the rest of the arithmetic being identical;
and the CPU floor: the CPU's SIMD kernels against its scalar ones on the same tokens (same Q8
integers, other float summation order), i.e. what the F16/Q8 steps already lose.
Steps are split into those that ran a rectification and the sparse ones after it.

Usage (GPU machine, after the build): python3 bench/rect_precision.py MODEL.gguf [--prompt 1000] [--steps 99]
"""
import argparse
import os

import numpy as np

import pyresa._core as core
from pyresa.gguf_file import open_gguf

CONFIGS = [("k3 precise", "3", "1"), ("k3 plain F16", "3", "0"), ("k4 precise", "4", "1"), ("k4 plain F16", "4", "0")]


def rel(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)), 1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=99)
    args = ap.parse_args()
    g = open_gguf(args.model)
    n_ctx = args.prompt + args.steps + 64
    toks = np.random.default_rng(7).integers(0, g.config["n_vocab"], args.prompt).astype(np.int32)

    def resa(e):
        e.set_attention("resa", 16, 0.1, 16, 1, 32)
        return e

    gpus = {}
    for name, kernel, precise in CONFIGS:
        os.environ["PYRESA_CUDA_RECT_KERNEL"] = kernel
        os.environ["PYRESA_CUDA_RECT_PRECISE"] = precise
        gpus[name] = resa(core.CudaEngine(g.config, g.tensor_table(), n_ctx, 0, 512, 0))
    core.set_cpu_isa("auto")
    cpu = resa(core.Engine(g.config, g.tensor_table(), n_ctx, 0, 256))
    z_cpu = cpu.eval(toks, False)
    z = {k: e.eval(toks, False) for k, e in gpus.items()}
    core.set_cpu_isa("scalar")
    cpu_s = resa(core.Engine(g.config, g.tensor_table(), n_ctx, 0, 256))
    z_s = cpu_s.eval(toks, False)
    core.set_cpu_isa("auto")

    rows = {k: {"rect": [], "sparse": []} for k in list(gpus) + ["CPU scalar vs SIMD"]}
    n_rect = cpu.stats()["rectifications"]
    for i in range(args.steps):
        t = int(np.argmax(z_cpu))
        z_cpu = cpu.eval(np.array([t], np.int32), False)
        r = cpu.stats()["rectifications"]
        kind = "rect" if r > n_rect else "sparse"
        n_rect = r
        core.set_cpu_isa("scalar")
        z_s = cpu_s.eval(np.array([t], np.int32), False)
        core.set_cpu_isa("auto")
        rows["CPU scalar vs SIMD"][kind].append((rel(z_s, z_cpu), int(np.argmax(z_s)) != int(np.argmax(z_cpu)), 0.0))
        z = {k: e.eval(np.array([t], np.int32), False) for k, e in gpus.items()}
        for k in gpus:
            rows[k][kind].append((rel(z[k], z_cpu), int(np.argmax(z[k])) != int(np.argmax(z_cpu)),
                                  rel(z[k], z["k3 precise"])))
    print(f"\n== ReSA logits, prompt {args.prompt}, {args.steps} steps ({n_rect} rectifications), model {args.model}")
    print(f"{'config':22s} {'steps':>6s} {'n':>4s} {'vs CPU mean':>12s} {'vs CPU max':>11s} {'argmax !=':>9s} "
          f"{'vs k3prec mean':>14s} {'max':>9s}")
    for k, d in rows.items():
        for kind in ("rect", "sparse"):
            v = d[kind]
            if not v:
                continue
            e = np.array([x[0] for x in v])
            p = np.array([x[2] for x in v])
            print(f"{k:22s} {kind:>6s} {len(v):4d} {e.mean():12.3e} {e.max():11.3e} {sum(x[1] for x in v):9d} "
                  f"{p.mean():14.3e} {p.max():9.3e}")


if __name__ == "__main__":
    main()
