"""Flags shared by the subcommands (model, device, context, attention/ReSA, sampling) and the
code that turns them into a Model and sampling keyword arguments.

Attention options are passed to Model only when given, so these flags work before and after
Model learns them; a flag the installed Model does not accept is a clear error, not a crash."""

from __future__ import annotations

import argparse
import inspect
import sys

DEFAULT_CLI_N_CTX = 4096  # llama.cpp's default too; long-context models would otherwise allocate 128K of KV

RESA_FIELDS = ("block_size", "ratio", "min_blocks", "local_blocks", "rectify_every")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="path of a .gguf file (default: SmolLM2-135M-Instruct Q4_1, fetched on first use)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--n-ctx", "-c", type=int, default=None, metavar="N",
                   help=f"context size in tokens (default: the model's, at most {DEFAULT_CLI_N_CTX})")
    p.add_argument("--threads", "-t", type=int, default=None, metavar="N",
                   help="CPU threads (default: all cores)")


def add_attention_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attention (ReSA)")
    g.add_argument("--attention", choices=("dense", "sparse", "resa"), default=None,
                   help="dense, block-sparse, or sparse with periodic dense rectification (default: the model's)")
    g.add_argument("--block-size", type=int, default=None, metavar="N", help="tokens per KV block (16)")
    g.add_argument("--ratio", type=float, default=None, metavar="R", help="share of KV blocks read per step (0.1)")
    g.add_argument("--min-blocks", type=int, default=None, metavar="N", help="fewest blocks read per step (16)")
    g.add_argument("--local-blocks", type=int, default=None, metavar="N", help="newest blocks always read (1)")
    g.add_argument("--rectify-every", type=int, default=None, metavar="N",
                   help="decoded tokens between dense rectifications (32)")


def add_sampling_args(p: argparse.ArgumentParser, *, max_tokens_default: int | None) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", "-n", type=int, default=max_tokens_default, metavar="N",
                   help=f"most tokens per reply, -1 for no limit but the context (default: {max_tokens_default})")
    g.add_argument("--temperature", "--temp", type=float, default=None, metavar="T", help="0 is greedy (0.8)")
    g.add_argument("--top-k", type=int, default=None, metavar="K", help="0 is off (40)")
    g.add_argument("--top-p", type=float, default=None, metavar="P", help="(0.95)")
    g.add_argument("--min-p", type=float, default=None, metavar="P", help="(0.05)")
    g.add_argument("--repeat-penalty", type=float, default=None, metavar="X", help="1.0 is off (1.0)")
    g.add_argument("--seed", type=int, default=None, metavar="N", help="for reproducible sampling")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments for Model.generate / Model.chat: only the flags that were given."""
    out = {}
    for name in ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    max_tokens = getattr(args, "max_tokens", None)
    out["max_tokens"] = None if max_tokens is not None and max_tokens < 0 else max_tokens
    return out


def attention_kwargs(args: argparse.Namespace) -> dict:
    """Model constructor arguments for --attention and the ResaConfig flags (empty when none given)."""
    import pyresa
    from pyresa.model import Model

    fields = {f: getattr(args, f, None) for f in RESA_FIELDS}
    fields = {k: v for k, v in fields.items() if v is not None}
    mode = getattr(args, "attention", None)
    if mode is None and not fields:
        return {}
    params = inspect.signature(Model.__init__).parameters
    if "attention" not in params:
        raise SystemExit("pyresa: this build has no --attention / ReSA options yet (dense attention only)")
    out = {}
    if mode is not None:
        out["attention"] = mode
    if fields:
        config_cls = getattr(pyresa, "ResaConfig", None)
        name = next((n for n in params if "resa" in n.lower()), None)
        if config_cls is None or name is None:
            raise SystemExit("pyresa: this build has no ResaConfig; --block-size, --ratio, ... are not available")
        out[name] = config_cls(**fields)
    return out


def resolve_n_ctx(args: argparse.Namespace, path) -> int:
    if args.n_ctx is not None:
        return args.n_ctx
    from pyresa.gguf_file import open_gguf

    return min(DEFAULT_CLI_N_CTX, int(open_gguf(path).config["n_ctx_train"]))


def load_model(args: argparse.Namespace):
    """The Model the flags describe. Errors (missing file, bad option) end the program with a
    one-line message instead of a traceback."""
    import pyresa
    from pyresa.default_model import default_model_path

    try:
        path = args.model if args.model is not None else default_model_path()
        return pyresa.Model(path, n_ctx=resolve_n_ctx(args, path), threads=args.threads, device=args.device,
                            **attention_kwargs(args))
    except (pyresa.PyresaError, OSError, ValueError, TypeError) as e:
        print(f"pyresa: cannot load the model: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def load_tokenizer_quietly(model) -> None:
    """Loads the tokenizer now (not during the first message) without llama.cpp's load-time
    warnings on the terminal; they are shown if loading fails."""
    import os
    import tempfile

    sys.stderr.flush()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced (pytest capture, IDEs)
        model.tokenizer.llama
        return
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), fd)
        try:
            model.tokenizer.llama
        except BaseException:
            os.dup2(saved, fd)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, fd)
            os.close(saved)
