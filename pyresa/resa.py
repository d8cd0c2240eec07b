"""Rectified Sparse Attention settings (DESIGN.md): decode with block-sparse attention chosen
from per-block key min/max descriptors, and every `rectify_every` tokens re-run those tokens
densely to rewrite their KV cache. Defaults are the reference implementation's "resa_0.1_32"."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyresa.errors import InvalidRequestError

ATTENTION_MODES = ("dense", "sparse", "resa")
# "minmax": ReSA's rule (descriptor upper bounds). "oracle": each step computes every block's true
# attention mass and keeps the heaviest: it reads the whole cache (no speed-up, CPU only) and
# bounds what any selection rule can reach at the same ratio. For evaluation, not for serving.
BLOCK_SELECTIONS = ("minmax", "oracle")


@dataclass(frozen=True)
class ResaConfig:
    block_size: int = 16      # tokens per KV block
    ratio: float = 0.1        # share of blocks each decode step reads
    min_blocks: int = 16      # ... but at least this many (all of them in short contexts)
    local_blocks: int = 1     # the most recent blocks, always read
    rectify_every: int = 32   # f: dense rectification of every f sparse-decoded tokens
    selection: str = "minmax"  # see BLOCK_SELECTIONS

    def __post_init__(self):
        def bad(msg):
            raise InvalidRequestError(f"ResaConfig: {msg}")

        for name in ("block_size", "min_blocks", "local_blocks", "rectify_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                bad(f"{name} must be an integer, got {v!r}")
        if self.block_size < 1 or self.block_size > 4096:
            bad(f"block_size must be in [1, 4096], got {self.block_size}")
        if not isinstance(self.ratio, (int, float)) or math.isnan(self.ratio) or not 0 < self.ratio <= 1:
            bad(f"ratio must be in (0, 1], got {self.ratio!r}")
        if self.min_blocks < 1:
            bad(f"min_blocks must be >= 1, got {self.min_blocks}")
        if self.local_blocks < 0 or self.local_blocks > self.min_blocks:
            bad(f"local_blocks must be in [0, min_blocks={self.min_blocks}], got {self.local_blocks}")
        if self.rectify_every < 1:
            bad(f"rectify_every must be >= 1, got {self.rectify_every}")
        if self.selection not in BLOCK_SELECTIONS:
            bad(f"selection must be one of {', '.join(BLOCK_SELECTIONS)}, got {self.selection!r}")

    def n_selected(self, n_tokens: int) -> int:
        """Blocks a decode step reads at a context of n_tokens (the partial block counts)."""
        n_blocks = -(-n_tokens // self.block_size)
        return min(n_blocks, max(math.ceil(self.ratio * n_blocks), min(n_blocks, self.min_blocks)))


def check_mode(mode: str) -> str:
    if mode not in ATTENTION_MODES:
        raise InvalidRequestError(f"attention must be one of {', '.join(ATTENTION_MODES)}, got {mode!r}")
    return mode
