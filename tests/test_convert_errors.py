"""Bad input gives a clear error naming the file and tensor, and a failed or interrupted
conversion never leaves OUT (nor a half-written file) behind. Uses tiny llama checkpoints
written with numpy (no torch needed)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest_convert import LOGIT_TEXT, pc

from pyresa.errors import ModelFormatError, UnsupportedError

writer_mod = importlib.import_module(pc.__name__ + ".writer")

H, HEADS, KV, FF, LAYERS, VOCAB = 64, 4, 2, 128, 2, 320


def bf16_bits(x: np.ndarray) -> np.ndarray:
    b = x.astype(np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """Our own minimal writer, so tests can make BF16, I32 and broken files."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def llama_weights(hidden=H, ff=FF, layers=LAYERS, vocab=VOCAB, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hd = hidden // HEADS
    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)),
         "model.norm.weight": 1 + 0.1 * rng.standard_normal(hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        w.update({
            p + "input_layernorm.weight": 1 + 0.1 * rng.standard_normal(hidden),
            p + "post_attention_layernorm.weight": 1 + 0.1 * rng.standard_normal(hidden),
            p + "self_attn.q_proj.weight": rng.standard_normal((HEADS * hd, hidden)),
            p + "self_attn.k_proj.weight": rng.standard_normal((KV * hd, hidden)),
            p + "self_attn.v_proj.weight": rng.standard_normal((KV * hd, hidden)),
            p + "self_attn.o_proj.weight": rng.standard_normal((hidden, HEADS * hd)),
            p + "mlp.gate_proj.weight": rng.standard_normal((ff, hidden)),
            p + "mlp.up_proj.weight": rng.standard_normal((ff, hidden)),
            p + "mlp.down_proj.weight": rng.standard_normal((hidden, ff)),
        })
    return {k: (0.05 * v).astype(np.float32) for k, v in w.items()}


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> Path:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 8, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator([LOGIT_TEXT] * 4, trainer)
    d = tmp_path_factory.mktemp("tiny_tok")
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}))
    return d


def make_llama(d: Path, tok_dir: Path, *, dtype="F32", shards=1, config_overrides=None, weights=None, **dims) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    w = weights if weights is not None else llama_weights(**dims)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dims.get("hidden", H),
           "intermediate_size": dims.get("ff", FF), "num_hidden_layers": dims.get("layers", LAYERS),
           "num_attention_heads": HEADS, "num_key_value_heads": KV, "vocab_size": VOCAB, "rms_norm_eps": 1e-5,
           "max_position_embeddings": 512, "rope_theta": 10000.0, "tie_word_embeddings": True, "hidden_act": "silu"}
    cfg.update(config_overrides or {})
    (d / "config.json").write_text(json.dumps(cfg))
    for f in tok_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())

    def enc(a):
        return ("BF16", bf16_bits(a)) if dtype == "BF16" else (dtype, a.astype({"F32": np.float32, "F16": np.float16}[dtype]))
    names = list(w)
    if shards == 1:
        write_safetensors(d / "model.safetensors", {n: enc(w[n]) for n in names})
    else:
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = names[s::shards]
            write_safetensors(d / fname, {n: enc(w[n]) for n in part})
            weight_map.update({n: fname for n in part})
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


def no_leftovers(directory: Path, allowed=()) -> None:
    left = sorted(p.name for p in directory.iterdir() if p.name not in allowed)
    assert left == [], left


# ------------------------------------------------------------------------------- good inputs

@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_tiny_llama_converts_from_each_float_dtype(tiny_tokenizer, tmp_path, dtype):
    src = make_llama(tmp_path / "m", tiny_tokenizer, dtype=dtype, shards=2)
    out = tmp_path / "out" / "tiny.gguf"
    pc.convert(src, out, "f32", progress=False)
    r = gguf.GGUFReader(out)
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    src_emb = llama_weights()["model.embed_tokens.weight"]
    expect = {"F32": src_emb, "F16": src_emb.astype(np.float16).astype(np.float32),
              "BF16": (bf16_bits(src_emb).astype(np.uint32) << 16).view(np.float32)}[dtype]
    assert np.array_equal(np.asarray(emb.data).reshape(src_emb.shape), expect)
    assert r.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    no_leftovers(out.parent, {"tiny.gguf"})


def test_peak_memory_is_bounded_by_a_chunk_not_the_model(tiny_tokenizer, tmp_path):
    """~150 MB of weights whose largest tensor is 2 MiB: the converter's resident memory must
    not grow by anything like the model's size."""
    src = make_llama(tmp_path / "m", tiny_tokenizer, hidden=512, ff=1024, layers=16)
    out = tmp_path / "big.gguf"
    script = (
        "import resource, sys\n"
        f"import {pc.__name__} as pc\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"pc.convert({str(src)!r}, {str(out)!r}, 'q8_0', progress=False)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) // 1024)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    grew_mib = int(r.stdout.split()[-1])
    model_mib = sum(p.stat().st_size for p in src.glob("*.safetensors")) / 2**20
    assert model_mib > 140
    print(f"resident memory grew {grew_mib} MiB for a {model_mib:.0f} MiB model")
    assert grew_mib < 60, f"resident memory grew {grew_mib} MiB converting a {model_mib:.0f} MiB model"


# ------------------------------------------------------------------------------- bad inputs

def test_unknown_architecture_lists_the_supported_ones(tiny_tokenizer, tmp_path):
    src = make_llama(tmp_path / "m", tiny_tokenizer, config_overrides={"architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(UnsupportedError) as e:
        pc.convert(src, tmp_path / "o.gguf", "f16", progress=False)
    msg = str(e.value)
    assert "GPT2LMHeadModel" in msg and "LlamaForCausalLM" in msg and "Qwen2ForCausalLM" in msg
    assert not (tmp_path / "o.gguf").exists()


def test_missing_shard_names_the_file(tiny_tokenizer, tmp_path):
    src = make_llama(tmp_path / "m", tiny_tokenizer, shards=3)
    (src / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="model-00002-of-00003.safetensors"):
        pc.convert(src, tmp_path / "o.gguf", "q8_0", progress=False)


def test_shape_mismatch_names_file_and_tensor(tiny_tokenizer, tmp_path):
    src = make_llama(tmp_path / "m", tiny_tokenizer, config_overrides={"intermediate_size": 96})
    with pytest.raises(ModelFormatError, match=r"model\.safetensors.*model\.layers\.0\.mlp\.gate_proj\.weight.*\[128, 64\]"):
        pc.convert(src, tmp_path / "o.gguf", "q8_0", progress=False)


def test_unsupported_dtype_names_file_and_tensor(tiny_tokenizer, tmp_path):
    w = llama_weights()
    src = make_llama(tmp_path / "m", tiny_tokenizer, weights=w)
    tensors = {n: ("F32", a) for n, a in w.items()}
    tensors["model.layers.1.mlp.up_proj.weight"] = ("I32", np.zeros((FF, H), np.int32))
    write_safetensors(src / "model.safetensors", tensors)
    with pytest.raises(UnsupportedError, match=r"model\.safetensors.*model\.layers\.1\.mlp\.up_proj\.weight.*I32"):
        pc.convert(src, tmp_path / "o.gguf", "q8_0", progress=False)


def test_truncated_shard_names_the_file(tiny_tokenizer, tmp_path):
    src = make_llama(tmp_path / "m", tiny_tokenizer, shards=2)
    shard = src / "model-00001-of-00002.safetensors"
    os.truncate(shard, shard.stat().st_size - 1000)
    with pytest.raises(ModelFormatError, match=r"model-00001-of-00002\.safetensors.*truncated"):
        pc.convert(src, tmp_path / "o.gguf", "q8_0", progress=False)


def test_missing_output_projection_when_untied(tiny_tokenizer, tmp_path):
    src = make_llama(tmp_path / "m", tiny_tokenizer, config_overrides={"tie_word_embeddings": False})
    with pytest.raises(ModelFormatError, match="lm_head.weight"):
        pc.convert(src, tmp_path / "o.gguf", "q8_0", progress=False)


def test_nan_weights_name_the_tensor(tiny_tokenizer, tmp_path):
    w = llama_weights()
    w["model.layers.1.self_attn.o_proj.weight"][3, 4] = np.nan
    src = make_llama(tmp_path / "m", tiny_tokenizer, weights=w)
    (tmp_path / "out").mkdir()
    with pytest.raises(ModelFormatError, match=r"model\.layers\.1\.self_attn\.o_proj\.weight.*NaN"):
        pc.convert(src, tmp_path / "out" / "o.gguf", "q8_0", progress=False)
    no_leftovers(tmp_path / "out")


def test_unknown_pre_tokenizer_is_an_error(tiny_tokenizer, tmp_path):
    src = make_llama(tmp_path / "m", tiny_tokenizer)
    tj = json.loads((src / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\p{L}+|\d"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (src / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(UnsupportedError, match=r"unknown pre-tokenizer.*Known: gpt-2"):
        pc.convert(src, tmp_path / "o.gguf", "q8_0", progress=False)
    assert not (tmp_path / "o.gguf").exists()


def test_missing_tokenizer_is_an_error(tiny_tokenizer, tmp_path):
    src = make_llama(tmp_path / "m", tiny_tokenizer)
    (src / "tokenizer.json").unlink()
    with pytest.raises(ModelFormatError, match="no tokenizer.json"):
        pc.convert(src, tmp_path / "o.gguf", "q8_0", progress=False)


def test_not_a_model(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"hello")
    with pytest.raises(ModelFormatError, match="not a GGUF"):
        pc.convert(tmp_path / "x.bin", tmp_path / "o.gguf", "q8_0", progress=False)
    with pytest.raises(ModelFormatError, match="no config.json"):
        pc.convert(tmp_path, tmp_path / "o.gguf", "q8_0", progress=False)
    with pytest.raises(ValueError, match="outtype"):
        pc.convert(tmp_path, tmp_path / "o.gguf", "q3_k", progress=False)


def test_truncated_gguf_input(tiny_tokenizer, tmp_path):
    src = make_llama(tmp_path / "m", tiny_tokenizer)
    good = tmp_path / "good.gguf"
    pc.convert(src, good, "f16", progress=False)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFormatError, match="bad.gguf"):
        pc.convert(bad, tmp_path / "o.gguf", "q8_0", progress=False)


# ------------------------------------------------------------------------ interrupted writes

def test_failure_mid_write_keeps_the_old_output(tiny_tokenizer, tmp_path):
    src = make_llama(tmp_path / "m", tiny_tokenizer)
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "model.gguf"
    out.write_bytes(b"previous good file")
    plan = pc.plan_conversion(src)

    def broken(r0, r1):
        raise OSError("disk went away")
    plan.tensors[7].read_rows = broken
    with pytest.raises(OSError, match="disk went away"):
        writer_mod.write_gguf(plan, out, "q8_0", progress=False)
    assert out.read_bytes() == b"previous good file"
    no_leftovers(outdir, {"model.gguf"})


def _slow_conversion(src: Path, out: Path) -> subprocess.Popen:
    """pyresa-convert in a subprocess, slowed to 0.1 s per tensor so a signal lands mid-write."""
    # Ctrl-C as in a terminal, whatever this test runs under: a shell starts background jobs
    # with SIGINT ignored, children inherit that, and Python then installs no KeyboardInterrupt.
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"import {pc.__name__}.writer as w\n"
        f"from {pc.__name__}.cli import main\n"
        "orig = w._write_tensor\n"
        "def slow(*a):\n"
        "    time.sleep(0.1)\n"
        "    orig(*a)\n"
        "w._write_tensor = slow\n"
        f"sys.exit(main([{str(src)!r}, '-o', {str(out)!r}, '--outtype', 'q4_0']))\n")
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_partial(directory: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if any(".partial-" in p.name for p in directory.iterdir()):
            time.sleep(0.3)  # a few tensors in
            return
        time.sleep(0.02)
    pytest.fail("the conversion never started writing")


def test_ctrl_c_leaves_no_output(tiny_tokenizer, tmp_path):
    src = make_llama(tmp_path / "m", tiny_tokenizer)
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = _slow_conversion(src, outdir / "model.gguf")
    try:
        _wait_for_partial(outdir, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    no_leftovers(outdir)


def test_killed_conversion_leaves_no_output_file(tiny_tokenizer, tmp_path):
    """SIGKILL cannot be cleaned up after: the partial file stays, but OUT never exists."""
    src = make_llama(tmp_path / "m", tiny_tokenizer)
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = _slow_conversion(src, outdir / "model.gguf")
    try:
        _wait_for_partial(outdir, proc)
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (outdir / "model.gguf").exists()


def test_progress_bar_shows_tensor_and_bytes(tiny_tokenizer, tmp_path, capsys):
    src = make_llama(tmp_path / "m", tiny_tokenizer)
    pc.convert(src, tmp_path / "o.gguf", "q8_0", progress=True)
    err = capsys.readouterr().err
    assert "blk.1.ffn_down.weight Q8_0" in err and "output_norm.weight F32" in err
    assert "[20/20]" in err and "100%" in err and "B/s" in err
    pc.convert(src, tmp_path / "p.gguf", "q8_0", progress=False)
    assert capsys.readouterr().err == ""
