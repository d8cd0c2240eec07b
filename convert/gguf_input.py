"""A GGUF file as conversion input (requantization): its metadata is copied as it is, its
tensors are dequantized a range of rows at a time (or copied raw when the type is unchanged)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from pyresa.errors import ModelFormatError, UnsupportedError

from .plan import ConversionPlan, TensorJob

# Keys the writer sets itself, or that describe the old file rather than the model.
_SKIP_KEYS = {"general.architecture", "general.file_type", "general.quantization_version", "general.alignment"}


def _reader(path: Path) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(path)
    except ValueError as e:
        size = path.stat().st_size
        raise ModelFormatError(f"{path}: cannot read as GGUF ({e}); is the file complete ({size} bytes)?") from e


def _rows_reader(path: Path, t, row_elements: int):
    qtype = gguf.GGMLQuantizationType(t.tensor_type)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    row_bytes = row_elements // block * type_size

    def read(r0: int, r1: int) -> np.ndarray:
        with open(path, "rb") as f:
            f.seek(t.data_offset + r0 * row_bytes)
            raw = f.read((r1 - r0) * row_bytes)
        if len(raw) != (r1 - r0) * row_bytes:
            raise ModelFormatError(f"{path.name}: tensor {t.name!r}: file ends inside its data")
        data = np.frombuffer(raw, dtype=np.uint8).reshape(r1 - r0, row_bytes)
        return np.asarray(gguf.quants.dequantize(data, qtype), dtype=np.float32).reshape(r1 - r0, row_elements)
    return read


def plan_from_gguf(path: Path) -> ConversionPlan:
    path = Path(path)
    r = _reader(path)
    arch_field = r.fields.get("general.architecture")
    if arch_field is None:
        raise ModelFormatError(f"{path}: no general.architecture key")
    arch = arch_field.contents()
    if arch not in ("llama", "qwen2"):
        raise UnsupportedError(f"{path}: GGUF architecture {arch!r} is not supported; supported: llama, qwen2")
    n_layer = int(r.fields[f"{arch}.block_count"].contents())

    jobs = []
    for t in r.tensors:
        qtype = gguf.GGMLQuantizationType(t.tensor_type)
        if qtype not in gguf.quants._type_traits and qtype not in (gguf.GGMLQuantizationType.F32,
                                                                     gguf.GGMLQuantizationType.F16):
            raise UnsupportedError(f"{path.name}: tensor {t.name!r} has type {qtype.name}, which cannot be read")
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        job = TensorJob(t.name, shape, _rows_reader(path, t, shape[-1]), f"{path.name}: tensor {t.name!r}")
        job.raw = (path, t.data_offset, int(t.n_bytes))
        job.source_type = qtype
        jobs.append(job)

    fields = [(k, f) for k, f in r.fields.items() if not k.startswith("GGUF.") and k not in _SKIP_KEYS]

    def write_metadata(w: gguf.GGUFWriter) -> None:
        for key, f in fields:
            vtype = gguf.GGUFValueType(f.types[0])
            sub = gguf.GGUFValueType(f.types[1]) if vtype == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(key, f.contents(), vtype, sub_type=sub)

    source_types = sorted({j.source_type.name for j in jobs})
    summary = {"architecture": arch, "gguf_arch": arch, "layers": n_layer, "source_types": source_types}
    return ConversionPlan(arch, n_layer, write_metadata, jobs, summary)
