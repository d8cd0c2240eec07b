"""Legacy ggml formats (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the float helpers,
on every CPU kernel set this machine runs.

Oracles: gguf's own numpy (de)quantizers (`gguf.quants`), written independently of ours, and
float64 arithmetic. The ISAs are also checked against each other.

Error bound of vec_dot, stated once (`dot_error_bound`). The weight row w is exact (what gguf
dequantizes). The activation x is quantized in blocks b with scale d_b (Q8_0 / Q8_1), which
moves each x_i by at most d_b / 2 (checked by the quantizer tests). For the formats with a
minimum (Q4_1, Q5_1) the kernel uses Q8_1's s_b = fp16(d_b * sum q), one fp16 rounding.
The kernel's float arithmetic adds at most (n_blocks + 8) roundings of 2^-24 to a sum of
block terms bounded by A = sum_i (|w_i| + |m_b|) (|x_i| + d_b) + sum_b |m_b s_b|. So

    |vec_dot - w . x| <=  sum_b (d_b / 2) * sum_{i in b} |w_i|          activation rounding
                        + sum_b |m_b| * (2^-10 |s_b| + 2^-24)           s_b in fp16 (*_1 only)
                        + (n_blocks + 8) * 2^-23 * A                     float rounding (x2 slack)

For float weights (activation kept in F32) only rounding remains, (n / 4 + 16) * 2^-23 *
sum_i |w_i x_i|: n products summed in chains no deeper than n / 4 plus a reduction tree.
The ISAs must agree within twice that bound (their activation bytes are identical).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants as gq

from pyresa import _core

ISAS = _core.supported_isas()
MODEL = Path(os.environ.get("PYRESA_CACHE", Path.home() / ".cache" / "pyresa")) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

FLOAT_TYPES = [QT.F32, QT.F16, QT.BF16]
QUANT_TYPES = [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0]
WEIGHT_TYPES = FLOAT_TYPES + QUANT_TYPES
# Byte offsets of the fp16 scale fields (d, and m or s) inside a block.
SCALE_FIELDS = {QT.Q4_0: (0,), QT.Q4_1: (0, 2), QT.Q5_0: (0,), QT.Q5_1: (0, 2), QT.Q8_0: (0,), QT.Q8_1: (0, 2)}
HAS_MIN = {QT.Q4_1, QT.Q5_1}
ACT_TYPE = {QT.F32: QT.F32, QT.F16: QT.F32, QT.BF16: QT.F32, QT.Q4_0: QT.Q8_0, QT.Q4_1: QT.Q8_1,
            QT.Q5_0: QT.Q8_0, QT.Q5_1: QT.Q8_1, QT.Q8_0: QT.Q8_0}


def block_size(t):
    return 1 if t in FLOAT_TYPES else 32


def type_size(t):
    # From our own table: gguf's GGML_QUANT_SIZES still lists Q8_1 with float d and s (40 bytes);
    # ggml's block_q8_1 has been two halves (36 bytes) for a long time.
    return _core.row_size(int(t), block_size(t))


@pytest.fixture(params=ISAS)
def isa(request):
    _core.set_cpu_isa(request.param)
    yield request.param
    _core.set_cpu_isa("auto")


# ---- data ------------------------------------------------------------------------------

def finite_fp16_bits(rng, shape):
    bits = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    bad = (bits & 0x7C00) == 0x7C00
    bits[bad] &= 0xBFFF  # clear the top exponent bit: finite
    return bits


def random_rows(t, rows, n, rng, realistic=False):
    """Random weight rows of type t as uint8 (rows, row bytes). Quantized blocks get random
    quant bits; their fp16 scales are any finite half (realistic=False) or weight-like ones."""
    if t == QT.F32:
        x = rng.standard_normal((rows, n)).astype(np.float32) * 0.05
        if not realistic:
            x = rng.integers(0, 1 << 32, size=(rows, n), dtype=np.uint32).view(np.float32)
        return x.view(np.uint8)
    if t in (QT.F16, QT.BF16):
        if realistic:
            x = rng.standard_normal((rows, n)).astype(np.float32) * 0.05
            return gq.quantize(x, t).view(np.uint8).reshape(rows, -1)
        return rng.integers(0, 1 << 16, size=(rows, n), dtype=np.uint16).view(np.uint8)
    ts = type_size(t)
    nb = n // 32
    data = rng.integers(0, 256, size=(rows * nb, ts), dtype=np.uint8)
    for k, off in enumerate(SCALE_FIELDS[t]):
        if realistic:
            v = (rng.uniform(0.3, 1.0, rows * nb) * (0.02 if k == 0 else -0.2)).astype(np.float16)
        else:
            v = finite_fp16_bits(rng, rows * nb).view(np.float16)
        data[:, off:off + 2] = v.view(np.uint8).reshape(-1, 2)
    return data.reshape(rows, nb * ts)


def gguf_dequant(t, row_bytes):
    out = gq.dequantize(np.ascontiguousarray(row_bytes), t)
    return np.asarray(out, dtype=np.float32).reshape(row_bytes.shape[0], -1)


def our_dequant(t, row_bytes):
    rows = row_bytes.shape[0]
    n = row_bytes.shape[1] // type_size(t) * block_size(t)
    flat = _core.dequantize_row(int(t), np.ascontiguousarray(row_bytes).reshape(-1), rows * n)
    return flat.reshape(rows, n)


def block_fields(t, row_bytes):
    """Per-block fp16 fields of a row as float64 arrays: d, and m or s (else None)."""
    blocks = np.ascontiguousarray(row_bytes).reshape(-1, type_size(t))
    d = blocks[:, 0:2].copy().view(np.float16).ravel().astype(np.float64)
    m = blocks[:, 2:4].copy().view(np.float16).ravel().astype(np.float64) if t in HAS_MIN or t == QT.Q8_1 else None
    return d, m


def q8_1_as_q8_0(row_bytes):
    """Q8_1 blocks (d, s, qs) with s dropped are Q8_0 blocks, which gguf can dequantize."""
    b = np.ascontiguousarray(row_bytes).reshape(-1, 36)
    return np.concatenate([b[:, :2], b[:, 4:]], axis=1)


def assert_dequant_matches(t, ours, ref, data):
    if t in HAS_MIN:
        # x = d*q + m: a kernel may fuse the multiply-add (one rounding instead of two), which
        # moves the result by at most an ulp of d*q plus one of x: 2^-23 (|x| + |m|) covers both.
        _, m = block_fields(t, data)
        m = np.repeat(m, 32).reshape(ours.shape)
        diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
        assert np.all(diff <= 2.0 ** -23 * (np.abs(ref.astype(np.float64)) + np.abs(m))), diff.max()
    else:
        np.testing.assert_array_equal(ours, ref)


# ---- dequantization ----------------------------------------------------------------------

@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_dequantize_random_blocks(isa, t):
    rng = np.random.default_rng(1000 + int(t))
    for rows, n in [(1, 32), (3, 96), (8, 160), (16, 1024)]:
        data = random_rows(t, rows, n, rng)
        assert_dequant_matches(t, our_dequant(t, data), gguf_dequant(t, data), data)


@pytest.mark.parametrize("n", [1, 7, 8, 15, 16, 17, 33, 100])
@pytest.mark.parametrize("t", FLOAT_TYPES, ids=lambda t: t.name)
def test_dequantize_float_tails(isa, t, n):
    rng = np.random.default_rng(n)
    data = random_rows(t, 1, n, rng)
    np.testing.assert_array_equal(our_dequant(t, data), gguf_dequant(t, data))


def test_dequantize_q8_1(isa):
    rng = np.random.default_rng(7)
    data = random_rows(QT.Q8_1, 4, 256, rng)
    np.testing.assert_array_equal(our_dequant(QT.Q8_1, data).ravel(), gguf_dequant(QT.Q8_0, q8_1_as_q8_0(data)).ravel())


@pytest.mark.parametrize("t", [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.BF16], ids=lambda t: t.name)
def test_dequantize_gguf_quantized_weights(isa, t):
    # Weights as gguf's own quantizer writes them (the real distribution of quant values).
    rng = np.random.default_rng(int(t))
    w = rng.standard_normal((32, 576)).astype(np.float32) * 0.05
    data = gq.quantize(w, t).view(np.uint8).reshape(32, -1)
    assert_dequant_matches(t, our_dequant(t, data), gguf_dequant(t, data), data)


@pytest.fixture(scope="module")
def model_tensors():
    if not MODEL.exists():
        pytest.skip(f"default model not downloaded ({MODEL})")
    from gguf import GGUFReader

    return GGUFReader(str(MODEL)).tensors


def test_dequantize_model_tensors(isa, model_tensors):
    seen = set()
    for tensor in model_tensors:
        t = QT(tensor.tensor_type)
        data = np.asarray(tensor.data)
        if t == QT.F32:
            data = data.reshape(-1, tensor.shape[0]).view(np.uint8)
        # token_embd.weight (Q8_0, 49152 rows) and the first rows of every other tensor.
        rows = data if tensor.name == "token_embd.weight" else data[:64]
        assert_dequant_matches(t, our_dequant(t, rows), gguf_dequant(t, rows), rows)
        seen.add(t)
    assert {QT.Q4_1, QT.Q8_0, QT.F32} <= seen


# ---- activation quantizers ----------------------------------------------------------------

def activation_rows(rng, rows, n):
    """Rows whose blocks span many magnitudes, plus corner cases: a zero block, a block with one
    non-zero, exact ties x / d = k + 1/2."""
    scale = 10.0 ** rng.uniform(-3, 3, size=(rows, n // 32, 1))
    x = (rng.standard_normal((rows, n // 32, 32)) * scale).astype(np.float32)
    x[0, 0] = 0.0
    x[0, 1] = 0.0
    x[0, 1, 5] = -3.0
    x[0, 2] = np.arange(32) - 15.5  # amax 16.5 -> d = 16.5/127 (rounded); ties are likely
    x[0, 3] = np.float32(127.0) * np.linspace(-1, 1, 32).astype(np.float32)
    x[0, 3, 0] = 127.0
    return x.reshape(rows, n)


@pytest.mark.parametrize("t", [QT.Q8_0, QT.Q8_1], ids=lambda t: t.name)
def test_activation_quantizer_error(isa, t):
    rng = np.random.default_rng(11)
    x = activation_rows(rng, 8, 1024)
    for row in x:
        q = _core.quantize_row(int(t), row)
        assert q.size == _core.row_size(int(t), row.size)
        blocks = q.reshape(-1, type_size(t))
        as_q8_0 = q8_1_as_q8_0(q) if t == QT.Q8_1 else blocks
        xq = gq.dequantize(as_q8_0, QT.Q8_0).reshape(-1).astype(np.float64)
        d, s = block_fields(t, q)
        qs = as_q8_0[:, 2:].view(np.int8).astype(np.int64)
        # ggml's rule rounds x * 127/amax (the unrounded scale), then stores d in fp16:
        # |x - d_stored q| <= d_stored/2 + 127 |d - d_stored| (the fp16 rounding of d, large
        # for subnormal d), plus slack for the float products.
        err = np.abs(row.astype(np.float64) - xq).reshape(-1, 32)
        d_exact = np.abs(row.astype(np.float64)).reshape(-1, 32).max(1) / 127
        bound = d * (0.5 + 2.0 ** -16) + 127 * np.abs(d_exact - d) * (1 + 2.0 ** -10)
        assert np.all(err <= bound[:, None] + 1e-30), (err - bound[:, None]).max()
        assert np.all(np.abs(qs) <= 127)
        # d = amax / 127 in fp16: the same scale gguf's quantizer stores.
        ref = gq.quantize(row.reshape(1, -1), QT.Q8_0).reshape(-1, 34)
        np.testing.assert_array_equal(as_q8_0[:, :2], ref[:, :2])
        assert np.all(np.abs(qs - ref[:, 2:].view(np.int8)) <= 1)
        if t == QT.Q8_1:  # s = d * sum(qs) with ggml's unrounded d = amax / 127 (fp32), then fp16
            d32 = (np.abs(row).reshape(-1, 32).max(1) / np.float32(127)).astype(np.float32)
            expect = (d32 * qs.sum(axis=1).astype(np.float32)).astype(np.float16)
            np.testing.assert_array_equal(s.astype(np.float16), expect)


@pytest.mark.parametrize("n", [1, 5, 32, 33])
def test_f32_activation_is_a_copy(isa, n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    np.testing.assert_array_equal(_core.quantize_row(int(QT.F32), x).view(np.float32), x)


# ---- dot products ------------------------------------------------------------------------

def dot_error_bound(t, w_bytes, w, x):
    """The bound stated in the module docstring, for one row."""
    w = w.astype(np.float64)
    x64 = x.astype(np.float64)
    if t in FLOAT_TYPES:
        return (x.size / 4 + 16) * 2.0 ** -23 * np.sum(np.abs(w * x64))
    at = ACT_TYPE[t]
    act = _core.quantize_row(int(at), x)
    da, s = block_fields(at, act)
    _, m = block_fields(t, w_bytes)
    m = np.zeros_like(da) if m is None else m
    s = np.zeros_like(da) if s is None else s
    wb = np.abs(w).reshape(-1, 32)
    xb = np.abs(x64).reshape(-1, 32)
    quant = np.sum(da / 2 * wb.sum(axis=1)) * (1 + 2.0 ** -15)
    s_round = np.sum(np.abs(m) * (2.0 ** -10 * np.abs(s) + 2.0 ** -24))
    absdot = np.sum((wb + np.abs(m)[:, None]) * (xb + da[:, None])) + np.sum(np.abs(m * s))
    return quant + s_round + (da.size + 8) * 2.0 ** -23 * absdot


def check_dots(t, w_bytes, x, ref_w=None):
    ref_w = gguf_dequant(t, w_bytes) if ref_w is None else ref_w
    for r in range(w_bytes.shape[0]):
        got = _core.vec_dot(int(t), np.ascontiguousarray(w_bytes[r]), x)
        ref = float(np.dot(ref_w[r].astype(np.float64), x.astype(np.float64)))
        bound = dot_error_bound(t, w_bytes[r], ref_w[r], x)
        assert abs(got - ref) <= bound, (t.name, r, got, ref, bound)


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_vec_dot_random(isa, t):
    rng = np.random.default_rng(2000 + int(t))
    sizes = [1, 7, 17, 100, 576] if t in FLOAT_TYPES else []
    sizes += [32, 64, 96, 160, 224, 576, 1536, 4096]
    for n in sizes:
        w = random_rows(t, 6, n, rng, realistic=True)
        x = (rng.standard_normal(n) * rng.uniform(0.1, 10)).astype(np.float32)
        check_dots(t, w, x)


@pytest.mark.parametrize("t", [QT.Q4_1, QT.Q5_1], ids=lambda t: t.name)
def test_dot_with_min_is_the_block_formula(isa, t):
    # Given the activation bytes, the dot is sum_b d_w d_a (q_w . q_a) + m_b s_b with float
    # rounding only (~1e-6 relative), for even and odd block counts (a single tail block once
    # added d_w d_a to the m s sum on AVX-512: ~1e-3 relative).
    rng = np.random.default_rng(4000 + int(t))
    for n in (32, 64, 96, 160, 224, 576):
        w = random_rows(t, 3, n, rng, realistic=True)
        x = rng.standard_normal(n).astype(np.float32)
        act = _core.quantize_row(int(QT.Q8_1), x)
        da, s = block_fields(QT.Q8_1, act)
        qa = np.ascontiguousarray(act).reshape(-1, 36)[:, 4:].view(np.int8).astype(np.float64)
        ref_w = gguf_dequant(t, w)
        for r in range(w.shape[0]):
            dw, m = block_fields(t, w[r])
            qw = (ref_w[r].astype(np.float64).reshape(-1, 32) - m[:, None]) / np.where(dw == 0, 1, dw)[:, None]
            want = np.sum(dw * da * np.sum(np.round(qw) * qa, axis=1) + m * s)
            got = _core.vec_dot(int(t), np.ascontiguousarray(w[r]), x)
            scale = np.sum(np.abs(dw * da) * np.sum(np.abs(np.round(qw) * qa), axis=1) + np.abs(m * s))
            assert abs(got - want) <= 1e-6 * scale, (n, r, got, want)


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_vec_dot_rows_equals_vec_dot(isa, t):
    # The multi-row kernel (batched prefill, rectification) unpacks a weight row once for several
    # activation rows: each result must be vec_dot's bit for bit (so a batch computes what decode
    # steps do) and within the gguf-oracle bound. n_acts covers the groups of 4 and the 1-3 tails.
    rng = np.random.default_rng(3000 + int(t))
    for n in (32, 64, 96, 160, 576, 1536):
        w = random_rows(t, 2, n, rng, realistic=True)
        ref_w = gguf_dequant(t, w)
        for n_acts in (1, 2, 3, 4, 5, 9, 33):
            x = (rng.standard_normal((n_acts, n)) * rng.uniform(0.1, 10, (n_acts, 1))).astype(np.float32)
            for r in range(w.shape[0]):
                row = np.ascontiguousarray(w[r])
                got = _core.vec_dot_rows(int(t), row, x)
                one = np.array([_core.vec_dot(int(t), row, x[i]) for i in range(n_acts)], dtype=np.float32)
                np.testing.assert_array_equal(got, one)
                for i in range(n_acts):
                    ref = float(np.dot(ref_w[r].astype(np.float64), x[i].astype(np.float64)))
                    assert abs(got[i] - ref) <= dot_error_bound(t, w[r], ref_w[r], x[i])


@pytest.mark.parametrize("t", [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0], ids=lambda t: t.name)
def test_vec_dot_extreme_quants(isa, t):
    # Saturating patterns: all quants at their max/min with activations at +-127, so the
    # integer paths (8-bit products summed in 16 bits on AVX2) hit their extremes.
    n = 256
    for wbyte in (0x00, 0xFF, 0x80, 0x7F):
        w = random_rows(t, 1, n, np.random.default_rng(5), realistic=True)
        blocks = w.reshape(-1, type_size(t))
        blocks[:, 2 * len(SCALE_FIELDS[t]):] = wbyte
        alternating = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
        for x in (np.ones(n), -np.ones(n), alternating, -alternating):
            check_dots(t, w, x.astype(np.float32))


def test_vec_dot_model_rows(isa, model_tensors):
    rng = np.random.default_rng(3)
    for tensor in model_tensors:
        t = QT(tensor.tensor_type)
        if t == QT.F32 or not (tensor.name.startswith("blk.0.") or tensor.name == "token_embd.weight"):
            continue
        rows = np.asarray(tensor.data)[:16]
        n = rows.shape[1] // type_size(t) * 32
        x = rng.standard_normal(n).astype(np.float32)
        check_dots(t, rows, x)


# ---- no reads past the end of a row ---------------------------------------------------------

PROT_NONE = 0


@pytest.fixture(scope="module")
def guarded_page():
    """place(bytes) -> a uint8 array holding them, ending exactly where an unreadable page
    begins: a kernel that reads past the end of its row crashes the test run."""
    page = mmap.PAGESIZE
    mm = mmap.mmap(-1, 2 * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(ctypes.c_void_p(base + page), page, PROT_NONE) != 0:
        pytest.skip("mprotect failed")
    first = np.frombuffer(mm, dtype=np.uint8, count=page)

    def place(data):
        data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        out = first[page - data.size:]
        out[:] = data
        return out

    return place


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_no_read_past_row_end(isa, t, guarded_page):
    rng = np.random.default_rng(77)
    sizes = [1, 7, 17, 100, 576] if t in FLOAT_TYPES else [32, 64, 96, 128, 160, 224, 576]
    for n in sizes:
        w = guarded_page(random_rows(t, 1, n, rng, realistic=True))
        x = rng.standard_normal(n).astype(np.float32)
        ref = gguf_dequant(t, np.array(w).reshape(1, -1))[0]
        np.testing.assert_allclose(_core.dequantize_row(int(t), w, n), ref, rtol=1e-6, atol=1e-30)
        check_dots(t, np.array(w).reshape(1, -1), x)
        _core.vec_dot(int(t), w, x)  # the row itself at the page end (check_dots copies it)


def test_float_helpers_no_read_past_end(isa, helpers, guarded_page):
    assert helpers.shim_set_isa(isa.encode()) == 0
    rng = np.random.default_rng(78)
    for n in (1, 7, 15, 17, 33, 100):
        h = guarded_page(rng.standard_normal(n).astype(np.float16).view(np.uint16))
        a = rng.standard_normal(n).astype(np.float32)
        helpers.shim_dot_f32_f16(ptr(a), ptr(h), n)
        y = np.zeros(n, np.float32)
        helpers.shim_axpy_f16(ctypes.c_float(1.0), ptr(h), ptr(y), n)
        np.testing.assert_array_equal(y, h.view(np.float16).astype(np.float32))
        out = np.empty(n, np.float32)
        helpers.shim_fp16_to_fp32(ptr(h), ptr(out), n)
        f = guarded_page(a)
        got = np.empty(n, np.uint16)
        helpers.shim_fp32_to_fp16(ptr(f), ptr(got), n)
        np.testing.assert_array_equal(got, a.astype(np.float16).view(np.uint16))


# ---- the ISAs agree ------------------------------------------------------------------------

@pytest.mark.skipif(len(ISAS) < 2, reason="one kernel set on this CPU")
@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
def test_isas_agree(t):
    rng = np.random.default_rng(4000 + int(t))
    n = 1536 if t not in FLOAT_TYPES else 1000
    w = random_rows(t, 8, n, rng, realistic=True)
    x = activation_rows(rng, 1, n)[0] if n % 32 == 0 else rng.standard_normal(n).astype(np.float32)
    results = {}
    try:
        for name in ISAS:
            _core.set_cpu_isa(name)
            results[name] = (
                our_dequant(t, w),
                _core.quantize_row(int(ACT_TYPE[t]), x),
                np.array([_core.vec_dot(int(t), np.ascontiguousarray(r), x) for r in w]),
            )
    finally:
        _core.set_cpu_isa("auto")
    base_deq, base_act, base_dot = results[ISAS[0]]
    wf = gguf_dequant(t, w)
    for name in ISAS[1:]:
        deq, act, dot = results[name]
        assert_dequant_matches(t, deq, base_deq, w)
        np.testing.assert_array_equal(act, base_act)  # quantizers are bit-identical across ISAs
        for r in range(w.shape[0]):
            bound = dot_error_bound(t, w[r], wf[r], x)
            assert abs(dot[r] - base_dot[r]) <= 2 * bound, (name, r)


# ---- float helpers (not bound in _core: reached through a tiny C shim over the core library) ---

SHIM = r"""
#include <cstdint>
#include <string>
#include "backends/cpu/cpu_kernels.h"
using namespace pyresa::cpu;
extern "C" {
int shim_has_helpers() {
  const CpuKernels& k = cpu_kernels();
  return k.dot_f32_f16 && k.axpy_f16 && k.fp32_to_fp16_row && k.fp16_to_fp32_row;
}
int shim_set_isa(const char* isa) { try { set_cpu_isa(isa); return 0; } catch (...) { return -1; } }
float shim_dot_f32_f16(const float* a, const uint16_t* b, int n) { return cpu_kernels().dot_f32_f16(a, b, n); }
void shim_axpy_f16(float alpha, const uint16_t* x, float* y, int n) { cpu_kernels().axpy_f16(alpha, x, y, n); }
void shim_fp32_to_fp16(const float* s, uint16_t* d, int n) { cpu_kernels().fp32_to_fp16_row(s, d, n); }
void shim_fp16_to_fp32(const uint16_t* s, float* d, int n) { cpu_kernels().fp16_to_fp32_row(s, d, n); }
}
"""


@pytest.fixture(scope="module")
def helpers(tmp_path_factory):
    lib = Path(os.path.realpath(_core.__file__)).parent / "libpyresa_core.a"
    root = Path(__file__).resolve().parents[1]
    cxx = shutil.which("g++") or shutil.which("c++")
    if not lib.exists() or cxx is None:
        pytest.skip("needs the developer build's libpyresa_core.a and a C++ compiler")
    d = tmp_path_factory.mktemp("shim")
    (d / "shim.cpp").write_text(SHIM)
    so = d / "shim.so"
    subprocess.run([cxx, "-O1", "-std=c++17", "-shared", "-fPIC", f"-I{root / 'native'}", str(d / "shim.cpp"),
                    str(lib), "-o", str(so), "-lpthread"], check=True)
    h = ctypes.CDLL(str(so))
    P = ctypes.c_void_p
    h.shim_set_isa.argtypes = [ctypes.c_char_p]
    h.shim_dot_f32_f16.argtypes = [P, P, ctypes.c_int]
    h.shim_dot_f32_f16.restype = ctypes.c_float
    h.shim_axpy_f16.argtypes = [ctypes.c_float, P, P, ctypes.c_int]
    for f in (h.shim_fp32_to_fp16, h.shim_fp16_to_fp32):
        f.argtypes = [P, P, ctypes.c_int]
    return h


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def test_float_helpers(isa, helpers):
    assert helpers.shim_set_isa(isa.encode()) == 0
    assert helpers.shim_has_helpers(), f"{isa} table lacks float helpers"
    rng = np.random.default_rng(21)

    # fp16 -> fp32: every half bit pattern, exact (NaNs stay NaN).
    h = np.arange(1 << 16, dtype=np.uint16)
    out = np.empty(h.size, np.float32)
    helpers.shim_fp16_to_fp32(ptr(h), ptr(out), h.size)
    np.testing.assert_array_equal(out, h.view(np.float16).astype(np.float32))

    # fp32 -> fp16: round to nearest even, bit-exact with numpy, on odd lengths (tails),
    # halfway cases, subnormals, overflow, inf and nan.
    halves = h.view(np.float16).astype(np.float32)
    halves = halves[np.isfinite(halves)]
    ties = ((halves[:-1].astype(np.float64) + halves[1:]) / 2).astype(np.float32)
    specials = np.array([0.0, -0.0, 65504, 65519.99, 65520, 1e9, -1e9, np.inf, -np.inf, 2.0 ** -25,
                         2.0 ** -25 * 1.0001, 3 * 2.0 ** -26, 6e-8, 1e-10], np.float32)
    for x in (rng.standard_normal(1001).astype(np.float32) * 10.0 ** rng.uniform(-9, 6, 1001),
              ties, specials, rng.integers(0, 1 << 32, 4099, dtype=np.uint32).view(np.float32)):
        x = x.astype(np.float32)
        for n in {x.size, 1, 7, 9, min(x.size, 31)}:
            got = np.empty(n, np.uint16)
            helpers.shim_fp32_to_fp16(ptr(x), ptr(got), n)
            with np.errstate(over="ignore"):  # overflow to inf is one of the cases
                want = x[:n].astype(np.float16)
            nan = np.isnan(want)
            np.testing.assert_array_equal(got[~nan], want.view(np.uint16)[~nan])
            assert np.all(np.isnan(got.view(np.float16)[nan]))

    for n in (1, 7, 8, 31, 64, 65, 128, 1000):
        a = rng.standard_normal(n).astype(np.float32)
        b = (rng.standard_normal(n) * 0.1).astype(np.float16)
        bb = b.view(np.uint16).copy()
        got = helpers.shim_dot_f32_f16(ptr(a), ptr(bb), n)
        prod = a.astype(np.float64) * b.astype(np.float64)
        assert abs(got - prod.sum()) <= (n / 4 + 16) * 2.0 ** -23 * np.abs(prod).sum()

        y = rng.standard_normal(n).astype(np.float32)
        y0 = y.astype(np.float64)
        alpha = np.float32(rng.uniform(-2, 2))
        helpers.shim_axpy_f16(ctypes.c_float(alpha), ptr(bb), ptr(y), n)
        ref = y0 + np.float64(alpha) * b.astype(np.float64)
        assert np.all(np.abs(y - ref) <= 2.0 ** -23 * (np.abs(y0) + np.abs(alpha * b.astype(np.float64))))
