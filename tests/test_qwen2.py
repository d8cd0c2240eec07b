"""The qwen2 path (q/k/v biases, NeoX RoPE, untied output) on a small random-weight GGUF
written with gguf.GGUFWriter, checked against llama-cpp-python's logits of the same file.

The tokenizer metadata is borrowed from the default model (llama.cpp needs a vocabulary to
load a model; the tokenizer does not depend on the architecture)."""

from __future__ import annotations

import numpy as np
import pytest

import pyresa
from conftest import llama_reference

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FF, LAYERS = 256, 4, 2, 64, 512, 2


def write_qwen2(path, model_path, weight_type):
    import gguf
    from gguf.quants import quantize

    src = gguf.GGUFReader(model_path)
    vocab = len(src.fields["tokenizer.ggml.tokens"].data)
    rng = np.random.default_rng(1234)
    w = gguf.GGUFWriter(path, "qwen2")
    w.add_block_count(LAYERS)
    w.add_context_length(2048)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(1)
    for key, f in src.fields.items():
        if key.startswith("tokenizer."):
            vtype = f.types[0]
            if vtype == gguf.GGUFValueType.ARRAY:
                w.add_key_value(key, f.contents(), vtype, sub_type=f.types[-1])
            else:
                w.add_key_value(key, f.contents(), vtype)

    def add(name, shape, kind="matrix", std=0.08):
        x = (rng.standard_normal(shape) * std).astype(np.float32)
        if kind == "norm":
            x = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        if kind == "matrix" and weight_type != gguf.GGMLQuantizationType.F32:
            q = quantize(x, weight_type)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=weight_type)
        else:
            w.add_tensor(name, x)

    add("token_embd.weight", (vocab, HIDDEN), std=0.5)
    add("output_norm.weight", (HIDDEN,), "norm")
    add("output.weight", (vocab, HIDDEN))
    for i in range(LAYERS):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", (HIDDEN,), "norm")
        add(p + "attn_q.weight", (HEADS * HEAD_DIM, HIDDEN))
        add(p + "attn_k.weight", (KV_HEADS * HEAD_DIM, HIDDEN))
        add(p + "attn_v.weight", (KV_HEADS * HEAD_DIM, HIDDEN))
        add(p + "attn_q.bias", (HEADS * HEAD_DIM,), "bias", std=0.5)
        add(p + "attn_k.bias", (KV_HEADS * HEAD_DIM,), "bias", std=0.5)
        add(p + "attn_v.bias", (KV_HEADS * HEAD_DIM,), "bias", std=0.5)
        add(p + "attn_output.weight", (HIDDEN, HEADS * HEAD_DIM))
        add(p + "ffn_norm.weight", (HIDDEN,), "norm")
        add(p + "ffn_gate.weight", (FF, HIDDEN))
        add(p + "ffn_up.weight", (FF, HIDDEN))
        add(p + "ffn_down.weight", (HIDDEN, FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


TYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q5_1"]


@pytest.mark.parametrize("type_name", TYPES)
def test_qwen2_logits_match_llama_cpp(tmp_path, model_path, english_text, type_name, threads):
    import gguf

    qtype = gguf.GGMLQuantizationType[type_name]
    path = tmp_path / f"qwen2-{type_name}.gguf"
    write_qwen2(path, model_path, qtype)
    ours_model = pyresa.Model(path, n_ctx=512)
    assert ours_model.config["arch"] == "qwen2" and ours_model.config["rope_neox"]
    tokens = ours_model.tokenize(english_text)[:300]
    ours = ours_model.logits(tokens)
    ref = llama_reference(path, n_ctx=512, logits_all=True, threads=threads)
    ref.eval(tokens)
    theirs = np.array(ref.scores[: len(tokens)], dtype=np.float32)
    rel = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
    top1 = (ours.argmax(-1) == theirs.argmax(-1)).mean()
    print(f"\n{type_name}: relative L2 {rel:.2e}, top-1 {top1:.3f}")
    if type_name in ("F32", "F16"):
        # No activation quantization on either side: only float summation order differs, so the
        # architecture (biases, NeoX RoPE, GQA, untied output) must match closely.
        assert rel < 2e-3 and top1 >= 0.99
    else:
        # 8-bit activations on both sides: rounding flips differ (measured 1.7e-2, top-1 >= 0.96).
        assert rel < 0.05 and top1 >= 0.94


def test_qwen2_without_biases_is_a_format_error(tmp_path, model_path):
    import gguf

    path = tmp_path / "qwen2.gguf"
    write_qwen2(path, model_path, gguf.GGMLQuantizationType.F32)
    reader = gguf.GGUFReader(path)
    names = [t.name for t in reader.tensors]
    assert "blk.0.attn_q.bias" in names
    from pyresa.gguf_file import open_gguf
    from pyresa import _core

    f = open_gguf(path)
    table = f.tensor_table()
    del table["blk.1.attn_k.bias"]
    with pytest.raises(pyresa.ModelFormatError, match="blk.1.attn_k.bias"):
        _core.Engine(f.config, table, 128, 1, 64)
