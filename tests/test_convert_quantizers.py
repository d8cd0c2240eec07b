"""Native weight quantizers against two independent oracles: gguf-py (byte-exact for the types
it can quantize; its dequantizer for all) and ggml's own quantizer from llama-cpp-python's
libggml-base (the quality bar for the K-quants)."""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from pyresa import _core

ALL = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
GGUF_PY_CAN_QUANTIZE = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
K_QUANTS = [T.Q4_K, T.Q5_K, T.Q6_K]
# Relative RMS error bound on Gaussian weights (measured values are ~70-90% of these).
REL_RMSE = {T.F32: 0, T.F16: 4e-4, T.BF16: 3e-3, T.Q8_0: 7e-3, T.Q6_K: 2.2e-2, T.Q5_1: 4.5e-2, T.Q5_0: 5e-2,
            T.Q5_K: 4.2e-2, T.Q4_1: 9e-2, T.Q4_0: 1e-1, T.Q4_K: 8.2e-2}


def rel_rmse(y, x):
    return float(np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x ** 2)))


def weights(kind: str, rows=64, cols=1024, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        return (0.02 * rng.standard_normal((rows, cols))).astype(np.float32)
    if kind == "laplace":
        return rng.laplace(scale=0.01, size=(rows, cols)).astype(np.float32)
    if kind == "shifted":
        return (0.5 + 0.1 * rng.standard_normal((rows, cols))).astype(np.float32)
    if kind == "outliers":
        x = 0.02 * rng.standard_normal((rows, cols))
        x[rng.random((rows, cols)) < 0.002] *= 50
        return x.astype(np.float32)
    raise ValueError(kind)


@pytest.fixture(scope="module")
def ggml():
    import llama_cpp
    path = os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so")
    if not os.path.exists(path):
        pytest.skip(f"no libggml-base.so in {os.path.dirname(path)}")
    lib = ctypes.CDLL(path)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]

    def quantize(t: T, x: np.ndarray) -> np.ndarray:
        out = np.zeros((x.shape[0], _core.row_size(int(t), x.shape[1])), np.uint8)
        lib.ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
        return out
    return quantize


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
def test_can_quantize_and_shape(t):
    assert _core.can_quantize(int(t))
    x = weights("gauss", rows=3, cols=512)
    q = _core.quantize_matrix(int(t), x)
    assert q.dtype == np.uint8 and q.shape == (3, _core.row_size(int(t), 512))


@pytest.mark.parametrize("kind", ["gauss", "laplace", "shifted", "outliers"])
@pytest.mark.parametrize("t", GGUF_PY_CAN_QUANTIZE, ids=lambda t: t.name)
def test_bytes_equal_gguf_py(t, kind):
    x = weights(kind)
    ours = _core.quantize_matrix(int(t), x)
    ref = np.ascontiguousarray(quants.quantize(x, t)).view(np.uint8).reshape(ours.shape)
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
def test_dequantized_error_within_type_bound(t):
    x = weights("gauss", rows=128, cols=2048)
    y = quants.dequantize(_core.quantize_matrix(int(t), x), t).reshape(x.shape)
    assert rel_rmse(y, x) <= REL_RMSE[t]


@pytest.mark.parametrize("kind", ["gauss", "laplace", "shifted", "outliers"])
@pytest.mark.parametrize("t", K_QUANTS + [T.Q4_0, T.Q8_0], ids=lambda t: t.name)
def test_error_matches_ggml_quality(ggml, t, kind):
    """Our K-quant scale search is our own code: its error must be within 1.5% of ggml's."""
    x = weights(kind, rows=128, cols=2048, seed=3)
    ours = rel_rmse(quants.dequantize(_core.quantize_matrix(int(t), x), t).reshape(x.shape), x)
    theirs = rel_rmse(quants.dequantize(ggml(t, x), t).reshape(x.shape), x)
    assert ours <= theirs * 1.015, (ours, theirs)


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
def test_edge_rows(t):
    """Zero rows, constant rows, one spike, tiny (subnormal-scale) values: finite and close."""
    n = 512
    rows = np.stack([
        np.zeros(n), np.full(n, 0.25), np.full(n, -3.0),
        np.where(np.arange(n) == 77, 5.0, 0.0),
        np.linspace(-1, 1, n),
        1e-6 * np.sin(np.arange(n)),
    ]).astype(np.float32)
    y = quants.dequantize(_core.quantize_matrix(int(t), rows), t).reshape(rows.shape)
    assert np.isfinite(y).all()
    assert np.array_equal(y[0], rows[0])  # zeros stay exactly zero
    tol = {T.Q4_0: 0.15, T.Q4_1: 0.08, T.Q4_K: 0.08, T.Q5_0: 0.07, T.Q5_1: 0.04, T.Q5_K: 0.04}.get(t, 0.02)
    for i in (1, 2, 4):  # constant and smooth rows: small absolute error relative to the range
        assert np.max(np.abs(y[i] - rows[i])) <= tol * np.max(np.abs(rows[i])) + 1e-6, (i, t.name)
    assert abs(y[3, 77] - 5.0) <= 0.05 * 5.0  # a lone spike survives (it sets the scale)


def test_threads_do_not_change_bytes():
    x = weights("laplace", rows=300, cols=4096, seed=5)
    for t in (T.Q4_K, T.Q6_K, T.Q8_0):
        assert np.array_equal(_core.quantize_matrix(int(t), x, 1), _core.quantize_matrix(int(t), x, 2))


def test_bad_row_length_is_an_error():
    with pytest.raises(ValueError, match="multiple"):
        _core.quantize_matrix(int(T.Q4_K), np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError):
        _core.quantize_matrix(int(T.Q2_K), np.zeros((2, 256), np.float32))  # not a weight type we write
    assert not _core.can_quantize(int(T.Q2_K))
