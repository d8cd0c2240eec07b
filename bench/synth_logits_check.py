#!/usr/bin/env python3
"""Does the GPU engine give the CPU engine's logits on the 7B benchmark model (random weights)?

The benchmark's sampling loops found every logit NaN on the GPU (runs 10, 11, 13) where the CPU
gives finite logits: this compares the two on the same inputs, and says where the GPU's first
non-finite value appears.
    python3 bench/synth_logits_check.py ref  MODEL OUT.npz     (CPU: writes the reference)
    python3 bench/synth_logits_check.py gpu  MODEL REF.npz     (CUDA: compares)
    python3 bench/synth_logits_check.py states MODEL           (CUDA: the benchmark's engine states)
"""
import sys

import numpy as np

import pyresa

PROMPTS = [[1, 2, 3], [0], [1000], [50000], [151000], [17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17],
           # past the small-batch products (more than 64 tokens): the prefill path
           [int(t) for t in np.random.default_rng(7).integers(0, 152064, 100)]]


def logits_all(model):
    out = []
    for p in PROMPTS:
        model.reset()
        out.append(np.asarray(model.logits(p), np.float32)[-1])
    return np.stack(out)


def engine_states(path):
    """The logits of one token at depth 0 after each thing bench/gpu_bench.py does to its engine
    before its sampling loops: fresh, after a 4096-token prefill and truncate(0), after
    fill_synthetic(0), after 72 greedy steps and truncate(0). All should be finite and equal."""
    from pyresa._core import CudaEngine
    from pyresa.gguf_file import open_gguf

    g = open_gguf(path)
    n_vocab = g.config["n_vocab"]
    eng = CudaEngine(g.config, g.tensor_table(), 4096 + 256, 0, 2048, 0)
    rng = np.random.default_rng(0)
    tok = np.asarray([int(rng.integers(0, n_vocab))], np.int32)
    seen = {}

    def probe(name):
        eng.truncate(0)
        lg = np.asarray(eng.eval(tok, False), np.float32).reshape(-1)
        ref = seen.setdefault("fresh", lg)
        print(f"{name:>34}: finite {np.isfinite(lg).mean():.4f}, max |logit| {np.nanmax(np.abs(lg)):.1f}, "
              f"rel diff vs fresh {np.linalg.norm(lg - ref) / np.linalg.norm(ref):.2e}", flush=True)

    probe("fresh")
    toks = rng.integers(0, n_vocab, 4096).astype(np.int32)
    out = np.asarray(eng.eval(toks, False), np.float32)
    print(f"{'prefill 4096: last logits finite':>34}: {np.isfinite(out).mean():.4f}", flush=True)
    probe("after prefill 4096 + truncate(0)")
    eng.fill_synthetic(0, 99)
    eng.set_attention("dense", 16, 0.1, 16, 1, 32)
    probe("after fill_synthetic(0)")
    eng.truncate(0)
    t = int(tok[0])
    for _ in range(72):
        t = int(eng.eval_greedy(np.asarray([t], np.int32)))
    probe("after 72 greedy steps + truncate(0)")


def main():
    if sys.argv[1] == "states":
        engine_states(sys.argv[2])
        return
    mode, path, npz = sys.argv[1:4]
    if mode == "ref":
        m = pyresa.Model(path, n_ctx=128, device="cpu")
        np.savez_compressed(npz, logits=logits_all(m))
        return
    ref = np.load(npz)["logits"]
    m = pyresa.Model(path, n_ctx=128, device="cuda")
    got = logits_all(m)
    for i, p in enumerate(PROMPTS):
        g, r = got[i], ref[i]
        fin = np.isfinite(g).mean()
        err = np.linalg.norm(g - r) / np.linalg.norm(r) if fin == 1.0 else float("nan")
        print(f"prompt {p[:4]}{'...' if len(p) > 4 else ''}: GPU finite {fin:.3f}, CPU max |logit| "
              f"{np.abs(r).max():.1f}, rel err {err:.2e}, argmax GPU {int(np.nanargmax(g)) if fin > 0 else -1} "
              f"CPU {int(r.argmax())}")


if __name__ == "__main__":
    main()
