"""K-quant CPU kernels (Q4_K, Q5_K, Q6_K weights; Q8_K activations) on every ISA this CPU runs.

Oracles: gguf.quants.dequantize for the weight formats, a float64 dot product for vec_dot,
and the Q8_K definition (x ~ d*q, |q| <= 127, bsums = sums of 16) for the activation format.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

import pyresa._core as core

ISAS = core.supported_isas()
WEIGHT_TYPES = [T.Q4_K, T.Q5_K, T.Q6_K]
QK_K = 256
BLOCK_BYTES = {T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210, T.Q8_K: 292}
# Byte offsets of the fp16 fields in a block: (d, dmin) for Q4_K/Q5_K, d for Q6_K.
FP16_FIELDS = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}
U = 2.0**-24  # float32 unit roundoff


@pytest.fixture(params=ISAS)
def isa(request):
    core.set_cpu_isa(request.param)
    yield request.param
    core.set_cpu_isa("auto")


def random_fp16_bits(rng, size):
    """Uniformly random finite fp16 bit patterns: subnormals, zeros and large values included."""
    bits = rng.integers(0, 1 << 16, size=size, dtype=np.uint16)
    inf_nan = (bits & 0x7C00) == 0x7C00
    bits[inf_nan] &= np.uint16(0xBFFF)  # clear the top exponent bit
    return bits


def random_blocks(rng, qtype, n_blocks, fp16=None):
    """Random bytes for n_blocks blocks, with the fp16 fields replaced by `fp16(rng, size)`."""
    raw = rng.integers(0, 256, size=(n_blocks, BLOCK_BYTES[qtype]), dtype=np.uint8)
    fp16 = fp16 or random_fp16_bits
    for off in FP16_FIELDS[qtype]:
        raw[:, off:off + 2] = fp16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def moderate_fp16(rng, size):
    """Scales like real models': |d| in [1e-3, 5e-2], either sign."""
    mag = rng.uniform(1e-3, 5e-2, size=size) * rng.choice([-1.0, 1.0], size=size)
    return mag.astype(np.float16).view(np.uint16)


def parse_q8_K(data, n):
    blocks = np.frombuffer(data.tobytes(), dtype=np.uint8).reshape(n // QK_K, BLOCK_BYTES[T.Q8_K])
    d = blocks[:, 0:4].copy().view(np.float32).reshape(-1)
    qs = blocks[:, 4:260].copy().view(np.int8)
    bsums = blocks[:, 260:292].copy().view(np.int16)
    return d, qs, bsums


def activations(rng, n):
    x = rng.standard_normal(n).astype(np.float32)
    x[rng.integers(0, n, size=max(1, n // 500))] *= 20.0  # a few outliers, as real activations have
    return x


# ---- dequantization ----------------------------------------------------------------------

@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_dequantize_matches_gguf(isa, qtype):
    rng = np.random.default_rng(1000 + int(qtype))
    n_blocks = 1024
    data = random_blocks(rng, qtype, n_blocks)
    ours = core.dequantize_row(int(qtype), data, n_blocks * QK_K)
    ref = dequantize(data, qtype).reshape(-1).astype(np.float32)
    # Bit for bit: gguf computes (d*sc)*q - dmin*m in float32 with two roundings, and so do we.
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_dequantize_extreme_blocks(isa, qtype):
    """All-ones and all-zero quant bytes (largest and smallest q, scales, mins)."""
    for fill in (0x00, 0xFF, 0x80, 0x7F):
        raw = np.full((4, BLOCK_BYTES[qtype]), fill, dtype=np.uint8)
        for off in FP16_FIELDS[qtype]:
            raw[:, off:off + 2] = np.array([0.5, -2.0, 65504.0, 6e-8], np.float16).view(np.uint8).reshape(4, 2)
        data = raw.reshape(-1)
        ours = core.dequantize_row(int(qtype), data, 4 * QK_K)
        ref = dequantize(data, qtype).reshape(-1).astype(np.float32)
        np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


# ---- Q8_K activations ----------------------------------------------------------------------

@pytest.mark.parametrize("n", [256, 3584, 18944])
def test_q8_K_quantize_roundtrip(isa, n):
    rng = np.random.default_rng(n)
    x = activations(rng, n)
    x[:QK_K] *= 1e-30  # a block of tiny values
    if n > QK_K:
        x[QK_K:2 * QK_K] = 0.0  # an all-zero block
    data = core.quantize_row(int(T.Q8_K), x)
    assert data.size == core.row_size(int(T.Q8_K), n)
    d, qs, bsums = parse_q8_K(data, n)
    xb = x.reshape(-1, QK_K)
    q = qs.astype(np.int64)

    assert np.all(np.abs(q) <= 127)
    np.testing.assert_array_equal(bsums, q.reshape(-1, 16, 16).sum(-1))
    # ggml's sign convention: the value of largest magnitude is quantized to -127, so d has
    # the opposite sign of that value and |d| = max|x| / 127.
    amax = np.abs(xb).max(-1)
    nz = amax > 0
    first = np.abs(xb).argmax(-1)
    vmax = xb[np.arange(len(xb)), first]
    assert np.all(q[nz, first[nz]] == -127)
    np.testing.assert_allclose(d[nz], -vmax[nz] / 127, rtol=4 * U)
    assert np.all(d[~nz] == 0) and np.all(q[~nz] == 0)
    # Recovery: |x - d*q| <= |d|/2, plus float32 rounding of iscale*x and of d = 1/iscale
    # (a few ulps of 127 in units of q).
    err = np.abs(xb.astype(np.float64) - d[:, None].astype(np.float64) * q)
    assert np.all(err <= np.abs(d[:, None]) * (0.5 + 1e-4) + 1e-45)

    back = core.dequantize_row(int(T.Q8_K), data, n)
    np.testing.assert_array_equal(back, (d[:, None] * qs.astype(np.float32)).reshape(-1))


# ---- dot products ------------------------------------------------------------------------

def min_terms(qtype, data):
    """Per element dmin*m (0 for Q6_K): gguf's dequantization of the blocks with d set to 0."""
    if qtype == T.Q6_K:
        return 0.0
    raw = data.reshape(-1, BLOCK_BYTES[qtype]).copy()
    raw[:, 0:2] = 0
    return -dequantize(raw.reshape(-1), qtype).reshape(-1).astype(np.float64)


def dot_bounds(qtype, data, x, act):
    """Reference values and error bounds for vec_dot(weights, x).

    w  : gguf-dequantized weights (float64), xq = d_b*q: the Q8_K activations as dequantized.
    The kernel computes sum(w*xq) exactly in integers per sub-block, then scales in float32:
    its float error is at most about (n_blocks + 8) * u * S, S = sum((|w| + 2|dmin*m|) * |xq|)
    (every float32 intermediate is bounded by S; recursive summation over n_blocks terms).
    Against the exact x, activation quantization adds at most sum_b |d_b|/2 * sum_{i in b} |w_i|.
    """
    n = x.size
    w = dequantize(data, qtype).reshape(-1).astype(np.float64)
    d, qs, _ = parse_q8_K(act, n)
    xq = (d[:, None].astype(np.float64) * qs).reshape(-1)
    mins = np.abs(min_terms(qtype, data))
    S = np.sum((np.abs(w) + 2 * mins) * np.abs(xq))
    float_tol = (n // QK_K + 8) * U * S + 1e-30
    quant_tol = np.sum(np.abs(d).astype(np.float64) / 2 * np.abs(w).reshape(-1, QK_K).sum(-1))
    return w @ x.astype(np.float64), w @ xq, quant_tol, float_tol


@pytest.mark.parametrize("n", [256, 3584, 18944])
@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_vec_dot_matches_float64(isa, qtype, n):
    rng = np.random.default_rng(7 * n + int(qtype))
    for trial in range(4):
        data = random_blocks(rng, qtype, n // QK_K, fp16=moderate_fp16)
        x = activations(rng, n)
        act = core.quantize_row(int(T.Q8_K), x)
        got = core.vec_dot(int(qtype), data, x)
        exact, with_xq, quant_tol, float_tol = dot_bounds(qtype, data, x, act)
        # Integer parts exact: only float32 scaling error against the quantized activations.
        assert abs(got - with_xq) <= float_tol, (trial, got, with_xq, float_tol)
        # Against the float64 dot with the original x: plus activation quantization error, at
        # worst sum_b |d_b|/2 * sum |w| ...
        assert abs(got - exact) <= quant_tol + float_tol, (trial, got, exact, quant_tol)
        # ... and typically far less: rounding errors are spread evenly over [-d/2, d/2], so
        # their weighted sum has standard deviation sigma = sqrt(sum w^2 d_b^2 / 12). Fixed
        # seeds make this deterministic; 6 sigma leaves no room for flakiness.
        d, _, _ = parse_q8_K(act, n)
        w = dequantize(data, qtype).reshape(-1, QK_K).astype(np.float64)
        sigma = np.sqrt(np.sum((w**2).sum(-1) * d.astype(np.float64) ** 2 / 12))
        assert abs(got - exact) <= 6 * sigma + float_tol, (trial, got, exact, sigma)


@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_vec_dot_extremes_do_not_overflow(isa, qtype):
    """Largest quants, scales and activations: the int16 stages (maddubs) must not saturate."""
    n = 2048
    for fill in (0xFF, 0x80, 0x7F, 0x00):
        raw = np.full((n // QK_K, BLOCK_BYTES[qtype]), fill, dtype=np.uint8)
        for off in FP16_FIELDS[qtype]:
            raw[:, off:off + 2] = np.array([0.25], np.float16).view(np.uint8)
        data = raw.reshape(-1)
        for x in (np.ones(n, np.float32), -np.ones(n, np.float32),
                  np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(np.float32)):
            act = core.quantize_row(int(T.Q8_K), x)
            got = core.vec_dot(int(qtype), data, x)
            exact, with_xq, quant_tol, float_tol = dot_bounds(qtype, data, x, act)
            assert abs(got - with_xq) <= float_tol, (fill, got, with_xq)


# ---- the ISAs agree -------------------------------------------------------------------------

@pytest.mark.skipif(len(ISAS) < 2, reason="only one ISA on this CPU")
@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_isas_agree(qtype):
    rng = np.random.default_rng(99 + int(qtype))
    n = 18944
    data = random_blocks(rng, qtype, n // QK_K, fp16=moderate_fp16)
    raw = random_blocks(rng, qtype, n // QK_K)
    x = activations(rng, n)
    results = {}
    try:
        for isa in ISAS:
            core.set_cpu_isa(isa)
            results[isa] = (core.dequantize_row(int(qtype), raw, n), core.quantize_row(int(T.Q8_K), x),
                            core.vec_dot(int(qtype), data, x))
    finally:
        core.set_cpu_isa("auto")
    deq0, act0, dot0 = results["scalar"]
    _, _, _, float_tol = dot_bounds(qtype, data, x, act0)
    for isa, (deq, act, dot) in results.items():
        np.testing.assert_array_equal(deq.view(np.uint32), deq0.view(np.uint32), err_msg=isa)
        np.testing.assert_array_equal(act, act0, err_msg=isa)  # Q8_K bytes identical
        assert abs(dot - dot0) <= 2 * float_tol, (isa, dot, dot0)


# ---- ggml itself, where llama-cpp-python installed its CPU library ---------------------------

def _ggml_cpu():
    import ctypes
    import sysconfig
    from pathlib import Path

    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        lib = Path(base) / "lib"
        if (lib / "libggml-cpu.so").exists() and (lib / "libggml-base.so").exists():
            ctypes.CDLL(str(lib / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
            cpu = ctypes.CDLL(str(lib / "libggml-cpu.so"))

            class Traits(ctypes.Structure):  # struct ggml_type_traits_cpu (ggml-cpu.h)
                _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                            ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]

            cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(Traits)
            cpu.ggml_cpu_init()
            from_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
            vec_dot = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                       ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)

            def quantize_q8_K(x):
                out = np.zeros(x.size // QK_K * BLOCK_BYTES[T.Q8_K], np.uint8)
                from_float(cpu.ggml_get_type_traits_cpu(int(T.Q8_K)).contents.from_float)(
                    x.ctypes.data, out.ctypes.data, x.size)
                return out

            def dot(qtype, weights, act, n):
                s = ctypes.c_float()
                vec_dot(cpu.ggml_get_type_traits_cpu(int(qtype)).contents.vec_dot)(
                    n, ctypes.addressof(s), 0, weights.ctypes.data, 0, act.ctypes.data, 0, 1)
                return s.value

            return quantize_q8_K, dot
    return None


GGML = _ggml_cpu()


@pytest.mark.skipif(GGML is None, reason="ggml's CPU library (llama-cpp-python) not installed")
@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_matches_ggml(isa, qtype):
    """Q8_K bytes identical to ggml's quantizer; vec_dot equal to ggml's within float rounding."""
    ggml_quantize, ggml_dot = GGML
    rng = np.random.default_rng(5 + int(qtype))
    for n in (256, 3584, 18944):
        x = activations(rng, n)
        act = core.quantize_row(int(T.Q8_K), x)
        np.testing.assert_array_equal(act, ggml_quantize(x))
        data = random_blocks(rng, qtype, n // QK_K, fp16=moderate_fp16)
        _, _, _, float_tol = dot_bounds(qtype, data, x, act)
        assert abs(core.vec_dot(int(qtype), data, x) - ggml_dot(qtype, data, act, n)) <= 2 * float_tol
