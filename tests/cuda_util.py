"""Shared by the CUDA tests: the skip marker (visible reason) and random inputs."""
import numpy as np
import pytest

import pyresa._core as core

HAVE_CUDA = bool(getattr(core, "cuda_built", False)) and core.cuda_available()
if not getattr(core, "cuda_built", False):
    REASON = "pyresa was built without the CUDA backend (PYRESA_CUDA=OFF or no nvcc)"
elif not HAVE_CUDA:
    REASON = "no CUDA device on this machine (the CUDA sources were compiled; kernels run on the GPU machine)"
else:
    REASON = ""
requires_cuda = pytest.mark.skipif(not HAVE_CUDA, reason=REASON)

# ggml type ids and block geometry
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q4_K, Q5_K, Q6_K, Q8_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15, 30
WEIGHT_TYPES = [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K]
NAMES = {F32: "F32", F16: "F16", BF16: "BF16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0", Q5_1: "Q5_1",
         Q8_0: "Q8_0", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K"}
BLOCK = {Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24), Q8_0: (32, 34),
         Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210)}
# byte offsets of fp16 scale fields in a block: (d, second) with second = m or dmin
SCALES = {Q4_0: (0,), Q4_1: (0, 2), Q5_0: (0,), Q5_1: (0, 2), Q8_0: (0,), Q4_K: (0, 2), Q5_K: (0, 2), Q6_K: (208,)}


def rel_err(out, ref):
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def random_weights(rng, t, rows, cols, realistic=True):
    """uint8 [rows, row bytes] of ggml type t."""
    if t == F32:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32).view(np.uint8)
    if t == F16:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float16).view(np.uint8)
    if t == BF16:
        x = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32).view(np.uint32)
        return (x >> 16).astype(np.uint16).view(np.uint8)
    per, size = BLOCK[t]
    nb = rows * cols // per
    data = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    for k, off in enumerate(SCALES[t]):
        if realistic:
            v = (rng.uniform(0.3, 1.0, nb) * (0.02 if k == 0 else (-0.2 if t in (Q4_1, Q5_1) else 0.01))).astype(np.float16)
        else:
            bits = rng.integers(0, 1 << 16, size=nb, dtype=np.uint16)
            bits[(bits & 0x7C00) == 0x7C00] &= 0xBFFF
            v = bits.view(np.float16)
        data[:, off:off + 2] = v.view(np.uint8).reshape(-1, 2)
    return data.reshape(rows, -1)
