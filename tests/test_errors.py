"""Bad input gets a clear pyresa error naming the problem, never a crash, and the user's file
is left exactly as it was."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

import pyresa
from pyresa.errors import ContextFullError, ModelFormatError, ModelNotFoundError, PyresaError, UnsupportedError


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_model_with(tmp_path, model_path, name, edit) -> "Path":
    """A copy of the default model rewritten through gguf with `edit(metadata, tensors)`."""
    import gguf

    reader = gguf.GGUFReader(model_path)
    arch = reader.fields["general.architecture"].contents()
    out = tmp_path / name
    meta = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: t for t in reader.tensors}
    arch = edit(meta, tensors) or arch
    writer = gguf.GGUFWriter(out, arch)
    for key, f in meta.items():
        if key == "general.architecture":
            continue
        val = f.contents()
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, val, vtype, sub_type=f.types[-1])
        else:
            writer.add_key_value(key, val, vtype)
    for t in tensors.values():
        shape = [int(x) for x in reversed(t.shape)]
        writer.add_tensor(t.name, np.asarray(t.data), raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        pyresa.Model(tmp_path / "nope.gguf")


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello, this is not a model\n")
    before = digest(bad)
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        pyresa.Model(bad)
    assert digest(bad) == before


@pytest.mark.parametrize("keep", [0.5, 0.999, 4096 / 98362432])
def test_truncated_file(tmp_path, model_path, keep):
    data = model_path.read_bytes()
    cut = tmp_path / "truncated.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    before = digest(cut)
    with pytest.raises(ModelFormatError, match="truncated|corrupt"):
        pyresa.Model(cut)
    assert digest(cut) == before


def test_unsupported_architecture(tmp_path, model_path):
    def edit(meta, tensors):
        return "gpt2"

    path = copy_model_with(tmp_path, model_path, "gpt2.gguf", edit)
    with pytest.raises(UnsupportedError, match="architecture 'gpt2'"):
        pyresa.Model(path)


def test_missing_tensor(tmp_path, model_path):
    def edit(meta, tensors):
        del tensors["blk.7.ffn_up.weight"]

    path = copy_model_with(tmp_path, model_path, "missing.gguf", edit)
    with pytest.raises(ModelFormatError, match="blk.7.ffn_up.weight"):
        pyresa.Model(path)


def test_unsupported_tensor_type(tmp_path, model_path):
    """A Q2_K tensor (a real ggml type pyresa does not run) is named in the error."""
    import gguf

    class Fake:
        def __init__(self, t, data, ttype):
            self.name, self.shape, self.data, self.tensor_type = t.name, t.shape, data, ttype

    def edit(meta, tensors):
        t = tensors["blk.0.attn_q.weight"]  # 576 x 576: Q2_K needs rows of 256-multiples; 576 isn't
        t2 = tensors["blk.0.ffn_down.weight"]  # 1536 x 576 -> rows of 1536 = 6 Q2_K blocks of 84 bytes
        rows = int(t2.shape[1])
        data = np.zeros((rows, 6 * 84), dtype=np.uint8)
        tensors[t2.name] = Fake(t2, data, gguf.GGMLQuantizationType.Q2_K)

    path = copy_model_with(tmp_path, model_path, "q2k.gguf", edit)
    with pytest.raises(UnsupportedError, match=r"blk\.0\.ffn_down\.weight.*Q2_K"):
        pyresa.Model(path)


def test_prompt_longer_than_context(model_path):
    m = pyresa.Model(model_path, n_ctx=64)
    with pytest.raises(ContextFullError, match="n_ctx"):
        list(m.generate(list(range(100, 200)), max_tokens=4))
    with pytest.raises(ContextFullError):
        m.logits(list(range(100, 200)))
    # the model is still usable afterwards
    assert m.logits([1, 2, 3]).shape == (3, m.n_vocab)


def test_generation_stops_at_the_context_end(model_path):
    m = pyresa.Model(model_path, n_ctx=40)
    chunks = list(m.generate(list(range(100, 130)), max_tokens=100, temperature=0))
    assert chunks[-1].finish_reason == "length"
    assert sum(c.token is not None for c in chunks) <= 11


def test_bad_token_ids_and_arguments(model):
    with pytest.raises(PyresaError, match="outside the vocabulary"):
        model.logits([1, model.n_vocab + 5])
    with pytest.raises(PyresaError, match="temperature"):
        model.generate("hi", temperature=-1)
    with pytest.raises(PyresaError, match="top_p"):
        model.generate("hi", top_p=0)
    with pytest.raises(PyresaError, match="role"):
        model.chat([{"content": "no role"}])
    with pytest.raises(PyresaError, match="device"):
        pyresa.Model(model.path, device="tpu")


def test_errors_are_all_pyresa_errors():
    for cls in (ContextFullError, ModelFormatError, ModelNotFoundError, UnsupportedError):
        assert issubclass(cls, PyresaError)
