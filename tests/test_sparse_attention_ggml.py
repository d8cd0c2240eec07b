"""The block-sparse attention op and block descriptors against outside oracles.

1. Every block selected == ggml's own ggml_flash_attn_ext (the libggml llama-cpp-python installs,
   through ctypes) on identical tensors: F16 K/V in the KV-cache layout (nb2 = capacity * D * 2),
   GQA, n_kv not a multiple of block_size.
   The bound: ggml's CPU op rounds q to F16 and accumulates sum(p * v) in an F16 vector, one
   rounding (relative 2^-11) per key; we keep q and the accumulator in F32. So q is rounded to F16
   before it is handed to both, and the remaining difference is ggml's accumulator:
   |ours - ggml| <= 4 * 2^-10 * max|V| (four F16 epsilons of the largest value; observed
   <= 0.4 of one epsilon in the cases below, up to 2000 keys). test_ggml_difference_is_its_f16_accumulator shows that this is the only
   difference: a float64 emulation of that accumulator matches ggml to 1e-5.
2. Random block selections == a float64 numpy softmax over exactly the selected keys,
   to 2e-6 * max|V| (F32 arithmetic), for every ISA and for the threaded split + combine.
3. Block descriptors == numpy min/max over each block's valid keys.

`python tests/test_sparse_attention_ggml.py` prints timings (ours vs ggml).
"""

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pyresa import _core

sys.path.insert(0, str(Path(__file__).parent))
from ggml_ctypes import Ggml, FlashAttnGraph, find_ggml_dir  # noqa: E402

BS = 16
EPS16 = 2.0**-10


@pytest.fixture(scope="module")
def ggml():
    if find_ggml_dir() is None:
        pytest.skip("libggml from llama-cpp-python not found")
    return Ggml()


@pytest.fixture(params=_core.supported_isas())
def isa(request):
    _core.set_cpu_isa(request.param)
    yield request.param
    _core.set_cpu_isa("auto")


def make_inputs(rng, n_q_heads, n_kv_heads, D, n_ctx, v_scale=1.0):
    q = rng.standard_normal((n_q_heads, D)).astype(np.float32)
    K = rng.standard_normal((n_kv_heads, n_ctx, D)).astype(np.float16)
    V = (v_scale * rng.standard_normal((n_kv_heads, n_ctx, D))).astype(np.float16)
    return q, K, V


def ref_attention(q, K, V, scale, keys_per_head):
    """float64 softmax attention; keys_per_head[h] = token indices KV head h attends to."""
    n_q, D = q.shape
    G = n_q // K.shape[0]
    out = np.zeros((n_q, D))
    for i in range(n_q):
        h = i // G  # ggml: query head i uses KV head i // (n_q / n_kv)
        idx = keys_per_head[h]
        if len(idx) == 0:
            continue
        s = scale * (K[h, idx].astype(np.float64) @ q[i].astype(np.float64))
        p = np.exp(s - s.max())
        out[i] = (p / p.sum()) @ V[h, idx].astype(np.float64)
    return out


def all_blocks(n_kv_heads, n_kv, bs=BS):
    return np.tile(np.arange(-(-n_kv // bs), dtype=np.int32), (n_kv_heads, 1))


def keys_of(blocks, n_kv, bs=BS):
    return [np.array([t for b in row for t in range(b * bs, min(b * bs + bs, n_kv))], dtype=np.int64) for row in blocks]


def f16_round(x):
    return x.astype(np.float16).astype(np.float32)


# ---------------------------------------------------------------------------- vs ggml

DENSE_CASES = [
    # n_q_heads, n_kv_heads, D, n_ctx (capacity), n_kv, block_size
    (9, 3, 64, 300, 277, 16),  # SmolLM2-135M shape, n_kv not a multiple of 16
    (28, 4, 128, 1024, 1000, 16),  # Qwen2-7B shape
    (4, 4, 64, 40, 33, 16),  # no GQA
    (8, 1, 64, 20, 5, 16),  # MQA, context shorter than a block
    (12, 2, 80, 200, 161, 16),  # D = 80 (5 AVX-512 vectors, 10 AVX2)
    (6, 3, 40, 150, 149, 7),  # D = 40 (vector tails), odd block size
    (16, 2, 64, 2048, 2000, 16),  # 8 query heads per KV head, longer context
]


@pytest.mark.parametrize("case", DENSE_CASES, ids=[f"q{c[0]}kv{c[1]}d{c[2]}n{c[4]}bs{c[5]}" for c in DENSE_CASES])
def test_dense_matches_ggml_flash_attn_ext(ggml, isa, case):
    n_q, n_kvh, D, n_ctx, n_kv, bs = case
    rng = np.random.default_rng(n_kv + D)
    q, K, V = make_inputs(rng, n_q, n_kvh, D, n_ctx)
    q = f16_round(q)  # what ggml computes with (it converts q to F16 for the F16 K dot)
    scale = 1.0 / math.sqrt(D)
    want = ggml.flash_attn_ext(q, K, V, n_kv, scale)
    got = _core.sparse_attention(q, K, V, n_kv, scale, bs, all_blocks(n_kvh, n_kv, bs))
    vmax = np.abs(V[:, :n_kv].astype(np.float32)).max()
    err = np.abs(got - want).max()
    assert err <= 4 * EPS16 * vmax, f"|ours - ggml| = {err:.3g}, bound {4 * EPS16 * vmax:.3g}"
    # And ours is F32-accurate where ggml is F16-accurate.
    ref = ref_attention(q, K, V, scale, keys_of(all_blocks(n_kvh, n_kv, bs), n_kv, bs))
    assert np.abs(got - ref).max() <= 2e-6 * vmax
    assert np.abs(want - ref).max() <= 4 * EPS16 * vmax


def test_dense_sharp_softmax_matches_ggml(ggml, isa):
    # scale 1 on unit keys: peaked softmax, where a mis-scaled or mis-grouped head shows at once.
    rng = np.random.default_rng(11)
    q, K, V = make_inputs(rng, 9, 3, 64, 130, v_scale=3.0)
    q = f16_round(q)
    want = ggml.flash_attn_ext(q, K, V, 123, 1.0)
    got = _core.sparse_attention(q, K, V, 123, 1.0, BS, all_blocks(3, 123))
    assert np.abs(got - want).max() <= 4 * EPS16 * np.abs(V.astype(np.float32)).max()


def test_masking_matches_ggml(ggml, isa):
    # A key just past n_kv that would dominate, and one just inside that must dominate.
    rng = np.random.default_rng(12)
    D, n_kv = 64, 45
    q, K, V = make_inputs(rng, 3, 3, D, 64)
    q = f16_round(q)
    for h in range(3):
        K[h, n_kv] = (8 * np.sign(q[h])).astype(np.float16)  # masked: must not count
        V[h, n_kv] = 100
        K[h, n_kv - 1] = (4 * np.sign(q[h])).astype(np.float16)  # inside: dominates
        V[h, n_kv - 1] = -7
    want = ggml.flash_attn_ext(q, K, V, n_kv, 0.125)
    got = _core.sparse_attention(q, K, V, n_kv, 0.125, BS, all_blocks(3, n_kv))
    assert np.all(got < -6.0) and np.all(want < -6.0)
    assert np.abs(got - want).max() <= 4 * EPS16 * 100


def test_ggml_difference_is_its_f16_accumulator(ggml):
    # Justifies the bound above: emulate ggml's CPU recurrence (q in F16, per key: running max M,
    # sum S, and an F16 accumulator rescaled / added with one F16 rounding each) in float64.
    rng = np.random.default_rng(13)
    D, n_kv, scale = 64, 200, 0.125
    q, K, V = make_inputs(rng, 1, 1, D, n_kv)
    want = ggml.flash_attn_ext(q, K, V, n_kv, scale)[0]
    q16 = q[0].astype(np.float16).astype(np.float64)
    M, S, acc = -np.inf, 0.0, np.zeros(D, np.float16)
    for t in range(n_kv):
        s = scale * (K[0, t].astype(np.float64) @ q16)
        ms = vs = 1.0
        if s > M:
            ms, M = math.exp(M - s), s
            acc = (acc.astype(np.float32) * np.float32(ms)).astype(np.float16)
        else:
            vs = math.exp(s - M)
        acc = (acc.astype(np.float32) + V[0, t].astype(np.float32) * np.float32(vs)).astype(np.float16)
        S = S * ms + vs
    assert np.abs(acc.astype(np.float64) / S - want).max() <= 1e-5


# ---------------------------------------------------------------------------- sparse vs numpy

SPARSE_CASES = [
    # n_q_heads, n_kv_heads, D, n_ctx, n_kv, block_size, n_sel
    (9, 3, 64, 7040, 7000, 16, 44),
    (9, 3, 64, 500, 487, 16, 9),
    (28, 4, 128, 4096, 4001, 16, 25),
    (8, 8, 64, 1000, 999, 32, 6),
    (10, 1, 48, 900, 900, 16, 13),  # 10 heads in one group: two passes (5 + 5)
    (6, 2, 64, 300, 290, 10, 7),
]


@pytest.mark.parametrize("case", SPARSE_CASES, ids=[f"q{c[0]}kv{c[1]}d{c[2]}n{c[4]}bs{c[5]}sel{c[6]}" for c in SPARSE_CASES])
@pytest.mark.parametrize("n_threads", [1, 2, 3, 4, 7])
def test_random_selection_matches_numpy(isa, case, n_threads):
    n_q, n_kvh, D, n_ctx, n_kv, bs, n_sel = case
    rng = np.random.default_rng(n_kv * 3 + n_threads)
    q, K, V = make_inputs(rng, n_q, n_kvh, D, n_ctx)
    n_blocks = -(-n_kv // bs)
    # Random distinct blocks, always including the partial last one (as the local block is).
    blocks = np.stack([
        np.sort(np.append(rng.choice(n_blocks - 1, n_sel - 1, replace=False), n_blocks - 1)) for _ in range(n_kvh)
    ]).astype(np.int32)
    scale = 1.0 / math.sqrt(D)
    got = _core.sparse_attention(q, K, V, n_kv, scale, bs, blocks, n_threads=n_threads)
    ref = ref_attention(q, K, V, scale, keys_of(blocks, n_kv, bs))
    vmax = np.abs(V.astype(np.float32)).max()
    assert np.abs(got - ref).max() <= 2e-6 * vmax


@pytest.mark.parametrize("n_threads", [2, 3, 4])
def test_real_threads_match_sequential_shares(n_threads):
    # The same (ith, nth) shares on real threads with barriers: identical to running them in turn.
    rng = np.random.default_rng(20)
    q, K, V = make_inputs(rng, 9, 3, 64, 2000)
    blocks = all_blocks(3, 1990)
    one = _core.sparse_attention(q, K, V, 1990, 0.125, BS, blocks, n_threads=n_threads)
    for _ in range(3):
        many = _core.sparse_attention(q, K, V, 1990, 0.125, BS, blocks, n_threads=n_threads, threaded=True)
        assert np.array_equal(one, many)


def test_unsorted_and_adjacent_blocks(isa):
    rng = np.random.default_rng(21)
    q, K, V = make_inputs(rng, 9, 3, 64, 800)
    blocks = np.array([[40, 3, 4, 5, 20, 49], [0, 1, 2, 3, 4, 5], [49, 48, 10, 30, 31, 7]], np.int32)
    got = _core.sparse_attention(q, K, V, 790, 0.125, BS, blocks)
    ref = ref_attention(q, K, V, 0.125, keys_of(blocks, 790))
    assert np.abs(got - ref).max() <= 2e-6 * np.abs(V.astype(np.float32)).max()


def test_blocks_past_the_context_contribute_nothing(isa):
    rng = np.random.default_rng(22)
    q, K, V = make_inputs(rng, 4, 2, 64, 320)
    n_kv = 100  # blocks 0..6; 7+ lie past the context (still inside the array)
    blocks = np.array([[1, 6, 12], [0, 9, 19]], np.int32)
    got = _core.sparse_attention(q, K, V, n_kv, 0.125, BS, blocks, n_threads=1)
    ref = ref_attention(q, K, V, 0.125, keys_of(blocks, n_kv))
    assert np.abs(got - ref).max() <= 2e-6 * np.abs(V.astype(np.float32)).max()
    # No key at all for a head: zeros, as for an empty selection.
    got = _core.sparse_attention(q, K, V, n_kv, 0.125, BS, np.array([[10, 11], [0, 12]], np.int32))
    assert np.all(got[:2] == 0)
    empty = _core.sparse_attention(q, K, V, n_kv, 0.125, BS, np.zeros((2, 0), np.int32))
    assert np.all(empty == 0)


def test_large_logits_are_stable(isa):
    rng = np.random.default_rng(23)
    q, K, V = make_inputs(rng, 3, 1, 64, 640)
    q *= 40  # logits in the hundreds: exp would overflow without the running max
    blocks = np.arange(40, dtype=np.int32)[None]
    got = _core.sparse_attention(q, K, V, 640, 1.0, BS, blocks, n_threads=3)
    ref = ref_attention(q, K, V, 1.0, keys_of(blocks, 640))
    assert np.all(np.isfinite(got))
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(V.astype(np.float32)).max()


def test_isas_agree():
    rng = np.random.default_rng(24)
    q, K, V = make_inputs(rng, 9, 3, 64, 1000)
    blocks = all_blocks(3, 1000)
    outs = []
    for name in _core.supported_isas():
        _core.set_cpu_isa(name)
        outs.append(_core.sparse_attention(q, K, V, 1000, 0.125, BS, blocks))
    _core.set_cpu_isa("auto")
    for o in outs[1:]:
        assert np.abs(o - outs[0]).max() <= 2e-6


def test_chunk_plan():
    # 3 KV heads on 2 threads: 2 chunks per head (3 items each); on 3 threads: one per head.
    assert _core.sparse_attention_chunks(3, 45, 2) == 2
    assert _core.sparse_attention_chunks(3, 45, 3) == 1
    assert _core.sparse_attention_chunks(3, 45, 1) == 1
    assert _core.sparse_attention_chunks(4, 45, 6) == 3
    assert _core.sparse_attention_chunks(3, 5, 2) == 1  # too few blocks to split


def test_rejects_bad_selections():
    rng = np.random.default_rng(25)
    q, K, V = make_inputs(rng, 2, 1, 64, 64)
    with pytest.raises(ValueError):
        _core.sparse_attention(q, K, V, 64, 0.125, BS, np.array([[1, 1]], np.int32))
    with pytest.raises(ValueError):
        _core.sparse_attention(q, K, V, 64, 0.125, BS, np.array([[4]], np.int32))
    with pytest.raises(ValueError):
        _core.sparse_attention(q, K, V, 65, 0.125, BS, np.array([[0]], np.int32))


# ---------------------------------------------------------------------------- descriptors vs numpy


def ref_descriptors(K, n_valid, bs):
    n_blocks = -(-n_valid // bs)
    H, _, D = K.shape
    kmin = np.zeros((H, n_blocks, D), np.float32)
    kmax = np.zeros((H, n_blocks, D), np.float32)
    for b in range(n_blocks):
        keys = K[:, b * bs:min(b * bs + bs, n_valid)].astype(np.float32)
        kmin[:, b], kmax[:, b] = keys.min(axis=1), keys.max(axis=1)
    return kmin, kmax


@pytest.mark.parametrize("n_valid,bs", [(1, 16), (15, 16), (16, 16), (17, 16), (1000, 16), (777, 7), (64, 64)])
def test_descriptors_match_numpy(n_valid, bs):
    rng = np.random.default_rng(n_valid)
    K = (rng.standard_normal((3, n_valid + 9, 64)) * 4).astype(np.float16)
    K[:, n_valid:] = 1000  # past the context
    K[0, 0, :4] = [0.0, -0.0, np.inf, -np.inf]  # signed zeros and infinities order correctly
    kmin, kmax = _core.block_descriptors_from_keys(K, n_valid, bs)
    wmin, wmax = ref_descriptors(K, n_valid, bs)
    assert np.array_equal(kmin, wmin) and np.array_equal(kmax, wmax)


def test_descriptors_refresh_append_and_capacity_layout():
    rng = np.random.default_rng(31)
    n_layer, H, D, cap, bs = 2, 3, 64, 200, 16
    max_blocks = cap // bs + 1
    K = (rng.standard_normal((H, cap, D)) * 2).astype(np.float16)  # the cache, capacity 200
    bd = _core.BlockDescriptors(n_layer, H, D, max_blocks, bs)
    # Prefill 150 tokens in chunks (first chunk ends mid-block), as the engine does.
    for first, n in [(0, 40), (40, 64), (104, 46)]:
        bd.refresh(1, first, n, K, first + n)
    kmin, kmax = bd.kmin_kmax(1)
    wmin, wmax = ref_descriptors(K, 150, bs)
    assert np.array_equal(kmin[:, :10], wmin) and np.array_equal(kmax[:, :10], wmax)
    # Decode: append tokens 150..180 one by one from F32 keys (rounded to F16 as the cache is).
    k32 = rng.standard_normal((31, H, D)).astype(np.float32) * 2
    for i, t in enumerate(range(150, 181)):
        K[:, t] = k32[i].astype(np.float16)
        bd.append(1, t, k32[i])
    kmin, kmax = bd.kmin_kmax(1)
    wmin, wmax = ref_descriptors(K, 181, bs)
    assert np.array_equal(kmin[:, :12], wmin) and np.array_equal(kmax[:, :12], wmax)
    # Rectification rewrites tokens 170..180: refresh recomputes just the touched blocks (10, 11).
    K[:, 170:181] = (rng.standard_normal((H, 11, D)) * 2).astype(np.float16)
    bd.refresh(1, 170, 11, K, 181)
    kmin, kmax = bd.kmin_kmax(1)
    wmin, wmax = ref_descriptors(K, 181, bs)
    assert np.array_equal(kmin[:, :12], wmin) and np.array_equal(kmax[:, :12], wmax)
    # Layer 0 untouched.
    assert not bd.kmin_kmax(0)[0].any()
    with pytest.raises(IndexError):
        bd.append(1, max_blocks * bs, k32[0])


# ---------------------------------------------------------------------------- timing


def bench(n_kv=7000, D=64, n_q=9, n_kvh=3, ratio=0.1, iters=200):
    rng = np.random.default_rng(0)
    q, K, V = make_inputs(rng, n_q, n_kvh, D, n_kv)
    n_blocks = -(-n_kv // BS)
    n_sel = _core.resa_select_count(n_kv, BS, ratio, 16, 1)
    sparse = np.stack([np.sort(rng.choice(n_blocks, n_sel, replace=False)) for _ in range(n_kvh)]).astype(np.int32)
    dense = all_blocks(n_kvh, n_kv)
    scale = 1 / math.sqrt(D)
    print(f"n_kv={n_kv} D={D} heads {n_q}/{n_kvh}: {n_blocks} blocks, sparse n_sel={n_sel} (ratio {ratio})")
    for name in _core.supported_isas():
        _core.set_cpu_isa(name)
        for nth in (1, 2):
            ts = _core.bench_sparse_attention(q, K, V, n_kv, scale, BS, sparse, nth, iters)
            td = _core.bench_sparse_attention(q, K, V, n_kv, scale, BS, dense, nth, max(iters // 10, 5))
            print(f"  ours {name:7s} {nth} thr: sparse {ts * 1e6:8.1f} us   dense {td * 1e6:8.1f} us   ratio {td / ts:5.1f}x")
    _core.set_cpu_isa("auto")
    if find_ggml_dir():
        with FlashAttnGraph(Ggml(), q, K, V, n_kv, scale) as g:
            for nth in (1, 2):
                g.compute(nth)
                n = max(iters // 10, 5)
                t0 = time.perf_counter()
                for _ in range(n):
                    g.compute(nth)
                print(f"  ggml_flash_attn_ext {nth} thr: dense {(time.perf_counter() - t0) / n * 1e6:8.1f} us")


if __name__ == "__main__":
    bench()
