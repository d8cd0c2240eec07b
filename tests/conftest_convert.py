"""Fixtures and helpers for the converter tests (imported by tests/test_convert*.py).

Checkpoints are built once per session: the default model's GGUF loaded by transformers and
saved as a Hugging Face checkpoint (real weights, llama), and a random small Qwen2ForCausalLM
with the real Qwen tokenizer from the 7B header in shared/models."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

try:  # the wheel installs convert/ as pyresa.convert; the source tree has it as convert/
    import pyresa.convert as pc  # noqa: F401
except ImportError:
    import convert as pc  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
# shared/ sits inside the checkout, beside it (CI), or at /work/shared (developer machines).
_HEADER = Path("models") / "r1-distill-qwen-7b-q4_k_m.header.gguf"
QWEN_HEADER = next((p / _HEADER for p in (REPO / "shared", REPO.parent / "shared", Path("/work/shared"))
                    if (p / _HEADER).exists()), Path("/work/shared") / _HEADER)

# Text that exercises the pre-tokenizers: code, unicode, numbers, whitespace runs, contractions.
TOKENIZER_TEXTS = [
    "Hello world",
    "The year 2024 had 366 days; π ≈ 3.14159 and 1,234,567.89 is a number.",
    "def add(a, b):\n    return a + b  # sum\n\n\nclass Foo:\n\tpass\n",
    "   leading spaces and    runs of   spaces   \n\n\n   ",
    "Ünïcödé: naïve café, Москва, 東京タワー, 北京, emoji 🤖🚀 and ß",
    "I'm sure you're right, they've said it'll work, we'd know. DON'T SHOUT",
    "x=1;y=22;z=333;w=4444;v=55555 0123456789",
    "<html><body class=\"main\">&amp; ok</body></html>",
    "tabs\tand\r\nwindows\r\nlines\u00a0nbsp",
    "mixed123abc456 ABC-def_ghi.jkl/mno\\pqr",
]
LOGIT_TEXT = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
    "nothing to do: once or twice she had peeped into the book her sister was reading, but it had "
    "no pictures or conversations in it, 'and what is the use of a book,' thought Alice 'without "
    "pictures or conversations?' So she was considering in her own mind (as well as she could, for "
    "the hot day made her feel very sleepy and stupid), whether the pleasure of making a daisy-chain "
    "would be worth the trouble of getting up and picking the daisies, when suddenly a White Rabbit "
    "with pink eyes ran close by her.\n\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
    "print([fib(i) for i in range(10)])  # 0 1 1 2 3 5 8 13 21 34\n")


def have_module(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


needs_torch = pytest.mark.skipif(not (have_module("torch") and have_module("transformers")),
                                 reason="needs torch + transformers (pip install pyresa[convert-test])")


def default_model_path() -> Path:
    from pyresa.default_model import default_model_path as p
    return p()


def read_header_only(path: Path, tmp_dir: Path):
    """GGUFReader over a header-only GGUF: a sparse copy extended to the size its tensors need."""
    import gguf
    sparse = tmp_dir / path.name
    if not sparse.exists():
        shutil.copyfile(path, sparse)
        with open(sparse, "r+b") as f:
            f.truncate(6 << 30)  # sparse: no disk used
    return gguf.GGUFReader(sparse)


def vocab_only_copy(path: Path, tmp_dir: Path) -> Path:
    """A GGUF with `path`'s metadata and no tensors (llama.cpp loads it with vocab_only)."""
    import gguf
    out = tmp_dir / (path.stem + ".vocab.gguf")
    if not out.exists():
        r = read_header_only(path, tmp_dir)
        w = gguf.GGUFWriter(out, r.fields["general.architecture"].contents())
        for key, f in r.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture":
                continue
            vtype = gguf.GGUFValueType(f.types[0])
            sub = gguf.GGUFValueType(f.types[1]) if vtype == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(key, f.contents(), vtype, sub_type=sub)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
    return out


# --------------------------------------------------------------------------------- checkpoints

def save_hf_from_gguf(gguf_path: Path, out: Path) -> Path:
    """Load a GGUF with transformers and save it as a float32 safetensors checkpoint + tokenizer
    (save_pretrained refuses GGUF-loaded models, so: from_config + load_state_dict)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    cfg = m.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    fresh.load_state_dict(m.state_dict(), strict=False)
    fresh.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(out)
    return out


def qwen_tokenizer_files(out: Path, tmp_dir: Path) -> None:
    """tokenizer.json + tokenizer_config.json of DeepSeek-R1-Distill-Qwen, rebuilt from the GGUF
    header's vocabulary with `tokenizers` so special tokens keep their real ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    r = read_header_only(QWEN_HEADER, tmp_dir)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in r.fields["tokenizer.ggml.merges"].contents()]
    vocab = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 1}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty == 3:
            tok.add_special_tokens([AddedToken(t, special=True, normalized=False)])
        elif ty == 4:
            tok.add_tokens([AddedToken(t, special=False, normalized=False)])
        else:
            continue
        assert tok.token_to_id(t) == i, (t, i, tok.token_to_id(t))
    tok.save(str(out / "tokenizer.json"))
    ids = {k: int(r.fields[f"tokenizer.ggml.{k}_token_id"].contents()) for k in ("bos", "eos", "padding")}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokens[ids["bos"]], "eos_token": tokens[ids["eos"]], "pad_token": tokens[ids["padding"]],
        "add_bos_token": True, "add_eos_token": False,
        "chat_template": r.fields["tokenizer.chat_template"].contents(),
    }, ensure_ascii=False, indent=1))


def make_random_qwen2(out: Path, tmp_dir: Path, *, hidden: int = 256, layers: int = 2, tied: bool = False) -> Path:
    """A random Qwen2ForCausalLM (no download) whose logits are peaked enough that top-1 is a
    meaningful check: larger-than-default init, random norms and q/k/v biases."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=152064, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=10000.0,
                      tie_word_embeddings=tied, bos_token_id=151646, eos_token_id=151643)
    cfg.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).float()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))
    model.save_pretrained(out)
    qwen_tokenizer_files(out, tmp_dir)
    return out


@pytest.fixture(scope="session")
def smol_hf(tmp_path_factory) -> Path:
    """The default model (SmolLM2-135M-Instruct, llama) as a float32 HF checkpoint."""
    if not (have_module("torch") and have_module("transformers") and have_module("accelerate")):
        pytest.skip("needs torch + transformers + accelerate (pip install pyresa[convert-test])")
    return save_hf_from_gguf(default_model_path(), tmp_path_factory.mktemp("smol_hf"))


@pytest.fixture(scope="session")
def qwen_hf(tmp_path_factory) -> Path:
    if not (have_module("torch") and have_module("transformers")):
        pytest.skip("needs torch + transformers (pip install pyresa[convert-test])")
    if not QWEN_HEADER.exists():
        pytest.skip(f"no Qwen header GGUF at {QWEN_HEADER}")
    tmp = tmp_path_factory.mktemp("qwen_hf")
    return make_random_qwen2(tmp, tmp_path_factory.mktemp("qwen_header"))


class Converted:
    """Converted GGUFs of one checkpoint, cached per session by outtype."""

    def __init__(self, src: Path, root: Path):
        self.src, self.root, self.files = src, root, {}

    def __call__(self, outtype: str) -> Path:
        if outtype not in self.files:
            out = self.root / f"{self.src.name}-{outtype}.gguf"
            pc.convert(self.src, out, outtype, progress=False)
            self.files[outtype] = out
        return self.files[outtype]


@pytest.fixture(scope="session")
def smol_gguf(smol_hf, tmp_path_factory) -> Converted:
    return Converted(smol_hf, tmp_path_factory.mktemp("smol_gguf"))


@pytest.fixture(scope="session")
def qwen_gguf(qwen_hf, tmp_path_factory) -> Converted:
    return Converted(qwen_hf, tmp_path_factory.mktemp("qwen_gguf"))


# ------------------------------------------------------------------------------------ oracles

def hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].float().numpy()


def hf_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_dir)


def llama_cpp_logits(gguf_path: Path, ids: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(str(gguf_path), logits_all=True, verbose=False, n_ctx=max(512, len(ids) + 8),
                n_threads=min(2, os.cpu_count() or 1), n_batch=512)
    try:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], dtype=np.float32)
    finally:
        llm.close()


def llama_cpp_vocab(gguf_path: Path):
    from llama_cpp import Llama
    return Llama(str(gguf_path), vocab_only=True, verbose=False)


def pyresa_logits(gguf_path: Path, ids: list[int], tmp_dir: Path) -> np.ndarray:
    """pyresa.Model(path).logits(ids), in a child process: a crash in the native runtime fails
    one test instead of taking the whole session down. Skips while pyresa.Model does not exist;
    a crash becomes an xfail naming the signal (the runtime, not the converter, is at fault)."""
    import subprocess
    import sys

    import pyresa
    if not hasattr(pyresa, "Model"):
        pytest.skip("pyresa.Model (the runtime) has not landed on this branch yet")
    ids_file, out_file = tmp_dir / "ids.npy", tmp_dir / "pyresa_logits.npy"
    np.save(ids_file, np.asarray(ids, dtype=np.int32))
    script = ("import sys, numpy as np, pyresa\n"
              "ids = np.load(sys.argv[2]).tolist()\n"
              "m = pyresa.Model(sys.argv[1], n_ctx=max(512, len(ids) + 8))\n"
              "np.save(sys.argv[3], np.asarray(m.logits(ids), dtype=np.float32))\n")
    r = subprocess.run([sys.executable, "-c", script, str(gguf_path), str(ids_file), str(out_file)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if r.returncode < 0:
        pytest.xfail(f"pyresa.Model crashed with signal {-r.returncode} on {gguf_path.name} "
                     f"(native runtime, CPU kernels {os.environ.get('PYRESA_CPU_ISA', 'auto')}); {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr
    return np.load(out_file)


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(-1) == b.argmax(-1)))


def safetensors_weight(model_dir: Path, name: str) -> np.ndarray:
    """A tensor of an HF checkpoint as float32, through the safetensors package (an oracle
    independent of the converter's own reader)."""
    from safetensors import safe_open
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(f, framework="numpy") as st:
            if name in st.keys():
                return st.get_tensor(name).astype(np.float32)
    raise KeyError(name)
