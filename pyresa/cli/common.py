"""Flags shared by the subcommands (model, device, context, attention, sampling) and the code
that turns them into a Model and sampling keyword arguments."""

from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("-c", "--ctx-size", type=int, default=None, help="context window in tokens (default: the model's)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    g = p.add_argument_group("attention (ReSA)")
    g.add_argument("--attention", choices=["dense", "sparse", "resa"], default="dense",
                   help="decode attention: dense, block-sparse, or ReSA (sparse + rectification)")
    g.add_argument("--block-size", type=int, default=None, help="tokens per KV block (default 16)")
    g.add_argument("--ratio", type=float, default=None, help="share of KV blocks each decode step reads (default 0.1)")
    g.add_argument("--min-blocks", type=int, default=None, help="read at least this many blocks (default 16)")
    g.add_argument("--local-blocks", type=int, default=None, help="most recent blocks always read (default 1)")
    g.add_argument("--rectify-every", type=int, default=None, help="dense rectification every f tokens (default 32)")


def add_sampling_args(p: argparse.ArgumentParser, *, max_tokens: int = 256) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--max-tokens", type=int, default=max_tokens, help=f"tokens to generate (default {max_tokens})")
    g.add_argument("--temperature", "--temp", type=float, default=0.8, help="0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=40)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--min-p", type=float, default=0.05)
    g.add_argument("--repeat-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def resa_kwargs(args: argparse.Namespace) -> dict:
    """attention/resa keyword arguments for Model(), from the flags."""
    fields = {"block_size": args.block_size, "ratio": args.ratio, "min_blocks": args.min_blocks,
              "local_blocks": args.local_blocks, "rectify_every": args.rectify_every}
    given = {k: v for k, v in fields.items() if v is not None}
    kwargs: dict = {}
    if args.attention != "dense":
        kwargs["attention"] = args.attention
    if given:
        from pyresa.resa import ResaConfig

        kwargs["resa"] = ResaConfig(**given)
    return kwargs


def load_model(args: argparse.Namespace):
    from pyresa.model import Model

    return Model(args.model, n_ctx=args.ctx_size, threads=args.threads, device=args.device, **resa_kwargs(args))


def sampling_kwargs(args: argparse.Namespace) -> dict:
    return {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "min_p": args.min_p, "repeat_penalty": args.repeat_penalty,
            "seed": args.seed, "stop": args.stop}
