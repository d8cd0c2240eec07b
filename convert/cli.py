"""The `pyresa-convert` command."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from . import OUTTYPES, convert


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pyresa-convert",
        description="Convert a Hugging Face checkpoint directory (LlamaForCausalLM, MistralForCausalLM, "
                    "Qwen2ForCausalLM; safetensors + tokenizer.json) or a GGUF file to a GGUF file.")
    p.add_argument("src", help="checkpoint directory, or a .gguf to requantize")
    p.add_argument("-o", "--outfile", required=True, help="output .gguf (written atomically)")
    p.add_argument("--outtype", default="q8_0", choices=list(OUTTYPES),
                   help="tensor types; *_m are llama.cpp's mixtures (see docs/convert.md). Default q8_0")
    p.add_argument("--threads", type=int, default=0, help="quantization threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    from pyresa.errors import PyresaError

    t0 = time.perf_counter()
    try:
        info = convert(args.src, args.outfile, args.outtype, n_threads=args.threads,
                       progress=False if args.no_progress else None)
    except (PyresaError, OSError, ValueError) as e:
        print(f"pyresa-convert: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyresa-convert: interrupted; no output written", file=sys.stderr)
        return 130
    types = ", ".join(f"{k} {v}" for k, v in sorted(info["types"].items()))
    print(f"wrote {info['path']}: {info['bytes'] / 2**20:.1f} MiB, {info['tensors']} tensors ({types}) "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
