"""The causal chunk attention op (prefill and ReSA's rectification) against a float64 numpy
reference, and its contract with the decode operator.

1. Every query i of a chunk at positions pos0 .. pos0 + n - 1 == a float64 softmax over keys
   [0, pos0 + i], to 2e-6 * max|V| (F32 arithmetic), for every ISA and tiling (thread count), with
   chunks that are not multiples of the tile, start mid-block and end mid-block.
2. Keys after a query (the chunk's later tokens, already in the cache) that would dominate its
   softmax do not leak into it.
3. Each query's output is bit-for-bit the decode operator's (sparse_attention over every block
   with n_kv = pos0 + i + 1): the engine relies on this for "ratio 1 == dense" and for a
   rectification writing the same K/V as a dense prefill.
"""

import math

import numpy as np
import pytest

from pyresa import _core

BS = 16


@pytest.fixture(params=_core.supported_isas())
def isa(request):
    _core.set_cpu_isa(request.param)
    yield request.param
    _core.set_cpu_isa("auto")


def make_inputs(rng, n, n_q_heads, n_kv_heads, D, n_ctx):
    q = rng.standard_normal((n, n_q_heads, D)).astype(np.float32)
    K = rng.standard_normal((n_kv_heads, n_ctx, D)).astype(np.float16)
    V = rng.standard_normal((n_kv_heads, n_ctx, D)).astype(np.float16)
    return q, K, V


def ref_causal(q, K, V, pos0, scale):
    n, n_q, D = q.shape
    G = n_q // K.shape[0]
    out = np.zeros((n, n_q, D))
    for i in range(n):
        for qh in range(n_q):
            k = K[qh // G, : pos0 + i + 1].astype(np.float64)
            v = V[qh // G, : pos0 + i + 1].astype(np.float64)
            s = scale * (k @ q[i, qh].astype(np.float64))
            p = np.exp(s - s.max())
            out[i, qh] = (p / p.sum()) @ v
    return out


CASES = [
    # n_q_heads, n_kv_heads, D, pos0, n (queries)
    (9, 3, 64, 0, 33),  # SmolLM2-135M shape, prefill from empty, chunk not a multiple of 16
    (9, 3, 64, 23, 33),  # a rectification: starts mid-block, ends mid-block
    (9, 3, 64, 300, 1),  # one query
    (9, 3, 64, 48, 50),  # starts on a block boundary
    (28, 4, 128, 70, 9),  # Qwen2-7B shape (7 heads per KV head)
    (4, 4, 64, 5, 19),  # no GQA
    (8, 1, 64, 2, 12),  # MQA, 8 heads per KV head
    (12, 2, 80, 31, 21),  # D = 80 (vector tails)
    (6, 3, 40, 7, 26),  # D = 40
]


@pytest.mark.parametrize("case", CASES, ids=[f"q{c[0]}kv{c[1]}d{c[2]}pos{c[3]}n{c[4]}" for c in CASES])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_matches_float64_causal_softmax(isa, case, n_threads):
    n_q, n_kvh, D, pos0, n = case
    rng = np.random.default_rng(1000 * pos0 + n + D)
    q, K, V = make_inputs(rng, n, n_q, n_kvh, D, pos0 + n + 5)
    scale = 1.0 / math.sqrt(D)
    got = _core.causal_attention(q, K, V, pos0, scale, n_threads)
    want = ref_causal(q, K, V, pos0, scale)
    vmax = np.abs(V.astype(np.float32)).max()
    err = np.abs(got - want).max()
    assert err <= 2e-6 * vmax, f"max error {err:.3g}"


def test_later_keys_do_not_leak(isa):
    rng = np.random.default_rng(5)
    n, pos0, D = 20, 10, 64
    q, K, V = make_inputs(rng, n, 3, 3, D, pos0 + n)
    # Every key after position pos0 would dominate every query's softmax if it were seen.
    for h in range(3):
        K[h, pos0 + 1:] = (8 * np.sign(q[:, h].sum(axis=0))).astype(np.float16)
        V[h, pos0 + 1:] = 100
    got = _core.causal_attention(q, K, V, pos0, 1.0, 2)
    want = ref_causal(q, K, V, pos0, 1.0)
    assert np.abs(got[0]).max() < 10  # query 0 sees only keys [0, pos0]
    assert np.abs(got - want).max() <= 2e-6 * 100


@pytest.mark.parametrize("case", CASES, ids=[f"q{c[0]}kv{c[1]}d{c[2]}pos{c[3]}n{c[4]}" for c in CASES])
def test_each_query_equals_a_decode_step(isa, case):
    n_q, n_kvh, D, pos0, n = case
    rng = np.random.default_rng(7 + n)
    q, K, V = make_inputs(rng, n, n_q, n_kvh, D, pos0 + n + 5)
    scale = 1.0 / math.sqrt(D)
    got = _core.causal_attention(q, K, V, pos0, scale, 2)
    for i in range(n):
        n_kv = pos0 + i + 1
        blocks = np.tile(np.arange(-(-n_kv // BS), dtype=np.int32), (n_kvh, 1))
        step = _core.sparse_attention(np.ascontiguousarray(q[i]), K, V, n_kv, scale, BS, blocks)
        np.testing.assert_array_equal(got[i], step)
