"""Every CUDA kernel against the CPU backend on fresh random inputs (outputs are poisoned with
NaN bytes before each run, so an unwritten element fails). Skipped, with the reason shown, where
there is no GPU; the CUDA sources are still compiled there whenever nvcc is present."""
import numpy as np
import pytest

import pyresa._core as core
from cuda_util import (BF16, BLOCK, F16, F32, NAMES, Q4_1, Q4_K, Q5_K, Q6_K, Q8_0, Q8_1, Q8_K, WEIGHT_TYPES, random_weights,
                       rel_err, requires_cuda)

pytestmark = requires_cuda
KQ = (Q4_K, Q5_K, Q6_K)


def cols_for(t, mult=2):
    return 256 * mult if t in KQ else 32 * 7 * mult


@pytest.mark.parametrize("act", [Q8_0, Q8_1, Q8_K])
def test_activation_quantizers_match_cpu_bytes(act):
    rng = np.random.default_rng()
    cols = 1024
    x = (rng.standard_normal((5, cols)) * rng.uniform(0.01, 10, (5, 1))).astype(np.float32)
    x[1, :40] = 0.0  # an all-zero Q8_0 block
    x[2, 256:512] = 0.0  # an all-zero Q8_K block
    got = core.cuda_test.quantize_rows(act, x.reshape(-1), 5, cols).reshape(5, -1)
    for r in range(5):
        ref = core.quantize_row(act, x[r])
        np.testing.assert_array_equal(got[r], np.asarray(ref).view(np.uint8), err_msg=f"row {r}")


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: NAMES[t])
def test_dequantize_matches_cpu_bitwise(t):
    rng = np.random.default_rng()
    rows, cols = 7, cols_for(t)
    w = random_weights(rng, t, rows, cols, realistic=t not in (F32, F16, BF16))
    got = core.cuda_test.dequantize(t, rows, cols, w.reshape(-1))
    ref = np.stack([core.dequantize_row(t, np.ascontiguousarray(w[r]), cols) for r in range(rows)])
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


@pytest.fixture
def scalar_cpu():
    # The reference is the CPU's portable kernel set: its AVX-512 Q4_1/Q5_1 dot products differ
    # from the block formula by ~1e-4 relative (seen 2026-11-24), the scalar ones do not.
    core.set_cpu_isa("scalar")
    yield
    core.set_cpu_isa("auto")


@pytest.mark.parametrize("n", [1, 3, 8, 11])
@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: NAMES[t])
def test_matvec_matches_cpu_vec_dot(t, n, scalar_cpu):
    rng = np.random.default_rng()
    rows, cols = 37, cols_for(t, 3)
    w = random_weights(rng, t, rows, cols)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    got = core.cuda_test.matvec(t, rows, cols, w.reshape(-1), x.reshape(-1), n, bias)
    ref = np.array([[core.vec_dot(t, np.ascontiguousarray(w[r]), x[i]) + bias[r] for r in range(rows)]
                    for i in range(n)], np.float32)
    assert np.isfinite(got).all()
    # Same quantized integers; only the float summation order differs.
    assert rel_err(got, ref) < 2e-6, rel_err(got, ref)


@pytest.mark.parametrize("rows", [37, 1000])
@pytest.mark.parametrize("t", [Q4_K, Q5_K, Q6_K], ids=lambda t: NAMES[t])
def test_matvec_rows_per_warp_bit_identical(t, rows):
    # The one-token kernel with 2 or 4 rows per warp does each row's arithmetic exactly as the
    # one-row-per-warp kernel, also with 2 or 4 steps' loads issued together: equal bit for bit
    # (nb = 3 and 14: partial steps).
    rng = np.random.default_rng(7)
    for nsb in (3, 14):
        cols = nsb * 256
        w = random_weights(rng, t, rows, cols)
        x = rng.standard_normal(cols).astype(np.float32)
        bias = rng.standard_normal(rows).astype(np.float32)
        y1 = np.asarray(core.cuda_test.matvec(t, rows, cols, w.reshape(-1), x, 1, bias, -1))
        for r, u in ((2, 1), (4, 1), (1, 2), (1, 4), (2, 2)):
            yr = np.asarray(core.cuda_test.matvec(t, rows, cols, w.reshape(-1), x, 1, bias, -(10 * u + r)))
            assert np.array_equal(y1.view(np.uint32), yr.view(np.uint32)), (r, u, nsb)
        # Persistent grids (each CTA loops over row groups, prefetching the next): 1, 3 and 7 CTAs.
        for cap in (1, 3, 7):
            yr = np.asarray(core.cuda_test.matvec(t, rows, cols, w.reshape(-1), x, 1, bias, -(1000 * cap + 22)))
            assert np.array_equal(y1.view(np.uint32), yr.view(np.uint32)), (cap, nsb)


@pytest.mark.parametrize("rows", [37, 1000])
def test_matvec_q4k_wide_matches_cpu(rows, scalar_cpu):
    # The 4-lanes-per-superblock Q4_K kernel: same integer sums, float scaling grouped
    # differently; checked against the CPU's vec_dot (nb = 3, 14, 74: partial steps), with
    # 1 or 2 rows per warp, 1 or 2 steps, and a persistent grid.
    rng = np.random.default_rng()
    for nsb in (3, 14, 74):
        cols = nsb * 256
        w = random_weights(rng, Q4_K, rows, cols)
        x = rng.standard_normal(cols).astype(np.float32)
        bias = rng.standard_normal(rows).astype(np.float32)
        ref = np.array([core.vec_dot(Q4_K, np.ascontiguousarray(w[r]), x) + bias[r] for r in range(rows)], np.float32)
        y1 = np.asarray(core.cuda_test.matvec(Q4_K, rows, cols, w.reshape(-1), x, 1, bias, -1))
        for path in (-112, -121, -122, -3122):
            got = np.asarray(core.cuda_test.matvec(Q4_K, rows, cols, w.reshape(-1), x, 1, bias, path))
            assert np.isfinite(got).all()
            assert rel_err(got, ref) < 2e-6, (path, nsb, rel_err(got, ref))
            assert rel_err(got, y1) < 2e-6, (path, nsb)


@pytest.mark.parametrize("rows", [37, 1000])
@pytest.mark.parametrize("t", [Q4_K, Q5_K, Q6_K], ids=lambda t: NAMES[t])
def test_matvec_ksplit_matches_cpu(t, rows, scalar_cpu):
    # Rows of >= 32 superblocks split over a CTA's 4 warps (partial sums added in shared memory):
    # the same integer sums, float partial sums added in another order; vs the CPU's vec_dot.
    rng = np.random.default_rng()
    for nsb in (33, 74):
        cols = nsb * 256
        w = random_weights(rng, t, rows, cols)
        x = rng.standard_normal(cols).astype(np.float32)
        bias = rng.standard_normal(rows).astype(np.float32)
        ref = np.array([core.vec_dot(t, np.ascontiguousarray(w[r]), x) + bias[r] for r in range(rows)], np.float32)
        for path in (-212, -221, -222, -5222, -322):  # last: K split wins over the wide Q4_K kernel
            got = np.asarray(core.cuda_test.matvec(t, rows, cols, w.reshape(-1), x, 1, bias, path))
            assert np.isfinite(got).all()
            assert rel_err(got, ref) < 2e-6, (path, nsb, rel_err(got, ref))


@pytest.mark.parametrize("mode", [1, 2, 3])
@pytest.mark.parametrize("types,rows", [((Q4_K,), (37,)), ((Q6_K,), (37,)), ((Q4_K,), (1000,)), ((Q6_K,), (333,)),
                                        ((Q4_K, Q4_K, Q6_K), (64, 16, 40)), ((Q6_K, Q4_K), (23, 50))],
                         ids=["q4k-37", "q6k-37", "q4k-1000", "q6k-333", "q4k-q4k-q6k", "q6k-q4k"])
def test_matvec_mma_matches_cpu(types, rows, mode, scalar_cpu):
    # One token on the int8 tensor cores (matvec_mma.cu): the same quantized integers as the CPU's
    # vec_dot, the float scaling grouped by (row, superblock, pair of scale groups). Every K split
    # (1-8 warps per tile, also parts with no superblock: nb = 1, 3), rows past the last tile,
    # mixed Q4_K / Q6_K batches, bias, accumulation into y, and grids smaller than the work (each
    # CTA then loops over item groups).
    rng = np.random.default_rng()
    for nsb in (1, 3, 14, 74):
        cols = nsb * 256
        ws = [random_weights(rng, t, r, cols) for t, r in zip(types, rows)]
        x = rng.standard_normal(cols).astype(np.float32)
        total = sum(rows)
        bias = rng.standard_normal(total).astype(np.float32)
        ref = np.concatenate([[core.vec_dot(t, np.ascontiguousarray(w[r]), x) for r in range(n)]
                              for t, w, n in zip(types, ws, rows)]).astype(np.float32)
        wbytes = np.concatenate([w.reshape(-1) for w in ws])
        y0 = (0.25 * (np.arange(total) % 7) - 0.5).astype(np.float32)
        for split, cap in ((0, 0), (1, 0), (2, 0), (4, 0), (8, 0), (0, 1), (2, 3), (8, 2)):
            got = np.asarray(core.cuda_test.matvec_mma(list(types), list(rows), cols, wbytes, x, bias, False, split, mode,
                                                       cap))
            assert np.isfinite(got).all(), (nsb, split, cap)
            assert rel_err(got, ref + bias) < 2e-6, (nsb, split, cap, rel_err(got, ref + bias))
        got = np.asarray(core.cuda_test.matvec_mma(list(types), list(rows), cols, wbytes, x, None, True, 0, mode))
        assert rel_err(got, y0 + ref) < 2e-6, (nsb, "accumulate")


BULK_CASES = [((Q4_K,), (37,)), ((Q6_K,), (37,)), ((Q4_K,), (1000,)), ((Q6_K,), (333,)),
              ((Q4_K, Q4_K, Q6_K), (64, 16, 40)), ((Q6_K, Q4_K, Q4_K), (23, 50, 7))]
BULK_IDS = ["q4k-37", "q6k-37", "q4k-1000", "q6k-333", "q4k-q4k-q6k", "q6k-q4k-q4k"]


def requires_bulk():
    if not core.cuda_test.matvec_bulk_available():
        pytest.skip("the bulk-copy products need an sm_90+ GPU")


@pytest.mark.parametrize("mode", [1, 2, 4, 11, 21, 24])
@pytest.mark.parametrize("types,rows", BULK_CASES, ids=BULK_IDS)
def test_matvec_bulk_matches_cpu(types, rows, mode, scalar_cpu):
    # One token fed by bulk copies into a shared-memory ring (matvec_bulk.cu): the same integers
    # and float operations as the dp4a kernel, vs the CPU's vec_dot. Rows with one stage unit
    # (nsb <= 16: a 16-row group is one contiguous copy per plane) and several (17: a last unit of
    # one superblock; 74: the FFN down), row counts not a multiple of 16 (the Q6_K d plane's last
    # copy then falls back to global reads), mixed batches in either order, 2-4 stages, grids of
    # one CTA per SM and smaller (long spans of groups per CTA: the ring wraps many times), bias,
    # accumulation into y; modes 11 (one step's loads at a time) and 21-24 (24-row groups).
    requires_bulk()
    rng = np.random.default_rng()
    for nsb in (1, 3, 14, 17, 74):
        cols = nsb * 256
        ws = [random_weights(rng, t, r, cols) for t, r in zip(types, rows)]
        x = rng.standard_normal(cols).astype(np.float32)
        total = sum(rows)
        bias = rng.standard_normal(total).astype(np.float32)
        ref = np.concatenate([[core.vec_dot(t, np.ascontiguousarray(w[r]), x) for r in range(n)]
                              for t, w, n in zip(types, ws, rows)]).astype(np.float32)
        wbytes = np.concatenate([w.reshape(-1) for w in ws])
        y0 = (0.25 * (np.arange(total) % 7) - 0.5).astype(np.float32)
        for cap in (0, 1, 3):
            got = np.asarray(core.cuda_test.matvec_bulk(list(types), list(rows), cols, wbytes, x, bias, False, mode, cap))
            assert np.isfinite(got).all(), (nsb, cap)
            assert rel_err(got, ref + bias) < 2e-6, (nsb, cap, rel_err(got, ref + bias))
        got = np.asarray(core.cuda_test.matvec_bulk(list(types), list(rows), cols, wbytes, x, None, True, mode, 2))
        assert rel_err(got, y0 + ref) < 2e-6, (nsb, "accumulate")


@pytest.mark.parametrize("mode", [1, 11, 21])
@pytest.mark.parametrize("types,rows", BULK_CASES, ids=BULK_IDS)
def test_matvec_bulk_bit_identical_to_dp4a(types, rows, mode):
    # Each weight's outputs equal the default one-token dp4a kernel's (matvec_rows_kernel, 2 rows x
    # 2 steps per warp) bit for bit: same lanes, same blocks in the same order, same reduction.
    requires_bulk()
    rng = np.random.default_rng()
    for nsb in (3, 14, 17, 74):
        cols = nsb * 256
        ws = [random_weights(rng, t, r, cols) for t, r in zip(types, rows)]
        x = rng.standard_normal(cols).astype(np.float32)
        total = sum(rows)
        bias = rng.standard_normal(total).astype(np.float32)
        wbytes = np.concatenate([w.reshape(-1) for w in ws])
        got = np.asarray(core.cuda_test.matvec_bulk(list(types), list(rows), cols, wbytes, x, bias, False, mode, 0))
        r0 = 0
        for t, w, n in zip(types, ws, rows):
            ref = np.asarray(core.cuda_test.matvec(t, n, cols, w.reshape(-1), x, 1, bias[r0:r0 + n], -22)).reshape(-1)
            np.testing.assert_array_equal(got[r0:r0 + n].view(np.uint32), ref.view(np.uint32),
                                          err_msg=f"{NAMES[t]} nsb {nsb} mode {mode}")
            r0 += n


def cpu_rms_norm(x, w, eps):
    # The CPU's RMS norm: float products summed in double, the scale in float.
    ss = np.sum((x * x).astype(np.float64))
    scale = np.float32(1.0) / np.sqrt(np.float32(ss / x.size) + np.float32(eps))
    return ((x * scale).astype(np.float32) * w).astype(np.float32)


@pytest.mark.parametrize("transform", [0, 1], ids=["plain", "rmsnorm"])
@pytest.mark.parametrize("types", [(Q4_K,), (Q5_K,), (Q6_K,), (Q4_K, Q4_K), (Q4_K, Q4_K, Q6_K), (Q5_K, Q6_K, Q6_K),
                                   (Q6_K, Q4_K, Q4_K)],
                         ids=lambda ts: "+".join(NAMES[t] for t in ts))
def test_matvec_prep_bit_identical(types, transform, scalar_cpu):
    # One-token products that normalise and quantize their own input in each CTA's shared memory
    # (matvec_rows_prep, mode 1), and weights of two types in one launch (mode 2): the activation
    # bytes and every output bit-identical to prepare_activations + the default matvec (mode 0),
    # with a persistent grid too; mode 0 against the CPU's vec_dot on the CPU's normalised row.
    rng = np.random.default_rng()
    for nsb, rows in ((3, (37, 12, 20)), (14, (1000, 256, 64))):
        cols = nsb * 256
        rs = list(rows[:len(types)])
        ws = [random_weights(rng, t, r, cols) for t, r in zip(types, rs)]
        wcat = np.concatenate([w.reshape(-1) for w in ws])
        x = (rng.standard_normal(cols) * rng.uniform(0.1, 10)).astype(np.float32)
        x[256:512] = 0.0  # an all-zero Q8_K block
        nw = rng.standard_normal(cols).astype(np.float32) if transform else None
        eps = 1e-6
        bias = rng.standard_normal(sum(rs)).astype(np.float32)
        for acc in (False, True):
            y0, a0 = core.cuda_test.matvec_prep(list(types), rs, cols, wcat, x, nw, eps, transform, bias, acc, 0)
            assert np.isfinite(y0).all()
            runs = [(1, 0), (1, 1), (1, 5)] + ([(2, 0)] if len(set(types)) > 1 else [])
            for mode, cap in runs:
                y1, a1 = core.cuda_test.matvec_prep(list(types), rs, cols, wcat, x, nw, eps, transform, bias, acc,
                                                    mode, cap)
                planes = cols + 36 * nsb  # quants, scales, block sums (not the row's padding to 16 bytes)
                np.testing.assert_array_equal(a1[:planes], a0[:planes], err_msg=f"activations, mode {mode} cap {cap} nsb {nsb}")
                assert np.array_equal(y1.view(np.uint32), y0.view(np.uint32)), (mode, cap, nsb, acc)
            if not acc:
                xn = cpu_rms_norm(x, nw, eps) if transform else x
                ref = np.concatenate([[core.vec_dot(t, np.ascontiguousarray(w[r]), xn) for r in range(w.shape[0])]
                                      for t, w in zip(types, ws)]) + bias
                assert rel_err(y0, ref) < 1e-4, rel_err(y0, ref)


@pytest.mark.parametrize("t", [Q4_K, Q5_K, Q6_K], ids=lambda t: NAMES[t])
def test_gate_up_glu_epilogue_bit_identical(t):
    # gate + up in one launch whose CTAs quantize silu(gate) * up block by block as each 256-row
    # block completes (a self-resetting counter per block): gate, up and the down product's Q8_K
    # input equal, bit for bit, two matvecs + prepare_activations(SwiGLU); repeated launches
    # (counters back at zero) and persistent grids too.
    rng = np.random.default_rng()
    for rows, nsb in ((512, 3), (2048, 14)):
        cols = nsb * 256
        w = np.concatenate([random_weights(rng, t, rows, cols).reshape(-1) for _ in range(2)])
        x = rng.standard_normal(cols).astype(np.float32)
        y0, a0 = core.cuda_test.gate_up_glu(t, rows, cols, w, x, 0)
        assert np.isfinite(y0).all()
        planes = rows + 36 * (rows // 256)
        for cap, repeats in ((0, 1), (0, 3), (7, 2), (200, 1)):
            y1, a1 = core.cuda_test.gate_up_glu(t, rows, cols, w, x, 1, cap, repeats)
            assert np.array_equal(y1.view(np.uint32), y0.view(np.uint32)), (rows, cap, repeats)
            np.testing.assert_array_equal(a1[:planes], a0[:planes], err_msg=f"rows {rows} cap {cap} x{repeats}")


@pytest.mark.parametrize("path,n", [(1, 70), (2, 9), (2, 33), (2, 64)])
@pytest.mark.parametrize("t", [F16, Q8_0, Q4_1, Q4_K, Q6_K, Q5_K], ids=lambda t: NAMES[t])
def test_f16_paths_match_float64(t, path, n):
    """path 1: dequantize to F16 + tiled GEMM (prefill); 2: dequantize-and-multiply in shared
    memory (rectification chunks, short prompts; K split over CTAs when rows are few)."""
    rng = np.random.default_rng()
    rows, cols = (300, cols_for(t, 2)) if path == 1 else (200, cols_for(t, 9))
    w = random_weights(rng, t, rows, cols)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    got = core.cuda_test.matvec(t, rows, cols, w.reshape(-1), x.reshape(-1), n, None, path)
    wf = np.stack([core.dequantize_row(t, np.ascontiguousarray(w[r]), cols) for r in range(rows)]).astype(np.float64)
    ref = x.astype(np.float64) @ wf.T
    assert np.isfinite(got).all()
    assert rel_err(got, ref) < 2e-3  # F16 weights and activations, F32 accumulation


# dequantize-and-multiply for 9..64 tokens: 3 = dqmm_kernel (PYRESA_CUDA_DQMM=old), 100 * variant +
# 10 * (prefetch + 1) + stages = the pipelined Q4_K/Q6_K kernel (other formats fall back to dqmm_kernel).
DQMM_PATHS = (3, 12, 13, 14, 34, 212, 313)


@pytest.mark.parametrize("n", [9, 16, 33, 64])
@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: NAMES[t])
def test_dqmm_variants_match_float64(t, n):
    """Every format, both kernels, several ring depths: against float64 products of the CPU's
    dequantized weights, and the two kernels against each other (the same F16 operands; only the
    F32 summation order differs). K-quant shapes: tiles shared by several CTAs (the stream-K
    reduction), whole tiles written directly, and a last partial row tile."""
    rng = np.random.default_rng()
    shapes = [(300, cols_for(t, 9)), (1000, cols_for(t, 1)), (2000, cols_for(t, 20))] if t in KQ else [(200, cols_for(t, 9))]
    for rows, cols in shapes:
        w = random_weights(rng, t, rows, cols)
        x = rng.standard_normal((n, cols)).astype(np.float32)
        bias = rng.standard_normal(rows).astype(np.float32)
        wf = np.stack([core.dequantize_row(t, np.ascontiguousarray(w[r]), cols) for r in range(rows)]).astype(np.float64)
        ref = x.astype(np.float64) @ wf.T + bias
        got = {}
        for path in DQMM_PATHS:
            got[path] = np.asarray(core.cuda_test.matvec(t, rows, cols, w.reshape(-1), x.reshape(-1), n, bias, path))
            assert np.isfinite(got[path]).all(), (path, rows, cols)
            assert rel_err(got[path], ref) < 2e-3, (path, rows, cols, rel_err(got[path], ref))
        for path in DQMM_PATHS[1:]:
            assert rel_err(got[path], got[3]) < 3e-5, (path, rows, cols, rel_err(got[path], got[3]))


@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("n", [2, 8, 9, 33, 64])
@pytest.mark.parametrize("t", [Q4_K, Q6_K], ids=lambda t: NAMES[t])
def test_small_mmq_matches_cpu_vec_dot(t, n, mode, scalar_cpu):
    """A few tokens on the int8 tensor cores (matmul_mma.cu, Q8_K activations): the same quantized
    integers as the CPU's vec_dot, the float sum over superblocks in another order. Shapes: rows
    not a multiple of the 256- or 128-row tile, one superblock per row, tiles shared by CTAs
    (stream-K through the workspace and the reduce kernel: grid caps 1, 3, 7 and one per SM),
    2-4 stages, bias, accumulation into y; mode 1 (one CTA per SM) and 2 (two, 16-row warps)."""
    rng = np.random.default_rng()
    for rows, nsb in ((300, 9), (1000, 1), (37, 14), (520, 20)):
        cols = nsb * 256
        w = random_weights(rng, t, rows, cols)
        x = rng.standard_normal((n, cols)).astype(np.float32)
        x[0, :256] *= 50.0  # a superblock with a large scale
        bias = rng.standard_normal(rows).astype(np.float32)
        ref = np.array([[core.vec_dot(t, np.ascontiguousarray(w[r]), x[i]) for r in range(rows)] for i in range(n)],
                       np.float32)
        for stages, cap in ((0, 0), (2, 0), (3, 0), (0, 1), (2, 3), (0, 7)):
            got = np.asarray(core.cuda_test.small_mmq(t, rows, cols, w.reshape(-1), x.reshape(-1), n, bias, False,
                                                      stages, cap, mode))
            assert np.isfinite(got).all(), (rows, nsb, stages, cap)
            assert rel_err(got, ref + bias) < 2e-6, (rows, nsb, stages, cap, rel_err(got, ref + bias))
        y0 = (0.25 * (np.arange(n * rows) % 7) - 0.5).astype(np.float32).reshape(n, rows)
        got = np.asarray(core.cuda_test.small_mmq(t, rows, cols, w.reshape(-1), x.reshape(-1), n, None, True, 0, 5, mode))
        assert rel_err(got, y0 + ref) < 2e-6, (rows, nsb, "accumulate", rel_err(got, y0 + ref))


def test_gemm_f16_odd_shapes():
    rng = np.random.default_rng()
    M, N, K = 77, 200, 96
    a = rng.standard_normal((M, K)).astype(np.float16)
    b = rng.standard_normal((N, K)).astype(np.float16)
    got = core.cuda_test.gemm_f16(a.view(np.uint16), b.view(np.uint16), M, N, K)
    ref = a.astype(np.float64) @ b.astype(np.float64).T
    assert rel_err(got, ref) < 1e-5


def test_rmsnorm_and_swiglu():
    rng = np.random.default_rng()
    n, cols = 4, 576
    x = rng.standard_normal((n, cols)).astype(np.float32) * 3
    w = rng.standard_normal(cols).astype(np.float32)
    got = core.cuda_test.transform_rows(1, x.reshape(-1), None, w, 1e-5, n, cols)
    ms = (x.astype(np.float64) ** 2).mean(axis=1, keepdims=True)
    ref = x / np.sqrt(ms + 1e-5) * w
    assert rel_err(got, ref) < 1e-6
    u = rng.standard_normal((n, cols)).astype(np.float32)
    got = core.cuda_test.transform_rows(2, x.reshape(-1), u.reshape(-1), None, 0.0, n, cols)
    ref = x / (1 + np.exp(-x.astype(np.float64))) * u
    assert rel_err(got, ref) < 1e-6


def rope_ref(x, pos0, base, neox):
    n, H, D = x.shape
    out = x.astype(np.float64).copy()
    scale = np.float32(base) ** np.float32(-2.0 / D)
    for i in range(n):
        theta = np.float32(pos0 + i)
        for k in range(D // 2):
            c, s = np.cos(np.float64(theta)), np.sin(np.float64(theta))
            a, b = (k, k + D // 2) if neox else (2 * k, 2 * k + 1)
            x0, x1 = x[i, :, a].astype(np.float64), x[i, :, b].astype(np.float64)
            out[i, :, a] = x0 * c - x1 * s
            out[i, :, b] = x0 * s + x1 * c
            theta = np.float32(theta * scale)
    return out


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("pos0", [0, 7, 100003])
def test_rope(neox, pos0):
    rng = np.random.default_rng()
    x = rng.standard_normal((3, 4, 64)).astype(np.float32)
    got = core.cuda_test.rope(x.reshape(-1), 3, 4, 64, pos0, 10000.0, neox)
    assert rel_err(got, rope_ref(x, pos0, 10000.0, neox)) < 2e-6


@pytest.fixture(params=[(True, 0, 431), (False, 0, 431), (True, 1, 431), (True, 0, 240), (True, 0, 241),
                        (True, 0, 221), (True, 0, 421), (True, 0, 420), (True, 1, 240)],
                ids=["decode_kernel", "old_kernels", "decode_kernel_combine_inside", "decode_2w4st", "decode_2w4st_ilp",
                     "decode_2w2st_ilp", "decode_4w2st_ilp", "decode_4w2st", "decode_2w4st_combine_inside"])
def step_kernels(request):
    """The decode step's kernels (the engine's PYRESA_CUDA_SPARSE_STEP, PYRESA_CUDA_DECODE_COMBINE,
    PYRESA_CUDA_DECODE_SHAPE): the decode attention kernel (warps per CTA each taking one span of
    every tile, cp.async stages, one or two mma chains per warp) and the parallel combine, or the
    general kernel and the serial combine; the decode kernel's splits merged by the separate
    combine kernel (0) or inside the attention kernel (1)."""
    core.cuda_test.set_sparse_step_kernels(*request.param)
    yield request.param
    core.cuda_test.set_sparse_step_kernels(True, 0, 431)  # the defaults


@pytest.fixture(params=[(0, 0, False, 0, False), (1, 0, False, 0, True), (1, 1, False, 0, True), (1, 2, False, 0, True),
                        (1, 4, False, 0, True), (1, 16, False, 0, True), (1, 0, True, 0, False)],
                ids=["topn_old_late_q", "topn_cluster", "topn_cluster_1", "topn_cluster_2", "topn_cluster_4",
                     "topn_cluster_16", "topn_cluster_trigger_late_q"])
def select_kernels(request):
    """The block selection's kernels (the engine's PYRESA_CUDA_TOPN, _TOPN_CTAS, _SCORE_TRIGGER,
    _SCORE_EARLY_Q): the one-CTA top-n, or the cluster top-n with its size from the cache (or
    forced; raised where a CTA would hold too many keys); the scoring triggering the top-n's launch
    early or not, reading the query before the position (the default) or after it."""
    core.cuda_test.set_select_kernels(*request.param)
    yield request.param
    core.cuda_test.set_select_kernels(1, 0, False, 0, True)


def attention_ref(q, K, V, pos0, scale, blocks=None, block_size=16):
    """float64 softmax attention; query i sees keys <= pos0 + i (and only selected blocks)."""
    n_tok, H, D = q.shape
    Hkv = K.shape[0]
    G = H // Hkv
    out = np.zeros((n_tok, H, D))
    for i in range(n_tok):
        for h in range(H):
            kv = h // G
            keys = np.arange(pos0 + i + 1)
            if blocks is not None:
                sel = np.zeros(K.shape[1], bool)
                for b in blocks[kv]:
                    sel[b * block_size:(b + 1) * block_size] = True
                keys = keys[sel[keys]]
            s = K[kv, keys].astype(np.float64) @ q[i, h].astype(np.float64) * scale
            p = np.exp(s - s.max())
            out[i, h] = p @ V[kv, keys].astype(np.float64) / p.sum()
    return out


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("n_tok,pos0,splits", [(1, 0, 1), (1, 700, 1), (1, 700, 8), (1, 3000, 23), (2, 300, 3),
                                               (5, 300, 2), (40, 100, 1), (33, 1000, 4)])
def test_dense_attention(D, n_tok, pos0, splits, step_kernels):
    rng = np.random.default_rng()
    H, Hkv = (28, 4) if D == 128 else (9, 3)
    cap = pos0 + n_tok + 5
    q = rng.standard_normal((n_tok, H, D)).astype(np.float32)
    K = rng.standard_normal((Hkv, cap, D)).astype(np.float16)
    V = rng.standard_normal((Hkv, cap, D)).astype(np.float16)
    scale = 1 / np.sqrt(D)
    got = core.cuda_test.attention(q.reshape(-1), n_tok, H, Hkv, D, K.view(np.uint16).reshape(-1),
                                   V.view(np.uint16).reshape(-1), cap, pos0, None, 16, scale, splits)
    assert np.isfinite(got).all()
    # The query is rounded to F16 (as the CPU's dense attention does); probabilities are two-term F16.
    ref = attention_ref(q.astype(np.float16).astype(np.float32), K, V, pos0, scale)
    err = rel_err(got, ref)
    assert err < 1e-5, f"rel err {err:.3g}"


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("n_kv,frac,splits", [(37, 1.0, 1), (1000, 0.3, 1), (5000, 0.1, 16), (5000, 1.0, 8),
                                              (40000, 0.1, 99), (40000, 0.5, 1)])
def test_sparse_attention_vs_cpu(block_size, n_kv, frac, splits, step_kernels):
    rng = np.random.default_rng()
    H, Hkv, D = 28, 4, 128
    cap = n_kv + 3
    q = rng.standard_normal((1, H, D)).astype(np.float32)
    K = rng.standard_normal((Hkv, cap, D)).astype(np.float16)
    V = rng.standard_normal((Hkv, cap, D)).astype(np.float16)
    n_blocks = -(-n_kv // block_size)
    n_sel = max(1, int(np.ceil(frac * n_blocks)))
    blocks = np.stack([np.sort(np.concatenate([rng.choice(n_blocks - 1, n_sel - 1, replace=False), [n_blocks - 1]]))
                       for _ in range(Hkv)]).astype(np.int32)
    scale = 1 / np.sqrt(D)
    got = core.cuda_test.attention(q.reshape(-1), 1, H, Hkv, D, K.view(np.uint16).reshape(-1),
                                   V.view(np.uint16).reshape(-1), cap, n_kv - 1, blocks.reshape(-1), block_size, scale,
                                   splits).reshape(H, D)
    ref = core.sparse_attention(q[0], K, V, n_kv, scale, block_size, blocks)
    assert np.isfinite(got).all()
    err = rel_err(got, ref)
    # Two-term F16 query and probabilities: near-F32. The general kernel accumulates P.V over a
    # whole split in the tensor cores' F32, which truncates: over 20K tokens in one split that
    # bias alone is ~6e-5 (numpy model of it; the decode kernel adds each tile's P.V in F32 on
    # the CUDA cores: ~1e-6). The engine's decode steps use the decode kernel.
    bound = 2e-4 if (not step_kernels[0] and splits == 1 and n_kv * frac > 10000) else 1e-5
    assert err < bound, f"rel err {err:.3g}"
    if frac == 1.0:  # every block: the dense kernel's answer (which rounds the query to F16, as the CPU's)
        dense = core.cuda_test.attention(q.reshape(-1), 1, H, Hkv, D, K.view(np.uint16).reshape(-1),
                                         V.view(np.uint16).reshape(-1), cap, n_kv - 1, None, 16, scale, splits)
        assert rel_err(got, dense.reshape(H, D)) < 3e-3
        ref_dense = attention_ref(q.astype(np.float16).astype(np.float32), K, V, n_kv - 1, scale)
        assert rel_err(dense, ref_dense) < 1e-5


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("n_tok,n_kv,splits", [(1, 37, 1), (1, 3001, 7), (2, 700, 3), (5, 300, 2)])
def test_attention_ignores_stale_nan_past_the_position(sparse, n_tok, n_kv, splits, step_kernels):
    """K/V past the last position may hold anything a truncated sequence left there, NaN and inf
    included (a long prompt that overflowed, then truncate()): masked keys must not reach the
    output (0 x NaN in P.V is NaN). Found on the 7B benchmark model in run 13."""
    rng = np.random.default_rng()
    H, Hkv, D = 28, 4, 128
    cap = n_kv + 40
    q = rng.standard_normal((n_tok, H, D)).astype(np.float32)
    K = rng.standard_normal((Hkv, cap, D)).astype(np.float16)
    V = rng.standard_normal((Hkv, cap, D)).astype(np.float16)
    K[:, n_kv:] = np.nan
    V[:, n_kv:] = np.inf
    V[:, n_kv + 1::2] = np.nan
    pos0 = n_kv - n_tok
    scale = 1 / np.sqrt(D)
    blocks = None
    if sparse:
        n_blocks = -(-n_kv // 16)
        n_sel = max(1, n_blocks // 3)
        blocks = np.stack([np.sort(np.concatenate([rng.choice(n_blocks - 1, n_sel - 1, replace=False),
                                                   [n_blocks - 1]])) for _ in range(Hkv)]).astype(np.int32)
    got = core.cuda_test.attention(q.reshape(-1), n_tok, H, Hkv, D, K.view(np.uint16).reshape(-1),
                                   V.view(np.uint16).reshape(-1), cap, pos0,
                                   None if blocks is None else blocks.reshape(-1), 16, scale, splits)
    assert np.isfinite(got).all()
    qr = q if sparse else q.astype(np.float16).astype(np.float32)  # dense rounds the query to F16
    ref = attention_ref(qr, K, V, pos0, scale, blocks)
    assert rel_err(got.reshape(-1), ref.reshape(-1)) < 3e-3


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("n_kv,splits", [(700, 2), (3000, 7), (5000, 16), (40000, 99), (40000, 300), (2000, 37)])
@pytest.mark.parametrize("shape", [431, 240])
def test_decode_combine_inside_matches_separate(D, sparse, n_kv, splits, shape):
    """The decode kernel's in-kernel combine (PYRESA_CUDA_DECODE_COMBINE=1: the last CTAs of each
    KV head merge the splits) gives the separate combine kernel's bits, and the CPU's answer.
    300 splits x 4 heads is more than one wave: the merging CTAs wait while later ones run. The
    hook checks that the arrival counters are back at zero."""
    rng = np.random.default_rng()
    H, Hkv, n_tok = (28, 4, 1) if D == 128 else (9, 3, 2)
    cap = n_kv + 5
    q = rng.standard_normal((n_tok, H, D)).astype(np.float32)
    K = rng.standard_normal((Hkv, cap, D)).astype(np.float16)
    V = rng.standard_normal((Hkv, cap, D)).astype(np.float16)
    scale = 1 / np.sqrt(D)
    blocks = None
    pos0 = n_kv - n_tok
    if sparse:
        n_blocks = -(-n_kv // 16)
        n_sel = max(1, n_blocks // 10)
        blocks = np.stack([np.sort(np.concatenate([rng.choice(n_blocks - 1, n_sel - 1, replace=False),
                                                   [n_blocks - 1]])) for _ in range(Hkv)]).astype(np.int32)
    args = (q.reshape(-1), n_tok, H, Hkv, D, K.view(np.uint16).reshape(-1), V.view(np.uint16).reshape(-1), cap, pos0,
            None if blocks is None else blocks.reshape(-1), 16, scale, splits)
    try:
        core.cuda_test.set_sparse_step_kernels(True, 0, shape)
        separate = core.cuda_test.attention(*args)
        core.cuda_test.set_sparse_step_kernels(True, 1, shape)
        inside = core.cuda_test.attention(*args)
        again = core.cuda_test.attention(*args)
    finally:
        core.cuda_test.set_sparse_step_kernels(True, 0, 431)  # the defaults
    inside = inside.reshape(-1)
    assert np.isfinite(inside).all()
    assert np.array_equal(inside.view(np.uint32), separate.reshape(-1).view(np.uint32))
    assert np.array_equal(inside.view(np.uint32), again.reshape(-1).view(np.uint32))
    if sparse and n_tok == 1:
        ref = core.sparse_attention(q[0], K, V, n_kv, scale, 16, blocks).reshape(-1)
    elif sparse:  # the query at ~F32 (two-term F16)
        ref = attention_ref(q, K, V, pos0, scale, blocks).reshape(-1)
    else:  # dense: the query rounded to F16, as the CPU's dense attention
        ref = attention_ref(q.astype(np.float16).astype(np.float32), K, V, pos0, scale).reshape(-1)
    assert rel_err(inside, ref) < 1e-5


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("variant", [1, 2, 3, 4])
@pytest.mark.parametrize("n_tok,pos0,splits", [(33, 2000, 1), (33, 2000, 7), (33, 5, 4), (10, 0, 1), (40, 100, 3),
                                               (300, 50, 2), (33, 9000, 3)])
@pytest.mark.parametrize("split_query", [0, 1])
def test_batched_attention(D, variant, n_tok, pos0, splits, split_query):
    """The many-rows kernel (rectification, prefill) against float64; zero-tile splits included.
    Variant 4 (wgmma) runs only where the build has sm_90a code and the GPU is a Hopper (else it
    would silently be variant 3): skipped elsewhere."""
    if variant == 4 and not core.cuda_test.attention_wgmma_available():
        pytest.skip("no sm_90a code or not a compute capability 9.0 GPU")
    rng = np.random.default_rng()
    H, Hkv = (28, 4) if D == 128 else (9, 3)
    cap = pos0 + n_tok + 5
    q = (rng.standard_normal((n_tok, H, D)) * 2).astype(np.float32)
    K = rng.standard_normal((Hkv, cap, D)).astype(np.float16)
    V = rng.standard_normal((Hkv, cap, D)).astype(np.float16)
    scale = 1 / np.sqrt(D)
    args = (q.reshape(-1), n_tok, H, Hkv, D, K.view(np.uint16).reshape(-1), V.view(np.uint16).reshape(-1), cap, pos0,
            None, 16, scale, splits)
    got = core.cuda_test.attention(*args, kernel=variant, split_query=split_query)
    assert np.isfinite(got).all()
    # split_query: two-term F16 query (~F32, as the CPU's rectification); else rounded to F16 (prefill).
    q_ref = q if split_query else q.astype(np.float16).astype(np.float32)
    ref = attention_ref(q_ref, K, V, pos0, scale)
    assert rel_err(got, ref) < 1e-5
    old = core.cuda_test.attention(*args, kernel=0, split_query=split_query)
    assert rel_err(got, old) < 1e-5


@pytest.mark.parametrize("n_tokens", [1, 100, 1037, 4096])
@pytest.mark.parametrize("block_size", [16, 32])
def test_descriptors_match_cpu(n_tokens, block_size):
    rng = np.random.default_rng()
    Hkv, D = 4, 128
    cap = n_tokens + 20
    K = (rng.standard_normal((Hkv, cap, D)) * 4).astype(np.float16)
    K[0, 0, :8] = [0.0, -0.0, 1, -1, 0, 0, 2, -2]  # signed zeros: -0 orders below +0
    mn, mx = core.cuda_test.descriptors(K.view(np.uint16).reshape(-1), Hkv, cap, D, n_tokens, block_size)
    rmn, rmx = core.block_descriptors_from_keys(K, n_tokens, block_size)
    np.testing.assert_array_equal(mn, rmn)
    np.testing.assert_array_equal(mx, rmx)


@pytest.mark.parametrize("n_tokens,ratio,min_blocks,local", [(100, 0.1, 16, 1), (1037, 0.1, 16, 1), (5000, 0.1, 16, 1),
                                                              (5000, 0.3, 4, 2), (20000, 0.1, 16, 1), (700, 1.0, 16, 1),
                                                              (3000, 0.05, 0, 0), (262144, 0.1, 16, 1),
                                                              (400000, 0.1, 16, 1),
                                                              # one block to rank; one below all of them
                                                              (5000, 0.001, 0, 0), (5000, 0.001, 2, 1),
                                                              (5000, 0.9966, 16, 1), (131072, 0.999, 16, 3)])
def test_select_blocks_matches_cpu(n_tokens, ratio, min_blocks, local, select_kernels):
    rng = np.random.default_rng()
    H, Hkv, D, bs = 28, 4, 128, 16
    cap = n_tokens + 16
    K = rng.standard_normal((Hkv, cap, D)).astype(np.float16)
    q = rng.standard_normal((H, D)).astype(np.float32)
    got = core.cuda_test.select_blocks(q.reshape(-1), H, K.view(np.uint16).reshape(-1), Hkv, cap, D, n_tokens, bs, ratio,
                                       min_blocks, local)
    kmin, kmax = core.block_descriptors_from_keys(K, n_tokens, bs)
    ref = core.select_blocks(q, kmin, kmax, n_tokens, bs, ratio, min_blocks, local, Hkv)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("n_tokens", [5000, 65536, 262144])
def test_select_blocks_many_equal_scores_match_cpu(n_tokens, select_kernels):
    # Keys in {-1, 0, 1} and a small-integer query: few distinct scores, so the n_sel boundary
    # falls inside a run of equal scores (taken from the lowest blocks) and the radix passes see
    # heavily shared digits.
    rng = np.random.default_rng()
    H, Hkv, D, bs = 28, 4, 128, 16
    cap = n_tokens + 16
    K = rng.integers(-1, 2, (Hkv, cap, D)).astype(np.float16)
    q = rng.integers(-2, 3, (H, D)).astype(np.float32)
    got = core.cuda_test.select_blocks(q.reshape(-1), H, K.view(np.uint16).reshape(-1), Hkv, cap, D, n_tokens, bs, 0.1,
                                       16, 1)
    kmin, kmax = core.block_descriptors_from_keys(K, n_tokens, bs)
    ref = core.select_blocks(q, kmin, kmax, n_tokens, bs, 0.1, 16, 1, Hkv)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("H,Hkv,D,n_blocks", [(8, 2, 64, 300), (28, 4, 128, 20000), (8, 4, 256, 3000)])
def test_select_blocks_ties_go_to_lower_blocks(H, Hkv, D, n_blocks, select_kernels):
    bs = 16
    n_tokens = bs * n_blocks
    cap = n_tokens
    K = np.ones((Hkv, cap, D), np.float16)  # every block scores the same
    q = np.ones((H, D), np.float32)
    got = core.cuda_test.select_blocks(q.reshape(-1), H, K.view(np.uint16).reshape(-1), Hkv, cap, D, n_tokens, bs, 0.1,
                                       16, 1)
    n_sel = core.resa_select_count(n_tokens, bs, 0.1, 16, 1)
    expect = np.concatenate([np.arange(n_sel - 1), [n_blocks - 1]])
    np.testing.assert_array_equal(got, np.stack([expect] * Hkv))


@pytest.mark.parametrize("D,n_tokens", [(64, 30000), (256, 20000), (128, 33)])
def test_select_blocks_head_dims_match_cpu(D, n_tokens, select_kernels):
    # head_dim 64 / 256 and a few blocks: the scoring loop at its other sizes (cases added in run 10).
    rng = np.random.default_rng()
    H, Hkv, bs = 16, 2, 16
    cap = n_tokens + 16
    K = rng.standard_normal((Hkv, cap, D)).astype(np.float16)
    q = rng.standard_normal((H, D)).astype(np.float32)
    got = core.cuda_test.select_blocks(q.reshape(-1), H, K.view(np.uint16).reshape(-1), Hkv, cap, D, n_tokens, bs, 0.1,
                                       16, 1)
    kmin, kmax = core.block_descriptors_from_keys(K, n_tokens, bs)
    ref = core.select_blocks(q, kmin, kmax, n_tokens, bs, 0.1, 16, 1, Hkv)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("depths", [(20000, 5000, 40000, 300, 20000, 40000), (262144, 16, 100, 262144)])
def test_select_blocks_steps_on_one_scratch(depths, select_kernels):
    # The engine's layers and steps share one selection scratch: keys, the scoring warps' key
    # ranges and the block list of a deeper or different step are left in it and must not count.
    # One step has a zero query (every score +-0: few distinct keys, the boundary inside a tie).
    rng = np.random.default_rng()
    H, Hkv, D, bs = 28, 4, 128, 16
    cap = max(depths) + 16
    K = rng.standard_normal((Hkv, cap, D)).astype(np.float16)
    q = (rng.standard_normal((len(depths), H, D)) * rng.uniform(0.1, 10, (len(depths), 1, 1))).astype(np.float32)
    q[min(3, len(depths) - 1)] = 0.0
    got = core.cuda_test.select_blocks_steps(q.reshape(-1), H, K.view(np.uint16).reshape(-1), Hkv,
                                             cap, D, np.array(depths, np.int32), bs, 0.1, 16, 1)
    for s, n in enumerate(depths):
        kmin, kmax = core.block_descriptors_from_keys(K, n, bs)
        ref = core.select_blocks(q[s], kmin, kmax, n, bs, 0.1, 16, 1, Hkv)
        np.testing.assert_array_equal(got[s], ref, err_msg=f"step {s}, {n} tokens")


@pytest.mark.parametrize("ctas", [0, 7, 132, 300])
def test_argmax_first_of_ties(ctas):
    # 0: the one-CTA kernel; else the multi-CTA one (chunks merged by the last CTA to finish).
    x = np.random.default_rng().standard_normal(152064).astype(np.float32)
    x[[5000, 90000]] = 100.0
    assert core.cuda_test.argmax(x, ctas) == 5000
    x[[5000, 90000]] = 0.0
    x[[151999, 3]] = 101.0  # ties in different chunks
    assert core.cuda_test.argmax(x, ctas) == 3
    x[3] = np.nan
    assert core.cuda_test.argmax(x, ctas) == 151999
    assert core.cuda_test.argmax(np.full(1000, np.nan, np.float32), ctas) == 0


@pytest.mark.parametrize("n,k", [(152064, 40), (152064, 1), (152064, 1024), (49152, 333), (500, 1024), (3, 2)])
def test_top_candidates_match_a_full_sort(n, k):
    """The GPU's top-k for sampling: the k largest logits, ties at the k-th value to the lowest
    ids (numpy's full lexsort is the oracle), after the repetition penalty (llama.cpp's rule),
    and the vocabulary's sum(exp(x - max)) in double."""
    rng = np.random.default_rng()
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    if n > 1000:
        x[rng.integers(0, n, 50)] = np.sort(x)[-k] if k <= n else 0.0  # ties at the k-th value
        x[rng.integers(0, n, 5)] = -0.0
        x[rng.integers(0, n, 5)] = np.nan  # never a candidate (the host sampler's rule)
    pen = np.unique(rng.integers(0, n, min(n, 64))).astype(np.int32)
    for penalty, want_sum in ((1.0, False), (1.3, True), (0.8, True)):
        ids, vals, mx, s = core.cuda_test.top_candidates(x, k, pen, penalty, want_sum)
        z = x.copy()
        if penalty != 1.0:
            z[pen] = np.where(z[pen] > 0, z[pen] / np.float32(penalty), z[pen] * np.float32(penalty))
        order = np.lexsort((np.arange(n), -np.where(np.isnan(z), -np.inf, z)))[: min(k, n)]
        assert sorted(ids.tolist()) == sorted(order.tolist()), (penalty, k)
        np.testing.assert_array_equal(vals, z[ids])
        if want_sum:
            assert mx == np.nanmax(z)
            ref = np.nansum(np.exp(z.astype(np.float64) - np.nanmax(z)))
            assert abs(s - ref) <= 1e-12 * ref
