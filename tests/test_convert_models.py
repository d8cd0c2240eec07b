"""Converted checkpoints against transformers and llama.cpp (llama-cpp-python).

* SmolLM2-135M-Instruct (llama, real weights, tied embeddings): its GGUF -> transformers ->
  safetensors -> pyresa-convert -> logits and tokenization against transformers.
* A random Qwen2ForCausalLM with the real Qwen tokenizer: q/k/v biases, NeoX RoPE, untied output.
* Every outtype: gguf-py's dequantization of each written matrix against the source weights,
  and llama.cpp loads and runs the file."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys

import gguf
import numpy as np
import pytest
from conftest_convert import (  # noqa: F401  (fixtures)
    LOGIT_TEXT, QWEN_HEADER, TOKENIZER_TEXTS, hf_logits, hf_tokenizer, llama_cpp_logits, llama_cpp_vocab, pc,
    pyresa_logits, qwen_gguf, qwen_hf, read_header_only, safetensors_weight, smol_gguf, smol_hf, top1_agreement, vocab_only_copy)
from gguf import GGMLQuantizationType as T


REL_RMSE = {T.F32: 1e-7, T.F16: 4e-4, T.BF16: 3e-3, T.Q8_0: 8e-3, T.Q6_K: 2.5e-2, T.Q5_1: 5e-2, T.Q5_0: 5.5e-2,
            T.Q5_K: 4.5e-2, T.Q4_1: 1e-1, T.Q4_0: 1.1e-1, T.Q4_K: 9e-2}


@functools.lru_cache(maxsize=4)
def reader(path) -> gguf.GGUFReader:
    return gguf.GGUFReader(path)  # parsing a 150k-token vocabulary takes seconds: once per file


@functools.lru_cache(maxsize=4)
def fields(path) -> dict:
    return {k: f.contents() for k, f in reader(path).fields.items() if not k.startswith("GGUF.")}


def tensor_types(path) -> dict[str, T]:
    return {t.name: T(t.tensor_type) for t in reader(path).tensors}


def dequantized(path, names=None) -> dict[str, np.ndarray]:
    out = {}
    for t in reader(path).tensors:
        if names is not None and t.name not in names:
            continue
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out[t.name] = gguf.quants.dequantize(t.data, T(t.tensor_type)).reshape(shape)
    return out


def rel_rmse(y, x):
    return float(np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x ** 2)))


# ----------------------------------------------------------------------------- SmolLM2 (llama)

@pytest.fixture(scope="session")
def smol_ids(smol_hf):
    return hf_tokenizer(smol_hf)(LOGIT_TEXT, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="session")
def smol_ref_logits(smol_hf, smol_ids):
    return hf_logits(smol_hf, smol_ids)


def test_smol_metadata_matches_the_original(smol_gguf):
    from pyresa.default_model import default_model_path
    new, orig = fields(smol_gguf("f16")), fields(default_model_path())
    assert new["general.architecture"] == "llama"
    for key in ("llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
                "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
                "llama.attention.layer_norm_rms_epsilon", "llama.rope.dimension_count", "llama.vocab_size",
                "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):
        assert new[key] == pytest.approx(orig[key]) if isinstance(orig[key], float) else new[key] == orig[key], key
    assert new["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    # transformers rebuilds the tokenizer with a plain byte-level pre-tokenizer: that is gpt-2
    assert new["tokenizer.ggml.pre"] == "gpt-2"
    assert set(tensor_types(smol_gguf("f16"))) == set(tensor_types(default_model_path()))  # tied: no output.weight


def test_smol_llama_cpp_logits_match_transformers(smol_gguf, smol_ids, smol_ref_logits):
    for outtype, need in (("f16", 0.99), ("q8_0", 0.9)):
        got = llama_cpp_logits(smol_gguf(outtype), smol_ids)
        assert top1_agreement(got, smol_ref_logits) >= need, outtype


def test_smol_pyresa_logits_match_transformers(smol_gguf, smol_ids, smol_ref_logits, tmp_path):
    got = pyresa_logits(smol_gguf("f16"), smol_ids, tmp_path)
    assert top1_agreement(got, smol_ref_logits) >= 0.99


def test_smol_q_k_rows_are_permuted_for_llama_cpp(smol_hf, smol_gguf):
    """llama.cpp's llama wants each head's rotary pairs adjacent; HF stores them in halves."""
    deq = dequantized(smol_gguf("f32"))
    q = safetensors_weight(smol_hf, "model.layers.0.self_attn.q_proj.weight")
    k = safetensors_weight(smol_hf, "model.layers.0.self_attn.k_proj.weight")
    for w, n_head, name in ((q, 9, "blk.0.attn_q.weight"), (k, 3, "blk.0.attn_k.weight")):
        expect = w.reshape(n_head, 2, w.shape[0] // n_head // 2, -1).swapaxes(1, 2).reshape(w.shape)
        assert np.array_equal(deq[name], expect)
    v = safetensors_weight(smol_hf, "model.layers.0.self_attn.v_proj.weight")
    assert np.array_equal(deq["blk.0.attn_v.weight"], v)


def test_smol_tokenization_matches_hf(smol_hf, smol_gguf):
    tok, vocab = hf_tokenizer(smol_hf), llama_cpp_vocab(smol_gguf("q8_0"))
    for text in TOKENIZER_TEXTS:
        assert vocab.tokenize(text.encode(), add_bos=False, special=False) == \
            tok(text, add_special_tokens=False)["input_ids"], text
    chat = "<|im_start|>user\nWhat is 12*34?<|im_end|>\n<|im_start|>assistant\n"
    assert vocab.tokenize(chat.encode(), add_bos=False, special=True) == tok(chat, add_special_tokens=False)["input_ids"]


def test_smollm_digit_pre_tokenizer(smol_hf, tmp_path):
    """SmolLM's original tokenizer.json splits digits singly before the byte-level regex:
    identified as llama.cpp's `smollm`, and llama.cpp then tokenizes as HF does."""
    d = tmp_path / "smol_digits"
    d.mkdir()
    for f in smol_hf.iterdir():
        (d / f.name).symlink_to(f)
    (d / "tokenizer.json").unlink()
    tj = json.loads((smol_hf / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, tj["pre_tokenizer"]]}
    (d / "tokenizer.json").write_text(json.dumps(tj))
    out = tmp_path / "digits.gguf"
    pc.convert(d, out, "q8_0", progress=False)
    assert fields(out)["tokenizer.ggml.pre"] == "smollm"
    tok, vocab = hf_tokenizer(d), llama_cpp_vocab(out)
    for text in TOKENIZER_TEXTS:
        assert vocab.tokenize(text.encode(), add_bos=False, special=False) == \
            tok(text, add_special_tokens=False)["input_ids"], text


def test_smol_q4_k_m_recipe_and_fallbacks(smol_gguf, smol_ids, smol_ref_logits):
    """576-wide rows are not a multiple of 256: Q4_K falls back to Q5_0, Q6_K to Q8_0; ffn_down
    (1536-wide rows) keeps K-quants; the tied embedding is the output, at Q6_K -> Q8_0."""
    types = tensor_types(smol_gguf("q4_k_m"))
    assert types["token_embd.weight"] == T.Q8_0
    assert types["blk.0.attn_q.weight"] == T.Q5_0
    assert types["blk.0.attn_v.weight"] == T.Q8_0 and types["blk.3.attn_v.weight"] == T.Q5_0
    assert types["blk.0.ffn_down.weight"] == T.Q6_K and types["blk.3.ffn_down.weight"] == T.Q4_K
    assert types["blk.0.attn_norm.weight"] == T.F32
    got = llama_cpp_logits(smol_gguf("q4_k_m"), smol_ids)
    assert top1_agreement(got, smol_ref_logits) >= 0.8


def test_requantize_gguf_to_gguf(smol_gguf, tmp_path, smol_ids, smol_ref_logits):
    f16 = smol_gguf("f16")
    out = tmp_path / "requant-q4_k_m.gguf"
    info = pc.convert(f16, out, "q4_k_m", progress=False)
    assert tensor_types(out) == tensor_types(smol_gguf("q4_k_m"))
    a, b = fields(out), fields(f16)
    assert a["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert {k: v for k, v in a.items() if k not in ("general.file_type", "general.quantization_version")} == \
        {k: v for k, v in b.items() if k != "general.file_type"}
    assert top1_agreement(llama_cpp_logits(out, smol_ids), smol_ref_logits) >= 0.8
    assert info["source_types"] == ["F16", "F32"]
    # Same type in and out: tensor bytes are copied as they are.
    same = tmp_path / "same-f16.gguf"
    pc.convert(f16, same, "f16", progress=False)
    ra, rb = reader(f16), reader(same)
    for ta, tb in zip(ra.tensors, rb.tensors):
        assert ta.name == tb.name and np.array_equal(np.asarray(ta.data), np.asarray(tb.data))


# ------------------------------------------------------------------------------ Qwen2 (random)

@pytest.fixture(scope="session")
def qwen_ids(qwen_hf):
    return hf_tokenizer(qwen_hf)(LOGIT_TEXT, add_special_tokens=False)["input_ids"]


def test_qwen_metadata_and_tensors(qwen_gguf, qwen_hf):
    path = qwen_gguf("f32")
    f = fields(path)
    assert f["general.architecture"] == "qwen2"
    assert f["qwen2.block_count"] == 2 and f["qwen2.embedding_length"] == 256
    assert f["qwen2.attention.head_count"] == 4 and f["qwen2.attention.head_count_kv"] == 2
    assert f["qwen2.rope.freq_base"] == 10000.0 and f["qwen2.context_length"] == 4096
    assert f["qwen2.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert f["tokenizer.ggml.pre"] == "qwen2"
    assert f["tokenizer.ggml.bos_token_id"] == 151646 and f["tokenizer.ggml.eos_token_id"] == 151643
    assert f["tokenizer.ggml.padding_token_id"] == 151654
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.add_eos_token"] is False
    hdr = read_header_only(QWEN_HEADER, qwen_hf.parent)
    assert f["tokenizer.chat_template"] == hdr.fields["tokenizer.chat_template"].contents()
    assert f["tokenizer.ggml.token_type"] == hdr.fields["tokenizer.ggml.token_type"].contents()
    assert f["tokenizer.ggml.tokens"] == hdr.fields["tokenizer.ggml.tokens"].contents()
    deq = dequantized(path)
    assert "output.weight" in deq
    for name, hf in (("blk.1.attn_q.bias", "model.layers.1.self_attn.q_proj.bias"),
                     ("blk.1.attn_k.bias", "model.layers.1.self_attn.k_proj.bias"),
                     ("blk.1.attn_v.bias", "model.layers.1.self_attn.v_proj.bias"),
                     ("blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight")):  # no permutation
        assert np.array_equal(deq[name], safetensors_weight(qwen_hf, hf)), name


def test_qwen_llama_cpp_logits_match_transformers(qwen_gguf, qwen_hf, qwen_ids):
    ref = hf_logits(qwen_hf, qwen_ids)
    got = llama_cpp_logits(qwen_gguf("f32"), qwen_ids)
    assert top1_agreement(got, ref) >= 0.99
    assert np.max(np.abs(got - ref)) < 0.05 * np.max(np.abs(ref))


def test_qwen_pyresa_logits_match_transformers(qwen_gguf, qwen_hf, qwen_ids, tmp_path):
    got = pyresa_logits(qwen_gguf("f32"), qwen_ids, tmp_path)
    assert top1_agreement(got, hf_logits(qwen_hf, qwen_ids)) >= 0.99


def test_qwen_tokenization_matches_hf(qwen_gguf, qwen_hf):
    """And matches llama.cpp on the original 7B GGUF (whose pre-tokenizer is named
    deepseek-r1-qwen; ours is qwen2: llama.cpp treats the two alike)."""
    tok, vocab = hf_tokenizer(qwen_hf), llama_cpp_vocab(qwen_gguf("f32"))
    original = llama_cpp_vocab(vocab_only_copy(QWEN_HEADER, qwen_hf.parent))
    for text in TOKENIZER_TEXTS:
        ours = vocab.tokenize(text.encode(), add_bos=False, special=False)
        assert ours == tok(text, add_special_tokens=False)["input_ids"], text
        assert ours == original.tokenize(text.encode(), add_bos=False, special=False), text
    chat = "<｜User｜>Why is the sky blue?<｜Assistant｜><think>\nRayleigh</think>"
    assert vocab.tokenize(chat.encode(), add_bos=False, special=True) == tok(chat, add_special_tokens=False)["input_ids"]


OUTTYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m"]


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_each_outtype_dequantizes_close_and_loads_in_llama_cpp(qwen_gguf, qwen_hf, qwen_ids, outtype):
    path = qwen_gguf(outtype)
    types = tensor_types(path)
    base = pc.OUTTYPES[outtype][0]
    hf_names = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
                "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
                "blk.0.attn_v.weight": "model.layers.0.self_attn.v_proj.weight",
                "blk.1.attn_v.weight": "model.layers.1.self_attn.v_proj.weight",
                "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
                "blk.1.ffn_gate.weight": "model.layers.1.mlp.gate_proj.weight"}
    deq = dequantized(path, set(hf_names))
    for name, hf in hf_names.items():
        t = types[name]
        assert rel_rmse(deq[name], safetensors_weight(qwen_hf, hf)) <= REL_RMSE[t], (name, t.name)
    assert types["blk.0.attn_norm.weight"] == T.F32 and types["blk.0.attn_q.bias"] == T.F32
    if outtype.endswith("_m"):  # of 2 layers, layer 1 is in the last eighth: more bits
        assert types["output.weight"] == types["blk.1.attn_v.weight"] == types["blk.1.ffn_down.weight"] == T.Q6_K
        assert types["blk.0.attn_q.weight"] == types["blk.0.attn_v.weight"] == types["blk.0.ffn_down.weight"] == base
    else:
        assert {t for n, t in types.items() if n.endswith(".weight") and "norm" not in n} == {base}
    assert fields(path)["general.file_type"] == pc.OUTTYPES[outtype][1]
    logits = llama_cpp_logits(path, qwen_ids[:16])
    assert logits.shape == (16, 152064) and np.isfinite(logits).all()


def test_q4_k_m_recipe_matches_llama_cpp_on_the_7b(tmp_path):
    """Our Q4_K_M recipe gives every tensor of DeepSeek-R1-Distill-Qwen-7B the type llama.cpp chose."""
    if not QWEN_HEADER.exists():
        pytest.skip(f"no {QWEN_HEADER}")
    r = read_header_only(QWEN_HEADER, tmp_path)
    names = {t.name for t in r.tensors}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        assert pc.tensor_type("q4_k_m", t.name, shape, 28, "output.weight" in names) == T(t.tensor_type), t.name


def test_cli_converts_and_reports(qwen_hf, tmp_path):
    out = tmp_path / "cli.gguf"
    mod = pc.__name__
    r = subprocess.run([sys.executable, "-m", mod, str(qwen_hf), "-o", str(out), "--outtype", "q8_0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "Q8_0" in r.stdout and out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cli.gguf"]  # no temporary file left
    if shutil.which("pyresa-convert"):
        assert subprocess.run(["pyresa-convert", "--help"], capture_output=True).returncode == 0
