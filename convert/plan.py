"""A conversion as data: the metadata to write and, per output tensor, where its rows come from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import gguf
import numpy as np


@dataclass
class TensorJob:
    name: str  # GGUF tensor name
    shape: tuple[int, ...]  # numpy order, rows first (GGUF stores it reversed)
    read_rows: Callable[[int, int], np.ndarray]  # rows [r0, r1) as float32 (r1 - r0, row_elements)
    where: str  # file and source tensor, for error messages
    ggml_type: Optional[gguf.GGMLQuantizationType] = None  # decided by the recipe
    # For GGUF input already in the target type: (file, offset, nbytes) to copy as they are.
    raw: Optional[tuple] = None
    source_type: Optional[gguf.GGMLQuantizationType] = None

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1

    @property
    def row_elements(self) -> int:
        return int(self.shape[-1])


@dataclass
class ConversionPlan:
    arch: str  # GGUF architecture name
    n_layer: int
    write_metadata: Callable[[gguf.GGUFWriter], None]  # everything but general.file_type
    tensors: list[TensorJob] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
