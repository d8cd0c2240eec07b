"""pyresa-convert: Hugging Face checkpoints (or GGUF files) to GGUF, quantized natively.

In the source tree this folder is ``convert/``; the wheel installs it as ``pyresa_convert``.
Imports inside the package are relative so it works under either name."""

from __future__ import annotations

from pathlib import Path

from .recipes import OUTTYPES, tensor_type  # noqa: F401


def plan_conversion(src: str | Path):
    """The ConversionPlan for a Hugging Face checkpoint directory or a .gguf file."""
    from pyresa.errors import ModelFormatError

    src = Path(src)
    if src.is_dir():
        from .hf_checkpoint import plan_from_hf
        return plan_from_hf(src)
    if src.is_file():
        with open(src, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            from .gguf_input import plan_from_gguf
            return plan_from_gguf(src)
        raise ModelFormatError(f"{src}: not a GGUF file nor a Hugging Face checkpoint directory")
    raise ModelFormatError(f"{src}: no such file or directory")


def convert(src: str | Path, out: str | Path, outtype: str = "q8_0", *, n_threads: int = 0,
            progress: bool | None = None) -> dict:
    """Convert `src` (HF checkpoint directory or .gguf) to the GGUF `out`; returns a summary."""
    from .writer import write_gguf

    if outtype not in OUTTYPES:
        raise ValueError(f"unknown outtype {outtype!r}; choose from {', '.join(OUTTYPES)}")
    if Path(src).resolve() == Path(out).resolve():
        raise ValueError("the output would overwrite the input; choose another -o path")
    plan = plan_conversion(src)
    return write_gguf(plan, Path(out), outtype, n_threads=n_threads, progress=progress)
