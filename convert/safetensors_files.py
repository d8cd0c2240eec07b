"""Reading tensors from a (sharded) safetensors checkpoint, a range of rows at a time.

The format is an 8-byte little-endian header length, a JSON header mapping names to
``{dtype, shape, data_offsets}``, then the raw little-endian data. We read it ourselves rather
than through the ``safetensors`` package because its numpy backend cannot return bfloat16
(the usual dtype of released checkpoints) and its torch backend would make torch a dependency
of the converter. Reads use plain file I/O (no memory map), so the process never holds more
than the rows it asked for.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyresa.errors import ModelFormatError, UnsupportedError

# safetensors dtype -> (bytes per element, numpy dtype it is read as)
_DTYPES = {
    "F32": (4, np.dtype("<f4")),
    "F16": (2, np.dtype("<f2")),
    "BF16": (2, np.dtype("<u2")),  # widened to float32 by shifting into the high half
    "F64": (8, np.dtype("<f8")),
}


@dataclass
class StoredTensor:
    """One tensor inside one .safetensors file."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute file offset of the first byte
    nbytes: int

    @property
    def where(self) -> str:
        return f"{self.file.name}: tensor {self.name!r}"

    @property
    def n_rows(self) -> int:
        return self.shape[0] if len(self.shape) >= 2 else 1

    @property
    def row_elements(self) -> int:
        return int(np.prod(self.shape[1:])) if len(self.shape) >= 2 else int(np.prod(self.shape))

    def read_rows(self, rows: np.ndarray | slice) -> np.ndarray:
        """Rows of the tensor (seen as n_rows x row_elements) as float32, shape (len(rows), row_elements)."""
        elem_bytes, np_dtype = _DTYPES[self.dtype]
        row_bytes = self.row_elements * elem_bytes
        with open(self.file, "rb") as f:
            if isinstance(rows, slice):
                start, stop, _ = rows.indices(self.n_rows)
                f.seek(self.offset + start * row_bytes)
                raw = f.read((stop - start) * row_bytes)
                if len(raw) != (stop - start) * row_bytes:
                    raise ModelFormatError(f"{self.where}: file ends inside the tensor data (truncated download?)")
                data = np.frombuffer(raw, dtype=np_dtype).reshape(stop - start, self.row_elements)
            else:
                data = np.empty((len(rows), self.row_elements), dtype=np_dtype)
                for i, r in enumerate(rows):  # permuted rows: one read each, still bounded
                    f.seek(self.offset + int(r) * row_bytes)
                    raw = f.read(row_bytes)
                    if len(raw) != row_bytes:
                        raise ModelFormatError(f"{self.where}: file ends inside the tensor data (truncated download?)")
                    data[i] = np.frombuffer(raw, dtype=np_dtype)
        if self.dtype == "BF16":
            return (data.astype(np.uint32) << 16).view(np.float32)
        return data.astype(np.float32)


def _read_header(path: Path) -> dict[str, StoredTensor]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ModelFormatError(f"{path.name}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                raise ModelFormatError(f"{path.name}: not a safetensors file (header length {n})")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        if isinstance(e, ModelFormatError):
            raise
        raise ModelFormatError(f"{path.name}: cannot read the safetensors header: {e}") from e
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        shape = tuple(int(s) for s in info.get("shape", ()))
        begin, end = info["data_offsets"]
        t = StoredTensor(name, path, dtype, shape, base + begin, end - begin)
        if dtype in _DTYPES and t.nbytes != int(np.prod(shape)) * _DTYPES[dtype][0]:
            raise ModelFormatError(f"{t.where}: {t.nbytes} bytes of data do not hold a {dtype} tensor of shape {shape}")
        if base + end > size:
            raise ModelFormatError(
                f"{t.where}: data ends at byte {base + end} but the file has {size} bytes (truncated download?)")
        tensors[name] = t
    return tensors


class SafetensorsCheckpoint:
    """All tensors of a checkpoint directory: one model.safetensors, or shards listed by
    model.safetensors.index.json (every shard named there must exist)."""

    def __init__(self, directory: Path):
        self.directory = directory
        index = directory / "model.safetensors.index.json"
        self.tensors: dict[str, StoredTensor] = {}
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise ModelFormatError(
                    f"{index.name} lists shard(s) missing from {directory}: {', '.join(missing)}")
            for s in shards:
                self.tensors.update(_read_header(directory / s))
            absent = [name for name, s in weight_map.items() if name not in self.tensors]
            if absent:
                raise ModelFormatError(
                    f"{index.name} maps {absent[0]!r} to {weight_map[absent[0]]}, which does not contain it")
        else:
            files = sorted(directory.glob("*.safetensors"))
            if not files:
                bins = sorted(p.name for p in directory.glob("*.bin"))
                hint = f" (found {', '.join(bins)}: re-save the model with safe_serialization=True)" if bins else ""
                raise ModelFormatError(f"no .safetensors weights in {directory}{hint}")
            for p in files:
                self.tensors.update(_read_header(p))

    def get(self, name: str) -> StoredTensor:
        t = self.tensors.get(name)
        if t is None:
            raise ModelFormatError(f"tensor {name!r} is missing from the checkpoint in {self.directory}")
        if t.dtype not in _DTYPES:
            raise UnsupportedError(
                f"{t.where}: dtype {t.dtype} is not supported (supported: {', '.join(_DTYPES)})")
        return t
