"""A GGUF model file opened with the ``gguf`` package: metadata, the model's hyper-parameters,
and its tensors as read-only memory-mapped views handed to C++ without a copy."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pyresa.errors import ModelFormatError, ModelNotFoundError, UnsupportedError

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHS = ("llama", "qwen2")
# llama.cpp's RoPE variant per architecture: llama rotates adjacent pairs, qwen2 uses NeoX halves.
ROPE_NEOX = {"llama": False, "qwen2": True}


@dataclass
class TensorInfo:
    name: str
    type_id: int
    shape: list[int]  # ggml order: ne[0] (row length) first
    data: np.ndarray  # uint8 view into the memory map


@dataclass
class GGUFModelFile:
    path: Path
    metadata: dict[str, Any]
    config: dict[str, Any]
    tensors: dict[str, TensorInfo] = field(repr=False)
    _reader: Any = field(repr=False, default=None)  # keeps the memory map alive

    @property
    def arch(self) -> str:
        return self.config["arch"]

    def tensor_table(self) -> dict[str, tuple[int, list[int], np.ndarray]]:
        """What the native engine takes: name -> (ggml type id, ne, bytes)."""
        return {t.name: (t.type_id, t.shape, t.data) for t in self.tensors.values()}


def _field_value(f) -> Any:
    try:
        return f.contents()
    except Exception:  # older gguf versions: decode by hand
        if len(f.types) == 1 and f.types[0].name == "STRING":
            return bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")
        vals = [f.parts[i].tolist() for i in f.data]
        return vals[0][0] if len(vals) == 1 and len(vals[0]) == 1 else vals


def read_metadata(reader, *, skip_large: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if skip_large and key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                                  "tokenizer.ggml.scores"):
            out[key + ".count"] = len(f.data)
            continue
        out[key] = _field_value(f)
    return out


def _check_header(path: Path) -> None:
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFormatError(f"{path} is not a file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFormatError(f"{path} is not a GGUF file (starts with {magic!r}, expected b'GGUF')")


def model_config(metadata: dict[str, Any], path: Path, n_vocab_from_tensor: int | None) -> dict[str, Any]:
    arch = metadata.get("general.architecture")
    if arch is None:
        raise ModelFormatError(f"{path}: no general.architecture in the GGUF metadata")
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedError(f"{path}: architecture '{arch}' is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")

    def need(key: str):
        full = f"{arch}.{key}"
        if full not in metadata:
            raise ModelFormatError(f"{path}: missing metadata key '{full}'")
        return metadata[full]

    n_embd = int(need("embedding_length"))
    n_head = int(need("attention.head_count"))
    n_vocab = metadata.get(f"{arch}.vocab_size") or metadata.get("tokenizer.ggml.tokens.count") or n_vocab_from_tensor
    if not n_vocab:
        raise ModelFormatError(f"{path}: cannot tell the vocabulary size")
    return {
        "arch": arch,
        "n_layer": int(need("block_count")),
        "n_embd": n_embd,
        "n_head": n_head,
        "n_head_kv": int(metadata.get(f"{arch}.attention.head_count_kv", n_head)),
        "head_dim": int(metadata.get(f"{arch}.attention.key_length", n_embd // n_head)),
        "n_ff": int(need("feed_forward_length")),
        "n_vocab": int(n_vocab),
        "n_ctx_train": int(need("context_length")),
        "rope_freq_base": float(metadata.get(f"{arch}.rope.freq_base", 10000.0)),
        "rms_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_neox": ROPE_NEOX[arch],
    }


def open_gguf(path: str | os.PathLike) -> GGUFModelFile:
    """Open and check a GGUF model. Errors name the file and the problem; the file is only read."""
    from gguf import GGUFReader

    path = Path(path)
    _check_header(path)
    try:
        reader = GGUFReader(path, "r")
    except Exception as e:  # gguf raises ValueError/IndexError/... on malformed files
        raise ModelFormatError(f"{path}: corrupt or truncated GGUF file ({type(e).__name__}: {e})") from None
    size = path.stat().st_size
    tensors: dict[str, TensorInfo] = {}
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise ModelFormatError(f"{path}: tensor '{t.name}' ends at byte {end}, past the end of the file "
                                   f"({size} bytes): the file is truncated")
        data = np.asarray(t.data).reshape(-1).view(np.uint8)
        tensors[t.name] = TensorInfo(t.name, int(t.tensor_type), [int(x) for x in t.shape], data)
    metadata = read_metadata(reader)
    emb = tensors.get("token_embd.weight")
    config = model_config(metadata, path, emb.shape[1] if emb and len(emb.shape) > 1 else None)
    return GGUFModelFile(path=path, metadata=metadata, config=config, tensors=tensors, _reader=reader)
