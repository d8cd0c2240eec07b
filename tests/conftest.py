"""Shared fixtures: the default model, a long real English text, and llama-cpp-python as the
reference implementation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GPL3 = Path("/usr/share/common-licenses/GPL-3")

# Subprocesses the tests start (`python -m pyresa ...`) must import the installed pyresa, not the
# source folder of the same name in the working directory (it has no compiled _core). Python
# 3.11+ leaves the working directory off sys.path with this; a developer's explicit PYTHONPATH
# (the dev build links _core into the source tree) still applies.
os.environ.setdefault("PYTHONSAFEPATH", "1")


@pytest.fixture(scope="session")
def model_path() -> Path:
    from pyresa.default_model import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def english_text() -> str:
    """The GPL version 3: ~7,600 tokens of real English prose."""
    if not GPL3.exists():
        pytest.skip(f"{GPL3} is missing (Debian's base-files provides it)")
    return GPL3.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def model(model_path):
    import pyresa

    return pyresa.Model(model_path, n_ctx=4096)


@pytest.fixture(scope="session")
def threads() -> int:
    return int(os.environ.get("PYRESA_TEST_THREADS", "2"))


def llama_reference(path, *, n_ctx=4096, logits_all=False, flash_attn=True, threads=2):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, flash_attn=flash_attn,
                           n_threads=threads, verbose=False)


# The ReSA tests' text and model: 700 tokens of the English text, a 1,024-token context.
@pytest.fixture(scope="module")
def tokens(model, english_text):
    return model.tokenize(english_text)[:700]


@pytest.fixture(scope="module")
def resa_model(model_path):
    import pyresa

    return pyresa.Model(model_path, n_ctx=1024)
