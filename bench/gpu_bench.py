#!/usr/bin/env python3
"""pyresa's CUDA engine on one GGUF model: prefill tokens/s, and decode tokens/s at several
context depths for dense attention and for ReSA (ratio 0.1, rectify every 32, rectification
steps included in the timing). Run by bench/gpu_bench.sh on the GPU machine, next to llama.cpp.

The KV cache for a depth is filled synthetically (random F16 keys/values and their block
descriptors, written by a kernel: filling 256K tokens by prefill would take minutes); the decode
that is timed is the real decode path (graphs, attention over the whole cache, selection).
"""
import argparse
import json
import time

import numpy as np

import pyresa._core as core
from pyresa.gguf_file import open_gguf
from pyresa.sampling import Sampler, SamplingParams


def bandwidth_gbs():
    """Device-to-device copy, bytes read + written per second (GB/s), via CuPy if present."""
    try:
        import cupy as cp
    except ImportError:
        return None
    n = 2 << 30
    a = cp.empty(n, dtype=cp.uint8)
    b = cp.empty(n, dtype=cp.uint8)
    a.fill(1)
    b[:] = a
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(5):
        start.record()
        b[:] = a
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    del a, b
    cp.get_default_memory_pool().free_all_blocks()
    return 2 * n / float(np.median(times)) / 1e9


def device_memory_used():
    try:
        import cupy as cp

        free, total = cp.cuda.runtime.memGetInfo()
        return total - free
    except Exception:
        return None


def time_sampling_loops(eng, depth, tok, n, n_vocab):
    """One token per host call, as Model.generate runs: the per-token cost of each way of picking
    the next token (the step itself is the same graph in all three)."""
    eng.fill_synthetic(depth, 99)
    eng.set_attention("dense", 16, 0.1, 16, 1, 32)
    none = np.zeros(0, np.int32)
    sampler = Sampler(SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=0))
    loops = {
        "greedy_on_gpu": lambda t: eng.eval_greedy(t),
        "sampled_top40_on_gpu": lambda t: sampler.sample_candidates(*eng.eval_top(t, 40, none, 1.0, False)[:2], n_vocab),
        "sampled_full_logits_on_host": lambda t: sampler.sample(eng.eval(t, False), []),
    }
    out = {}
    for name, step in loops.items():
        try:
            for warm in (True, False):
                eng.truncate(depth)
                t, t0 = tok, time.perf_counter()
                for _ in range(8 if warm else n):
                    t = int(step(np.asarray([t], np.int32)))
                dt = time.perf_counter() - t0
        except ValueError as e:  # e.g. a random-weight model whose logits are all NaN
            print(f"loop {name}: {e}", flush=True)
            continue
        out[name] = {"tokens": n, "ms_per_token": dt / n * 1e3}
        print(f"depth {depth:>7} loop {name:>28}: {dt / n * 1e3:7.3f} ms/token", flush=True)
    eng.truncate(depth)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--depths", default="0,32768,131072,262144")
    ap.add_argument("--n-decode", type=int, default=64, help="dense decode tokens timed per depth")
    ap.add_argument("--n-resa", type=int, default=99, help="ReSA tokens timed per depth (99 = 3 x (32 sparse + 1 rectification))")
    ap.add_argument("--prefill", type=int, default=4096)
    ap.add_argument("--n-batch", type=int, default=2048)
    ap.add_argument("--modes", default="dense,resa")
    ap.add_argument("--profile", action="store_true", help="also print a per-op breakdown of one step per depth/mode")
    ap.add_argument("--sampling", type=int, default=64,
                    help="tokens per host loop timed at the first depth, dense: greedy on the GPU, sampling from "
                         "the GPU's top-k candidates, sampling from the full logits copied out (0: skip)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    depths = [int(x) for x in args.depths.split(",") if x]
    modes = args.modes.split(",")
    g = open_gguf(args.model)
    n_vocab = g.config["n_vocab"]
    n_ctx = max(max(depths) + 256, args.prefill + 64)
    res = {"gpu": core.cuda_device_name(0), "model": str(args.model), "n_ctx": n_ctx,
           "copy_bandwidth_GBs": bandwidth_gbs(), "prefill": {}, "decode": []}
    print(f"GPU {res['gpu']}, copy bandwidth {res['copy_bandwidth_GBs']:.0f} GB/s" if res["copy_bandwidth_GBs"] else "")
    t0 = time.perf_counter()
    eng = core.CudaEngine(g.config, g.tensor_table(), n_ctx, 0, args.n_batch, 0)
    print(f"load {time.perf_counter() - t0:.1f} s, engine device memory {eng.device_bytes / 2**30:.2f} GiB "
          f"(KV {eng.kv_bytes / 2**30:.2f} GiB)", flush=True)
    rng = np.random.default_rng(0)

    if args.prefill:
        toks = rng.integers(0, n_vocab, args.prefill).astype(np.int32)
        eng.eval(toks[:600], False)
        eng.truncate(0)
        times = []
        for _ in range(2):
            t = time.perf_counter()
            eng.eval(toks, False)
            times.append(time.perf_counter() - t)
            eng.truncate(0)
        dt = min(times)
        res["prefill"] = {"tokens": args.prefill, "seconds": dt, "tokens_per_s": args.prefill / dt}
        print(f"prefill pp{args.prefill}: {args.prefill / dt:.0f} tok/s ({dt * 1e3:.0f} ms)", flush=True)

    tok = int(rng.integers(0, n_vocab))
    if args.sampling:
        res["sampling"] = time_sampling_loops(eng, depths[0], tok, args.sampling, n_vocab)
    for d in depths:
        eng.fill_synthetic(d, 1234 + d)
        for mode in modes:
            eng.set_attention(mode, 16, 0.1, 16, 1, 32)
            n = args.n_decode if mode == "dense" else args.n_resa
            eng.decode_greedy(tok, 40 if mode != "dense" else 8)  # capture this depth's graphs
            eng.truncate(d)
            eng.reset_stats()
            eng.synchronize()
            t = time.perf_counter()
            eng.decode_greedy(tok, n)
            dt = time.perf_counter() - t
            st = eng.stats()
            row = {"depth": d, "mode": mode, "tokens": n, "seconds": dt, "tokens_per_s": n / dt,
                   "ms_per_token": dt / n * 1e3, **st,
                   "kv_read_share": st["blocks_read"] / st["blocks_total"] if st["blocks_total"] else 1.0,
                   "device_memory_used": device_memory_used()}
            if args.profile:
                row["profile_ms"] = eng.profile_step(tok, False)
                if mode == "resa":
                    row["profile_rectification_ms"] = eng.profile_step(tok, True)
                for key in ("profile_ms", "profile_rectification_ms"):
                    if key in row:
                        tot = sum(row[key].values())
                        parts = ", ".join(f"{k} {v:.3f}" for k, v in row[key].items())
                        print(f"    {key}: total {tot:.3f} ms: {parts}", flush=True)
            res["decode"].append(row)
            print(f"depth {d:>7} {mode:>5}: {n / dt:8.1f} tok/s  {dt / n * 1e3:7.3f} ms/token  "
                  f"rect {st['rectifications']}  KV read {row['kv_read_share']:.3f}", flush=True)
            eng.truncate(d)
    res["engine_device_bytes"] = eng.device_bytes
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
