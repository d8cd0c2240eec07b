"""Hugging Face checkpoint directory (config.json, safetensors, tokenizer) -> ConversionPlan."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from pyresa.errors import ModelFormatError, UnsupportedError

from .plan import ConversionPlan, TensorJob
from .safetensors_files import SafetensorsCheckpoint, StoredTensor
from .tokenizer import export_tokenizer


@dataclass(frozen=True)
class Architecture:
    gguf_arch: str
    # HF stores llama's q/k rows for rotate-half RoPE; llama.cpp's llama expects adjacent pairs,
    # so rows are regrouped per head. Qwen2 runs NeoX-style RoPE in llama.cpp: no permutation.
    permute_qk: bool
    qkv_bias: bool  # the architecture always has q/k/v biases


ARCHITECTURES = {
    "LlamaForCausalLM": Architecture("llama", permute_qk=True, qkv_bias=False),
    "MistralForCausalLM": Architecture("llama", permute_qk=True, qkv_bias=False),
    "Qwen2ForCausalLM": Architecture("qwen2", permute_qk=False, qkv_bias=True),
}

# HF name inside a layer -> GGUF name inside a block.
_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# Always there in qwen2; llama has them when config.json says attention_bias.
_OPTIONAL = {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.o_proj.bias"}


def _rope_params(cfg: dict) -> tuple[float, dict | None]:
    """(rope theta, scaling dict or None), from either config layout (rope_theta + rope_scaling,
    or transformers 5's rope_parameters)."""
    params = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            scaling = None
    return float(theta), scaling


def _llama3_rope_factors(scaling: dict, theta: float, head_dim: int) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1's RoPE scaling (llama.cpp's rope_freqs tensor):
    long wavelengths are slowed by `factor`, short ones kept, the band between interpolated."""
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    out = np.empty_like(freqs)
    for i, w in enumerate(wavelen):
        if w < old_ctx / high:
            out[i] = 1.0
        elif w > old_ctx / low:
            out[i] = factor
        else:
            smooth = (old_ctx / w - low) / (high - low)
            out[i] = 1.0 / ((1 - smooth) / factor + smooth)
    return out.astype(np.float32)


def _qk_row_order(n_rows: int, n_head: int) -> np.ndarray:
    """Output row r of a permuted q/k matrix is source row order[r]: per head, the rows of the
    first and second rotate-half halves are interleaved."""
    head_dim = n_rows // n_head
    return np.arange(n_rows).reshape(n_head, 2, head_dim // 2).swapaxes(1, 2).reshape(-1)


def _rows_reader(t: StoredTensor, order: np.ndarray | None = None, block: int = 1):
    """read_rows for a stored tensor, optionally with rows permuted within groups of `block` rows
    (a vector, one row, has its elements permuted instead)."""
    if order is None:
        return lambda r0, r1: t.read_rows(slice(r0, r1))
    if len(t.shape) == 1:
        return lambda r0, r1: t.read_rows(slice(0, 1))[:, order]

    def read(r0: int, r1: int) -> np.ndarray:
        g0, g1 = (r0 // block) * block, -(-r1 // block) * block  # whole groups cover [r0, r1)
        src = t.read_rows(slice(g0, g1))
        return src[order[g0:g1] - g0][r0 - g0:r1 - g0]
    return read


def _check(cond: bool, msg: str):
    if not cond:
        raise ModelFormatError(msg)


def plan_from_hf(directory: Path) -> ConversionPlan:
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ModelFormatError(f"{directory}: no config.json (not a Hugging Face checkpoint directory)")
    cfg = json.loads(cfg_path.read_text())
    names = cfg.get("architectures") or []
    archs = [a for a in names if a in ARCHITECTURES]
    if not archs:
        raise UnsupportedError(
            f"{cfg_path}: architecture {', '.join(names) or cfg.get('model_type', '?')} is not supported; "
            f"supported: {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[archs[0]]
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedError(f"{cfg_path}: hidden_act {cfg['hidden_act']!r} is not supported (only silu)")
    if cfg.get("mlp_bias"):
        raise UnsupportedError(f"{cfg_path}: mlp_bias is not supported")

    n_layer = int(cfg["num_hidden_layers"])
    n_embd = int(cfg["hidden_size"])
    n_head = int(cfg["num_attention_heads"])
    n_head_kv = int(cfg.get("num_key_value_heads") or n_head)
    head_dim = int(cfg.get("head_dim") or n_embd // n_head)
    n_ff = int(cfg["intermediate_size"])
    n_vocab = int(cfg["vocab_size"])
    n_ctx = int(cfg.get("max_position_embeddings", 4096))
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    theta, scaling = _rope_params(cfg)
    tied = bool(cfg.get("tie_word_embeddings", False))

    ckpt = SafetensorsCheckpoint(directory)
    jobs: list[TensorJob] = []
    used: set[str] = set()

    def add(gguf_name: str, hf_name: str, shape: tuple[int, ...], n_head_perm: int = 0):
        t = ckpt.get(hf_name)
        used.add(hf_name)
        if t.shape != shape:
            raise ModelFormatError(f"{t.where}: shape {list(t.shape)} does not match config.json, expected {list(shape)}")
        order = _qk_row_order(shape[0], n_head_perm) if n_head_perm else None
        reader = _rows_reader(t, order, block=shape[0] // n_head_perm if n_head_perm else 1)
        jobs.append(TensorJob(gguf_name, shape, reader, t.where))

    add("token_embd.weight", "model.embed_tokens.weight", (n_vocab, n_embd))
    for i in range(n_layer):
        p = f"model.layers.{i}."
        shapes = {
            "input_layernorm.weight": (n_embd,),
            "self_attn.q_proj.weight": (n_head * head_dim, n_embd),
            "self_attn.k_proj.weight": (n_head_kv * head_dim, n_embd),
            "self_attn.v_proj.weight": (n_head_kv * head_dim, n_embd),
            "self_attn.q_proj.bias": (n_head * head_dim,),
            "self_attn.k_proj.bias": (n_head_kv * head_dim,),
            "self_attn.v_proj.bias": (n_head_kv * head_dim,),
            "self_attn.o_proj.weight": (n_embd, n_head * head_dim),
            "self_attn.o_proj.bias": (n_embd,),
            "post_attention_layernorm.weight": (n_embd,),
            "mlp.gate_proj.weight": (n_ff, n_embd),
            "mlp.up_proj.weight": (n_ff, n_embd),
            "mlp.down_proj.weight": (n_embd, n_ff),
        }
        for hf, gg in _LAYER_TENSORS.items():
            if hf in _OPTIONAL and p + hf not in ckpt.tensors and (not arch.qkv_bias or hf.startswith("self_attn.o_")):
                continue
            perm = 0
            if arch.permute_qk and hf.startswith("self_attn.q_proj"):
                perm = n_head
            elif arch.permute_qk and hf.startswith("self_attn.k_proj"):
                perm = n_head_kv
            add(f"blk.{i}.{gg}", p + hf, shapes[hf], perm)
    add("output_norm.weight", "model.norm.weight", (n_embd,))
    if not tied:
        add("output.weight", "lm_head.weight", (n_vocab, n_embd))

    rope_kind = None
    if scaling is not None:
        rope_kind = scaling.get("rope_type", scaling.get("type"))
        if rope_kind == "llama3":
            factors = _llama3_rope_factors(scaling, theta, head_dim)
            jobs.append(TensorJob("rope_freqs.weight", factors.shape, lambda r0, r1: factors[None, :],
                                  f"{cfg_path.name}: rope_scaling"))
        elif rope_kind not in ("linear", "yarn"):
            raise UnsupportedError(
                f"{cfg_path}: rope scaling {rope_kind!r} is not supported; supported: linear, yarn, llama3")

    # Tied checkpoints may still carry lm_head.weight (a copy of the embedding); inv_freq is derived.
    extra = sorted(n for n in set(ckpt.tensors) - used
                   if n != "lm_head.weight" and not n.endswith("rotary_emb.inv_freq"))
    if extra:
        raise UnsupportedError(
            f"{directory}: checkpoint tensors this converter does not know where to put: {', '.join(extra[:5])}"
            + (f" (and {len(extra) - 5} more)" if len(extra) > 5 else ""))

    name = cfg.get("_name_or_path") or directory.name

    def write_metadata(w: gguf.GGUFWriter) -> None:
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(Path(str(name)).name)
        w.add_context_length(n_ctx)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(n_ff)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_layer_norm_rms_eps(eps)
        w.add_rope_freq_base(theta)
        w.add_rope_dimension_count(head_dim)
        if head_dim != n_embd // n_head:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_vocab_size(n_vocab)
        if rope_kind in ("linear", "yarn"):
            w.add_rope_scaling_type(gguf.RopeScalingType(rope_kind))
            w.add_rope_scaling_factor(float(scaling["factor"]))
            if "original_max_position_embeddings" in scaling:
                w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
        summary["tokenizer"] = export_tokenizer(w, directory, n_vocab)

    summary = {"architecture": archs[0], "gguf_arch": arch.gguf_arch, "layers": n_layer, "tied": tied}
    return ConversionPlan(arch.gguf_arch, n_layer, write_metadata, jobs, summary)
