"""Times the dense attention kernels alone on the GPU, one layer of the 7B model's shapes
(28 query / 4 KV heads, head_dim 128) over a synthetic F16 cache, and compares their outputs:
  - rectification: 33 query tokens at the end of a 262,144-token (and 32,768) cache;
  - prefill chunks: 2048 tokens at positions 0 and 2048 (pp4096's two chunks).
kernel 0 is the general kernel (attention.cu) with the engine's split count, 1-3 the
batched variants (attention_batched.cu). Per-rectification figures are one layer x 28.
Usage (GPU machine, after the build): python3 bench/attn_bench.py [--iters 5]
"""
import argparse

import numpy as np

import pyresa._core as core

H, HKV, D, LAYERS = 28, 4, 128, 28
N_SM = 132
KV_WORK_BYTES = 64 << 20
import os  # noqa: E402
VARIANTS = tuple(int(v) for v in os.environ.get("ATTN_VARIANTS", "1,2,3").split(","))


def old_splits(n_tok, n_keys):
    """The engine's attention_splits() for the general kernel (cuda_engine.cu)."""
    rows = n_tok * (H // HKV)
    nw = 1 if rows <= 16 else 4 if rows <= 64 else 8 if rows <= 128 else 16
    base = -(-rows // (16 * nw)) * HKV
    target = 8 * N_SM if nw == 1 else 3 * N_SM
    s = max(1, -(-target // base))
    s = min(s, max(1, (n_keys + 31) // 32 // 4))
    s = min(s, KV_WORK_BYTES // (HKV * rows * (D + 2) * 4), 256)
    p = 1
    while p * 2 <= max(1, s):
        p *= 2
    return p


def rel(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)), 1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--best", help="write BEST_RECT=<variant> and BEST_PREFILL=<variant|old> (shell) to this file")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    rows_out = []

    def run(label, n_tok, n_ctx, kernel, precise, sq, splits):
        q = rng_q[n_tok]
        ms, out = core.cuda_test.attention_timed(q.reshape(-1), n_tok, H, HKV, D, n_ctx, kernel, precise, sq, splits,
                                                 args.iters)
        assert np.isfinite(out).all(), label
        # Useful work: each query attends to its causal prefix (231 rows x n_ctx keys for a rectification).
        n_keys = sum(n_ctx - n_tok + i + 1 for i in range(n_tok))
        flop = 4.0 * n_keys * H * D
        kv_bytes = 2 * HKV * n_ctx * D * 2
        rows_out.append((label, n_tok, n_ctx, kernel, int(precise), int(sq), splits, ms, flop / ms / 1e9,
                         kv_bytes / ms / 1e6, out))
        print(f"{label:28s} kern {kernel} P{int(precise)} Q{int(sq)} splits {splits:4d}: {ms:8.3f} ms/layer "
              f"{ms * LAYERS:8.2f} ms/28 layers {flop / ms / 1e9:7.1f} TFLOP/s {kv_bytes / ms / 1e6:7.1f} GB/s",
              flush=True)
        return out

    rng_q = {n: rng.standard_normal((n, H, D)).astype(np.float32) for n in (33, 2048)}
    table = []
    for n_ctx in (262144, 32768):
        s_old = old_splits(33, n_ctx)
        ref = {}
        for precise, sq in ((True, True), (False, True), (False, False)):
            tag = f"rect@{n_ctx // 1024}K"
            o = run(tag, 33, n_ctx, 0, precise, sq, s_old)
            t_old = rows_out[-1][7]
            ref[(precise, sq)] = o
            for v in VARIANTS:
                s_new = core.cuda_test.attention_batched_splits(33, H, HKV, n_ctx, v)
                o2 = run(tag, 33, n_ctx, v, precise, sq, s_new)
                # error vs the general kernel in the same mode, and vs its precise output
                table.append((tag, v, precise, sq, t_old, rows_out[-1][7], rel(o2, o), rel(o2, ref[(True, True)])))
        if n_ctx == 262144:  # split sweep, precise
            for v in VARIANTS:
                for s in (32, 66, 132):
                    run("rect@256K sweep", 33, n_ctx, v, True, True, s)
    for pos0 in (0, 2048):
        n_ctx = pos0 + 2048
        s_old = old_splits(2048, n_ctx)
        tag = f"prefill 2048@{pos0}"
        o = run(tag, 2048, n_ctx, 0, False, False, s_old)
        t_old = rows_out[-1][7]
        for v in VARIANTS:
            s_new = core.cuda_test.attention_batched_splits(2048, H, HKV, n_ctx, v)
            o2 = run(tag, 2048, n_ctx, v, False, False, s_new)
            table.append((tag, v, False, False, t_old, rows_out[-1][7], rel(o2, o), float("nan")))

    if args.best:
        rect = {v: t_new for tag, v, p, sq, t_old, t_new, *_ in table if tag == "rect@256K" and p and sq}
        pre = {0: sum(x[4] for x in table if x[0].startswith("prefill") and x[1] == 1)}  # the general kernel
        for v in VARIANTS:
            pre[v] = sum(x[5] for x in table if x[0].startswith("prefill") and x[1] == v)
        best_p = min(pre, key=pre.get)
        with open(args.best, "w") as f:
            f.write(f"BEST_RECT={min(rect, key=rect.get)}\nBEST_PREFILL={best_p if best_p else 'old'}\n")
        print(open(args.best).read())

    print("\n== attention alone, one layer (x28 = per rectification / per prefill chunk) ==")
    print(f"{'shape':20s} {'var':>3s} {'P':>2s} {'Q':>2s} {'old ms':>8s} {'new ms':>8s} {'x28 old':>8s} {'x28 new':>8s} "
          f"{'speedup':>7s} {'err/old':>9s} {'err/prec':>9s}")
    for tag, v, p, sq, t_old, t_new, err, err_p in table:
        print(f"{tag:20s} {v:3d} {int(p):2d} {int(sq):2d} {t_old:8.3f} {t_new:8.3f} {t_old * LAYERS:8.2f} "
              f"{t_new * LAYERS:8.2f} {t_old / t_new:7.2f} {err:9.2e} {err_p:9.2e}")


if __name__ == "__main__":
    main()
