"""Which ggml type each tensor gets, for each --outtype.

* Vectors (norms, biases, rope_freqs) are always F32: they are tiny and used in float math.
* f32 / f16 / bf16 and the single-type outtypes (q8_0, q4_0, q4_1, q5_0, q4_k, q5_k, q6_k) give
  every matrix that type.
* The mixtures q4_k_m / q5_k_m follow llama.cpp's Q4_K_M / Q5_K_M: Q4_K (Q5_K) everywhere, except
  - the output projection at Q6_K (with tied embeddings, token_embd plays that role and gets it);
  - attn_v and ffn_down at Q6_K in the layers that matter most: the first eighth, the last
    eighth, and every third layer in between (layer i with i < n/8, i >= 7n/8, or
    (i - n/8) % 3 == 2, integer division).
* K-quants need rows that are a multiple of 256; a matrix whose rows are not falls back to the
  32-block type of about the same size: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0. A 32-block type
  whose rows are not a multiple of 32 falls back to F16.
"""

from __future__ import annotations

import re

from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType as F

OUTTYPES: dict[str, tuple[T, F]] = {
    "f32": (T.F32, F.ALL_F32),
    "f16": (T.F16, F.MOSTLY_F16),
    "bf16": (T.BF16, F.MOSTLY_BF16),
    "q8_0": (T.Q8_0, F.MOSTLY_Q8_0),
    "q4_0": (T.Q4_0, F.MOSTLY_Q4_0),
    "q4_1": (T.Q4_1, F.MOSTLY_Q4_1),
    "q5_0": (T.Q5_0, F.MOSTLY_Q5_0),
    "q4_k": (T.Q4_K, F.MOSTLY_Q4_K_S),
    "q5_k": (T.Q5_K, F.MOSTLY_Q5_K_S),
    "q6_k": (T.Q6_K, F.MOSTLY_Q6_K),
    "q4_k_m": (T.Q4_K, F.MOSTLY_Q4_K_M),
    "q5_k_m": (T.Q5_K, F.MOSTLY_Q5_K_M),
}
MIXTURES = {"q4_k_m", "q5_k_m"}
FLOAT_TYPES = {T.F32, T.F16, T.BF16}
_K_FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}
_LAYER = re.compile(r"^blk\.(\d+)\.")


def more_bits(i: int, n: int) -> bool:
    """The layers llama.cpp's _M mixtures give more bits: first and last eighth, every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def fits(t: T, row_elements: int) -> bool:
    block = {T.F32: 1, T.F16: 1, T.BF16: 1}.get(t, 256 if t in _K_FALLBACK else 32)
    return row_elements % block == 0


def tensor_type(outtype: str, name: str, shape: tuple[int, ...], n_layer: int, has_output: bool) -> T:
    """The ggml type of tensor `name` (numpy-order shape: rows first) for `outtype`."""
    if outtype not in OUTTYPES:
        raise ValueError(f"unknown outtype {outtype!r}; choose from {', '.join(OUTTYPES)}")
    if len(shape) < 2 or name.endswith(".bias") or name.startswith("rope_freqs"):
        return T.F32
    t = OUTTYPES[outtype][0]
    if outtype in MIXTURES:
        is_output = name == "output.weight" or (not has_output and name == "token_embd.weight")
        m = _LAYER.match(name)
        if is_output:
            t = T.Q6_K
        elif m and (".attn_v." in name or ".ffn_down." in name) and more_bits(int(m.group(1)), n_layer):
            t = T.Q6_K
    row = shape[-1]
    if not fits(t, row):
        t = _K_FALLBACK.get(t, T.F16)
        if not fits(t, row):
            t = T.F16
    return t
