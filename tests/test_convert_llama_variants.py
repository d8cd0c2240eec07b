"""Llama-family variants, each as a tiny random transformers model checked against llama.cpp:
Mistral with an explicit head_dim (not hidden / heads), untied output, and RoPE scaling
(linear, Llama 3.1's llama3 as the rope_freqs tensor). yarn is checked as metadata only."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from conftest_convert import llama_cpp_logits, pc, top1_agreement
from test_convert_errors import tiny_tokenizer  # noqa: F401  (fixture)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 320


def build(tmp_path, tok_dir, cls_name: str, **cfg):
    cls = getattr(transformers, cls_name)
    config = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, **cfg)
    config.architectures = [cls_name]
    torch.manual_seed(0)
    model = cls(config).float()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1 + 0.2 * torch.randn(p.shape, generator=g)) if name.endswith("norm.weight")
                    else 0.3 * torch.randn(p.shape, generator=g))
    d = tmp_path / "hf"
    model.save_pretrained(d)
    for f in tok_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    return model, d


def check_logits(model, d, tmp_path, n=200):
    ids = list(np.random.default_rng(0).integers(0, VOCAB - 8, n))
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    out = tmp_path / "m.gguf"
    pc.convert(d, out, "f32", progress=False)
    got = llama_cpp_logits(out, [int(i) for i in ids])
    assert top1_agreement(got, ref) >= 0.99
    assert np.max(np.abs(got - ref)) < 0.02 * np.max(np.abs(ref))
    return out


def kv(path) -> dict:
    r = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def test_mistral_with_explicit_head_dim(tiny_tokenizer, tmp_path):  # noqa: F811
    model, d = build(tmp_path, tiny_tokenizer, "MistralForCausalLM", head_dim=32, tie_word_embeddings=False,
                     sliding_window=None)
    out = check_logits(model, d, tmp_path)
    f = kv(out)
    assert f["general.architecture"] == "llama"
    assert f["llama.attention.key_length"] == 32 and f["llama.attention.value_length"] == 32
    assert f["llama.rope.dimension_count"] == 32
    assert "output.weight" in {t.name for t in gguf.GGUFReader(out).tensors}


def test_llama_with_attention_biases(tiny_tokenizer, tmp_path):  # noqa: F811
    """Llama's q/k biases are permuted like the q/k rows."""
    model, d = build(tmp_path, tiny_tokenizer, "LlamaForCausalLM", tie_word_embeddings=True, attention_bias=True)
    out = check_logits(model, d, tmp_path)
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias", "blk.0.attn_output.bias"} <= \
        {t.name for t in gguf.GGUFReader(out).tensors}


def test_linear_rope_scaling(tiny_tokenizer, tmp_path):  # noqa: F811
    model, d = build(tmp_path, tiny_tokenizer, "LlamaForCausalLM", tie_word_embeddings=True,
                     rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})
    out = check_logits(model, d, tmp_path)
    f = kv(out)
    assert f["llama.rope.scaling.type"] == "linear" and f["llama.rope.scaling.factor"] == 4.0


def test_llama3_rope_scaling_becomes_rope_freqs(tiny_tokenizer, tmp_path):  # noqa: F811
    model, d = build(tmp_path, tiny_tokenizer, "LlamaForCausalLM", tie_word_embeddings=True,
                     rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
                                      "rope_theta": 10000.0})
    out = check_logits(model, d, tmp_path)
    freqs = next(t for t in gguf.GGUFReader(out).tensors if t.name == "rope_freqs.weight")
    f = np.asarray(freqs.data)
    assert f.shape == (8,) and f[0] == 1.0 and f[-1] == 8.0  # short wavelengths kept, long ones slowed


def test_yarn_metadata(tiny_tokenizer, tmp_path):  # noqa: F811
    _, d = build(tmp_path, tiny_tokenizer, "Qwen2ForCausalLM", tie_word_embeddings=True)
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg.update(rope_theta=10000.0, rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128})
    (d / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "y.gguf"
    pc.convert(d, out, "q8_0", progress=False)
    f = kv(out)
    assert f["qwen2.rope.scaling.type"] == "yarn" and f["qwen2.rope.scaling.factor"] == 4.0
    assert f["qwen2.rope.scaling.original_context_length"] == 128


def test_unsupported_rope_scaling(tiny_tokenizer, tmp_path):  # noqa: F811
    _, d = build(tmp_path, tiny_tokenizer, "LlamaForCausalLM", tie_word_embeddings=True)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0, "factor": 2.0}
    (d / "config.json").write_text(json.dumps(cfg))
    from pyresa.errors import UnsupportedError
    with pytest.raises(UnsupportedError, match="longrope.*linear, yarn, llama3"):
        pc.convert(d, tmp_path / "x.gguf", "q8_0", progress=False)
