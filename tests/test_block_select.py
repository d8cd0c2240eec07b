"""ReSA block selection against a numpy reference of the rule in DESIGN.md:

  n_blocks = ceil(n_tokens / block_size); n_sel = max(ceil(ratio * n_blocks), min(n_blocks, min_blocks))
  (also >= min(n_blocks, local_blocks), clamped to n_blocks); pooled query per KV head = mean of its
  GQA group (query head i -> KV head i // (n_q / n_kv)); score = sum_j max(qp_j kmax_j, qp_j kmin_j);
  the last local_blocks blocks always kept; the n_sel best, ties to the lower index; rows ascending.

Scores are float64 here and float32 in C++: where two blocks straddle the cut within rounding
error either may be taken, everywhere else the selection must be identical.
"""

import math

import numpy as np
import pytest

from pyresa import _core

BS = 16


def ref_n_sel(n_tokens, block_size, ratio, min_blocks, local_blocks):
    n_blocks = -(-n_tokens // block_size)
    if n_blocks == 0:
        return 0
    n = max(math.ceil(ratio * n_blocks), min(n_blocks, min_blocks), min(n_blocks, local_blocks))
    return min(n, n_blocks)


def ref_scores(q, kmin, kmax, n_kv_heads, n_blocks):
    n_q, D = q.shape
    qp = q.astype(np.float64).reshape(n_kv_heads, n_q // n_kv_heads, D).mean(axis=1)[:, None, :]
    lo = kmin[:, :n_blocks].astype(np.float64)
    hi = kmax[:, :n_blocks].astype(np.float64)
    return np.maximum(qp * hi, qp * lo).sum(-1), (np.abs(qp) * np.maximum(np.abs(lo), np.abs(hi))).sum(-1)


def ref_select(q, kmin, kmax, n_tokens, block_size, ratio, min_blocks, local_blocks, n_kv_heads):
    n_blocks = -(-n_tokens // block_size)
    n_sel = ref_n_sel(n_tokens, block_size, ratio, min_blocks, local_blocks)
    scores, mag = ref_scores(q, kmin, kmax, n_kv_heads, n_blocks)
    n_local = min(local_blocks, n_blocks)
    if n_local:
        scores[:, n_blocks - n_local:] = np.inf
    out = np.zeros((n_kv_heads, n_sel), np.int32)
    for h in range(n_kv_heads):
        order = np.lexsort((np.arange(n_blocks), -scores[h]))  # best first, ties to lower index
        out[h] = np.sort(order[:n_sel])
    return out, scores, mag


def check_selection(got, q, kmin, kmax, n_tokens, block_size, ratio, min_blocks, local_blocks, n_kv_heads):
    want, scores, mag = ref_select(q, kmin, kmax, n_tokens, block_size, ratio, min_blocks, local_blocks, n_kv_heads)
    assert got.dtype == np.int32
    assert got.shape == want.shape
    n_blocks = -(-n_tokens // block_size)
    n_sel = want.shape[1]
    for h in range(n_kv_heads):
        row = got[h]
        assert np.all(np.diff(row) > 0), "rows ascending, distinct"
        assert row.min(initial=0) >= 0 and row.max(initial=0) < max(n_blocks, 1)
        assert set(range(n_blocks - min(local_blocks, n_blocks), n_blocks)) <= set(row.tolist()), "local blocks kept"
        if np.array_equal(row, want[h]):
            continue
        # Only a near-tie at the cut may differ: float32 rounding of the scores.
        tol = 1e-5 * mag[h].max() + 1e-30
        s = scores[h]
        cut = np.sort(s)[::-1][n_sel - 1]
        sel = np.zeros(n_blocks, bool)
        sel[row] = True
        assert np.all(s[sel] >= cut - tol) and np.all(s[~sel] <= cut + tol), f"head {h}: {row} vs {want[h]}"


def random_descriptors(rng, n_kv_heads, n_blocks, D):
    centre = rng.standard_normal((n_kv_heads, n_blocks, D)).astype(np.float32)
    spread = np.abs(rng.standard_normal((n_kv_heads, n_blocks, D))).astype(np.float32)
    return centre - spread, centre + spread


@pytest.mark.parametrize("n_tokens", [1, 5, 15, 16, 17, 100, 255, 256, 257, 1000, 7000])
@pytest.mark.parametrize("n_q_heads,n_kv_heads,D", [(9, 3, 64), (28, 4, 128), (4, 4, 64), (8, 1, 48), (6, 2, 20)])
def test_random_matches_reference(n_tokens, n_q_heads, n_kv_heads, D):
    rng = np.random.default_rng(n_tokens * 131 + n_q_heads * 7 + D)
    n_blocks = -(-n_tokens // BS)
    kmin, kmax = random_descriptors(rng, n_kv_heads, n_blocks, D)
    q = rng.standard_normal((n_q_heads, D)).astype(np.float32)
    for ratio, min_blocks, local_blocks in [(0.1, 16, 1), (0.25, 4, 2), (0.05, 0, 0), (0.5, 1, 1)]:
        got = _core.select_blocks(q, kmin, kmax, n_tokens, BS, ratio, min_blocks, local_blocks, n_kv_heads)
        check_selection(got, q, kmin, kmax, n_tokens, BS, ratio, min_blocks, local_blocks, n_kv_heads)


def test_descriptors_from_keys_and_partial_block():
    # The realistic pipeline: descriptors from F16 keys (the partial last block over its valid
    # tokens only), then selection.
    rng = np.random.default_rng(5)
    H, D, n_tokens = 3, 64, 7 * BS + 5
    K = rng.standard_normal((H, n_tokens + 11, D)).astype(np.float16)
    K[:, n_tokens:] = 100.0  # garbage past the context must not enter the last block
    kmin, kmax = _core.block_descriptors_from_keys(K, n_tokens, BS)
    assert kmin.shape == (H, 8, D)
    assert kmax[:, -1].max() < 100.0
    q = rng.standard_normal((9, D)).astype(np.float32)
    got = _core.select_blocks(q, kmin, kmax, n_tokens, BS, 0.3, 2, 1, H)
    check_selection(got, q, kmin, kmax, n_tokens, BS, 0.3, 2, 1, H)


def test_gqa_group_pooling():
    # KV head h pools query heads [3h, 3h+3) (ggml: q head i uses KV head i // 3), not i % 3.
    H, G, D, n_blocks = 3, 3, 32, 40
    kmin = np.zeros((H, n_blocks, D), np.float32)
    kmax = np.zeros((H, n_blocks, D), np.float32)
    q = np.zeros((H * G, D), np.float32)
    for h in range(H):
        kmin[h, 10 + h, h] = kmax[h, 10 + h, h] = 1.0  # block 10+h aligned with dim h
        q[h * G:(h + 1) * G, h] = 1.0  # only KV head h's group looks along dim h
    got = _core.select_blocks(q, kmin, kmax, n_blocks * BS, BS, 0.0, 2, 1, H)
    for h in range(H):
        assert got[h].tolist() == [10 + h, n_blocks - 1]


def test_pooled_query_is_the_mean():
    # Heads pulling in opposite directions: the mean decides, not any single head.
    D, n_blocks = 8, 20
    kmin = np.zeros((1, n_blocks, D), np.float32)
    kmax = np.zeros((1, n_blocks, D), np.float32)
    kmin[0, 3, 0] = kmax[0, 3, 0] = 1.0  # favoured by head 0 (q0 = +3 e0)
    kmin[0, 7, 0] = kmax[0, 7, 0] = -1.0  # favoured by head 1 (q1 = -1 e0)
    q = np.zeros((2, D), np.float32)
    q[0, 0], q[1, 0] = 3.0, -1.0  # mean +1 e0: block 3
    got = _core.select_blocks(q, kmin, kmax, n_blocks * BS, BS, 0.0, 1, 0, 1)
    assert got.tolist() == [[3]]


def test_local_blocks_always_kept():
    rng = np.random.default_rng(1)
    H, D, n_blocks = 2, 16, 50
    kmin, kmax = random_descriptors(rng, H, n_blocks, D)
    q = rng.standard_normal((4, D)).astype(np.float32)
    # Make the last 3 blocks the worst possible for every head.
    qp = q.reshape(H, 2, D).mean(1)
    for h in range(H):
        kmin[h, -3:] = kmax[h, -3:] = -np.sign(qp[h]) * 50
    got = _core.select_blocks(q, kmin, kmax, n_blocks * BS - 3, BS, 0.1, 5, 3, H)
    check_selection(got, q, kmin, kmax, n_blocks * BS - 3, BS, 0.1, 5, 3, H)
    for h in range(H):
        assert got[h, -3:].tolist() == [47, 48, 49]


def test_local_blocks_beyond_min_blocks_widen_the_selection():
    n_blocks, D = 30, 8
    kmin = np.zeros((1, n_blocks, D), np.float32)
    kmax = np.zeros((1, n_blocks, D), np.float32)
    q = np.ones((1, D), np.float32)
    got = _core.select_blocks(q, kmin, kmax, n_blocks * BS, BS, 0.0, 2, 5, 1)
    assert got.tolist() == [[25, 26, 27, 28, 29]]


def test_min_blocks_and_short_contexts():
    rng = np.random.default_rng(2)
    H, D = 3, 64
    kmin, kmax = random_descriptors(rng, H, 64, D)
    q = rng.standard_normal((9, D)).astype(np.float32)
    # Fewer blocks than min_blocks: every block.
    for n_tokens in (1, BS - 1, BS, 5 * BS + 3, 16 * BS):
        got = _core.select_blocks(q, kmin, kmax, n_tokens, BS, 0.1, 16, 1, H)
        n_blocks = -(-n_tokens // BS)
        assert got.tolist() == [list(range(n_blocks))] * H
    # min_blocks dominates ratio: 40 blocks, ratio 0.1 -> 4, min_blocks 16 -> 16.
    got = _core.select_blocks(q, kmin, kmax, 40 * BS, BS, 0.1, 16, 1, H)
    assert got.shape == (H, 16)
    check_selection(got, q, kmin, kmax, 40 * BS, BS, 0.1, 16, 1, H)


def test_empty_context():
    q = np.ones((9, 64), np.float32)
    kmin = np.zeros((3, 4, 64), np.float32)
    got = _core.select_blocks(q, kmin, kmin, 0, BS, 0.1, 16, 1, 3)
    assert got.shape == (3, 0)


@pytest.mark.parametrize("n_blocks", [1, 2, 7, 10, 16, 17, 100, 440, 16384])
@pytest.mark.parametrize("ratio", [0.0, 1e-9, 0.05, 0.1, 0.3, 0.7, 1.0, 1.5, 1 / 3])
@pytest.mark.parametrize("min_blocks,local_blocks", [(16, 1), (0, 0), (1, 1), (4, 8), (100, 0)])
def test_select_count(n_blocks, ratio, min_blocks, local_blocks):
    for n_tokens in (n_blocks * BS, n_blocks * BS - BS + 1):
        want = ref_n_sel(n_tokens, BS, ratio, min_blocks, local_blocks)
        assert _core.resa_select_count(n_tokens, BS, ratio, min_blocks, local_blocks) == want


def test_select_count_float_semantics():
    # ceil(ratio * n_blocks) in double, like Python: 0.07 * 100 = 7.000000000000001 -> 8.
    assert _core.resa_select_count(100 * BS, BS, 0.07, 0, 0) == math.ceil(0.07 * 100) == 8
    assert _core.resa_select_count(440 * BS, BS, 0.1, 0, 0) == 44
    assert _core.resa_select_count(0, BS, 0.1, 16, 1) == 0
    with pytest.raises(ValueError):
        _core.resa_select_count(100, BS, -0.5, 0, 0)


def test_ratio_edges_select():
    rng = np.random.default_rng(3)
    H, D, n_blocks = 3, 32, 37
    kmin, kmax = random_descriptors(rng, H, n_blocks, D)
    q = rng.standard_normal((6, D)).astype(np.float32)
    n_tokens = n_blocks * BS - 4
    for ratio in (0.0, 1.0, 2.0, 0.999):
        got = _core.select_blocks(q, kmin, kmax, n_tokens, BS, ratio, 0, 1, H)
        check_selection(got, q, kmin, kmax, n_tokens, BS, ratio, 0, 1, H)
    assert _core.select_blocks(q, kmin, kmax, n_tokens, BS, 1.0, 0, 0, H).tolist() == [list(range(n_blocks))] * H
    assert _core.select_blocks(q, kmin, kmax, n_tokens, BS, 0.0, 0, 0, H).shape == (H, 0)


def test_ties_go_to_lower_index():
    D, n_blocks = 16, 30
    rng = np.random.default_rng(4)
    kmin, kmax = random_descriptors(rng, 1, n_blocks, D)
    # Blocks 3, 11, 20 share one (best) descriptor: scores bit-identical.
    for b in (3, 11, 20):
        kmin[0, b], kmax[0, b] = 10 + kmin[0, 0], 10 + kmax[0, 0]
    q = np.abs(rng.standard_normal((1, D))).astype(np.float32)
    got = _core.select_blocks(q, kmin, kmax, n_blocks * BS, BS, 0.0, 2, 0, 1)
    assert got.tolist() == [[3, 11]]
    # All scores equal (q = 0): the lowest indices, plus the local block.
    got = _core.select_blocks(np.zeros((1, D), np.float32), kmin, kmax, n_blocks * BS, BS, 0.0, 4, 1, 1)
    assert got.tolist() == [[0, 1, 2, 29]]


def test_only_the_context_blocks_compete():
    # The descriptor arrays may hold more blocks (capacity) than the context has.
    rng = np.random.default_rng(6)
    H, D = 2, 16
    kmin, kmax = random_descriptors(rng, H, 64, D)
    kmin[:, 20:] = kmax[:, 20:] = 1e6
    q = np.ones((2, D), np.float32)
    got = _core.select_blocks(q, kmin, kmax, 20 * BS, BS, 0.2, 1, 1, H)
    assert got.max() < 20
    check_selection(got, q, kmin, kmax, 20 * BS, BS, 0.2, 1, 1, H)


@pytest.mark.parametrize("n_threads", [2, 3, 5])
def test_thread_split_is_identical(n_threads):
    rng = np.random.default_rng(7)
    H, D, n_tokens = 4, 64, 3000
    n_blocks = -(-n_tokens // BS)
    kmin, kmax = random_descriptors(rng, H, n_blocks, D)
    q = rng.standard_normal((8, D)).astype(np.float32)
    one = _core.select_blocks(q, kmin, kmax, n_tokens, BS, 0.1, 16, 1, H)
    many = _core.select_blocks(q, kmin, kmax, n_tokens, BS, 0.1, 16, 1, H, n_threads=n_threads)
    assert np.array_equal(one, many)


def test_other_block_sizes():
    rng = np.random.default_rng(8)
    H, D = 3, 64
    for bs, n_tokens in [(8, 1001), (32, 7000), (64, 63), (1, 300)]:
        n_blocks = -(-n_tokens // bs)
        kmin, kmax = random_descriptors(rng, H, n_blocks, D)
        q = rng.standard_normal((9, D)).astype(np.float32)
        got = _core.select_blocks(q, kmin, kmax, n_tokens, bs, 0.1, 16, 1, H)
        check_selection(got, q, kmin, kmax, n_tokens, bs, 0.1, 16, 1, H)
