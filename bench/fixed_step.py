#!/usr/bin/env python3
"""The fixed part of a decode step (depth 0, dense): time several engine variants (environment
switches, read when an engine is made) in one process, and optionally record the kernel timeline
of a few graph-replayed steps (CUPTI through torch.profiler): per kernel family the time on the
GPU, and the step's span against the sum of its kernels (the rest is gaps between kernels).

    python3 bench/fixed_step.py --model syn7b.gguf --variant base:PYRESA_CUDA_PDL_EARLY=0 \
        --variant early: --timeline base,early --out-dir $OUT
"""
import argparse
import gc
import json
import os
import re
import statistics
import time
from collections import defaultdict

import numpy as np

import pyresa._core as core
from pyresa.gguf_file import open_gguf

SWITCHES = ("PYRESA_CUDA_PDL_EARLY", "PYRESA_CUDA_MATVEC_CTAS_PER_SM", "PYRESA_CUDA_MATVEC_ROWS",
            "PYRESA_CUDA_MATVEC_STEPS", "PYRESA_CUDA_PDL", "PYRESA_CUDA_FUSE", "PYRESA_CUDA_FUSE_NORM",
            "PYRESA_CUDA_QKV_ONE", "PYRESA_CUDA_FUSE_CTAS_PER_SM", "PYRESA_CUDA_MATVEC_CTAS_PER_SM",
            "PYRESA_CUDA_GLU_EPILOGUE", "PYRESA_CUDA_MATVEC_MMA", "PYRESA_CUDA_MATVEC_MMA_SPLIT",
            "PYRESA_CUDA_MATVEC_BULK", "PYRESA_CUDA_MATVEC_BULK_MIN_GROUPS")


def parse_variant(s):
    name, _, rest = s.partition(":")
    env = {}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        env[k] = v
    return name, env


def family(name):
    """Short kernel family from a demangled kernel name: the kernel and its template arguments."""
    m = re.search(r"(\w+_kernel)(<[^>]*>)?", name)
    if not m:
        return name[:40]
    targs = (m.group(2) or "").replace("(pyresa::GgmlType)", "T").replace("pyresa::GgmlType::", "")
    targs = targs.replace("(pyresa::cuda::ActTransform)", "A").replace("pyresa::cuda::ActTransform::", "")
    return m.group(1) + targs


def timeline(eng, tok, n_steps, out_path):
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.init()
    eng.decode_greedy(tok, 4)
    eng.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        eng.decode_greedy(tok, n_steps)
        eng.synchronize()
    if out_path:
        prof.export_chrome_trace(out_path)
    evs = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    # kineto events: time_range.start / .end in us
    ks = sorted(((e.time_range.start, e.time_range.end, e.name) for e in evs), key=lambda x: x[0])
    if not ks:
        return {"error": "no CUDA events recorded"}
    # steps: argmax_kernel ends each step
    steps, cur = [], []
    for k in ks:
        cur.append(k)
        if "argmax" in k[2] or "advance" in k[2]:
            if "advance" in k[2]:
                steps.append(cur)
                cur = []
    fam = defaultdict(float)
    fam_n = defaultdict(int)
    spans, busy, gaps = [], [], []
    for st in steps[1:]:  # the first may include the profiler's start
        spans.append(st[-1][1] - st[0][0])
        # busy = union of kernel intervals
        u, end = 0.0, -1e30
        for s, e, n in st:
            if s > end:
                if end > -1e30:
                    gaps.append(s - end)
                u += e - s
                end = e
            elif e > end:
                u += e - end
                end = e
            fam[family(n)] += e - s
            fam_n[family(n)] += 1
        busy.append(u)
    ns = max(1, len(spans))
    res = {
        "steps": len(spans),
        "kernels_per_step": sum(fam_n.values()) / ns,
        "span_us": statistics.median(spans) if spans else None,
        "busy_us": statistics.median(busy) if busy else None,
        "gap_us_total_per_step": sum(gaps) / ns,
        "gap_us_median": statistics.median(gaps) if gaps else None,
        "family_us_per_step": {k: v / ns for k, v in sorted(fam.items(), key=lambda x: -x[1])},
        "family_count_per_step": {k: v / ns for k, v in fam_n.items()},
    }
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--variant", action="append", default=[], help="name:ENV=V,ENV=V (repeatable)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--timeline", default="", help="comma-separated variant names to record a timeline of")
    ap.add_argument("--ncu-steps", type=int, default=0, help="only decode this many tokens (under ncu) and exit")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args()
    g = open_gguf(args.model)
    tt = g.tensor_table()
    n_vocab = g.config["n_vocab"]
    tok = 1234 % n_vocab
    if args.ncu_steps:
        eng = core.CudaEngine(g.config, tt, 1024, 0, 64, 0)
        eng.set_attention("dense", 16, 0.1, 16, 1, 32)
        eng.decode_greedy(tok, args.ncu_steps)
        eng.synchronize()
        return
    want_tl = set(filter(None, args.timeline.split(",")))
    rows = []
    ref_logits = None
    for spec in args.variant:
        name, env = parse_variant(spec)
        for k in SWITCHES:
            os.environ.pop(k, None)
        os.environ.update(env)
        t0 = time.perf_counter()
        eng = core.CudaEngine(g.config, tt, 2048, 0, 64, 0)
        eng.set_attention("dense", 16, 0.1, 16, 1, 32)
        load = time.perf_counter() - t0
        eng.decode_greedy(tok, 8)
        eng.truncate(0)
        times = []
        first = None
        for r in range(args.reps):
            eng.synchronize()
            t = time.perf_counter()
            out = eng.decode_greedy(tok, args.tokens)
            times.append((time.perf_counter() - t) / args.tokens * 1e3)
            if first is None:
                first = [int(t) for t in out]
            elif [int(t) for t in out] != first:
                print(f"  {name}: tokens differ between repetitions!", flush=True)
            eng.truncate(0)
        row = {"variant": name, "env": env, "ms_per_token": statistics.median(times), "all_ms": times,
               "tokens_head": first[:8], "load_s": load}
        # The last logits after 16 greedy steps, bit for bit against the first variant's: variants
        # that only move work between kernels (same arithmetic) must give the same bits.
        eng.decode_greedy(tok, 16)
        eng.synchronize()
        lg = np.asarray(eng.last_logits(), np.float32)
        eng.truncate(0)
        if ref_logits is None:
            ref_logits = lg
        row["logits_identical"] = bool(np.array_equal(lg.view(np.uint32), ref_logits.view(np.uint32)))
        row["logits_max_diff"] = float(np.max(np.abs(lg.astype(np.float64) - ref_logits)))
        print(f"{name:>14}: {row['ms_per_token']:.4f} ms/token ({1e3 / row['ms_per_token']:.1f} tok/s) "
              f"reps {' '.join(f'{x:.4f}' for x in times)}  first tokens {first[:6]}", flush=True)
        if name in want_tl:
            try:
                path = os.path.join(args.out_dir, f"trace_{name}.json") if args.out_dir and len(want_tl) <= 1 else None
                row["timeline"] = timeline(eng, tok, 6, path)
                tl = row["timeline"]
                print(f"  timeline {name}: span {tl.get('span_us')} us, kernels busy {tl.get('busy_us')} us, "
                      f"gaps {tl.get('gap_us_total_per_step')} us/step (median gap {tl.get('gap_us_median')}), "
                      f"{tl.get('kernels_per_step')} kernels/step", flush=True)
                for k, v in list(tl.get("family_us_per_step", {}).items())[:14]:
                    print(f"    {k:>40}: {v:8.1f} us/step  x{tl['family_count_per_step'][k]:.0f}", flush=True)
            except Exception as e:  # the timeline is a diagnosis, not a result
                print(f"  timeline failed: {e!r}", flush=True)
            eng.truncate(0)
        rows.append(row)
        del eng
        gc.collect()
    if args.out_dir:
        with open(os.path.join(args.out_dir, "fixed_step.json"), "w") as f:
            json.dump(rows, f, indent=1)
        best = min(rows, key=lambda r: r["ms_per_token"])
        with open("/tmp/fs_best_env.txt", "w") as f:  # for fixed_step.sh's "@best"
            f.write(" ".join(f"{k}={v}" for k, v in best["env"].items()) + "\n")
    print("\nvariant         ms/token  tok/s   vs first  logits vs first")
    for r in rows:
        print(f"{r['variant']:>14}  {r['ms_per_token']:.4f}  {1e3 / r['ms_per_token']:6.1f}  "
              f"{rows[0]['ms_per_token'] / r['ms_per_token']:.3f}x  "
              f"{'identical' if r['logits_identical'] else 'max diff %.3g' % r['logits_max_diff']}")


if __name__ == "__main__":
    main()
