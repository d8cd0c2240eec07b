"""`pyresa eval [MODEL] --text FILE --prefill N`: the paper's "language modelling in decode
mode": prefill N tokens densely, then teacher-force every later token through the decode path
of each attention mode; print perplexities and plot NLL against position (PNG)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from pyresa.cli.common import add_model_args, load_model, resa_kwargs


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="perplexity of dense, sparse and resa decoding on a text, with a plot",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--text", required=True, help="a text file (UTF-8)")
    p.add_argument("--prefill", type=int, default=1024, help="tokens prefilled densely before decoding")
    p.add_argument("--max-tokens", type=int, default=None, help="use at most this many tokens of the text")
    p.add_argument("--modes", default="dense,sparse,resa", help="comma-separated attention modes")
    p.add_argument("--plot", default="eval.png", help="PNG to write (NLL against position); '' for none")
    p.add_argument("--window", type=int, default=128, help="moving-average window of the plot")
    p.add_argument("--selection", choices=["minmax", "oracle"], default="minmax",
                   help="block selection of sparse steps: ReSA's min/max rule, or the oracle (the blocks of "
                        "largest true attention mass: reads the whole cache, the bound for any rule; CPU only)")
    p.add_argument("--audit", action="store_true",
                   help="also print, per layer, the attention mass the selected blocks keep and the most any "
                        "blocks of that number could keep (slow: reads every key at every step; CPU only)")
    p.set_defaults(func=run)


def moving_average(x: np.ndarray, w: int) -> np.ndarray:
    w = max(1, min(w, len(x)))
    c = np.cumsum(np.insert(x, 0, 0.0))
    return (c[w:] - c[:-w]) / w


def print_audit(selected: list[float], oracle: list[float]) -> None:
    """Attention mass kept per layer: the selection's and the oracle's (mean over sparse steps)."""
    print(f"         attention mass kept: selection {np.mean(selected):.3f}, oracle {np.mean(oracle):.3f} (mean); by layer:")
    for first in range(0, len(selected), 10):
        cols = range(first, min(first + 10, len(selected)))
        print("         " + "  ".join(f"L{i:<2d} {selected[i]:.2f}/{oracle[i]:.2f}" for i in cols))


def run(args: argparse.Namespace) -> int:
    from pyresa.resa import ResaConfig, check_mode

    modes = [check_mode(m.strip()) for m in args.modes.split(",") if m.strip()]
    with open(args.text, encoding="utf-8") as fh:
        text = fh.read()
    model = load_model(args)
    tokens = model.tokenize(text)
    if args.max_tokens:
        tokens = tokens[: args.max_tokens]
    tokens = tokens[: model.n_ctx]
    if len(tokens) <= args.prefill + 1:
        print(f"pyresa eval: the text has {len(tokens)} tokens, not more than --prefill {args.prefill}", file=sys.stderr)
        return 2
    resa = resa_kwargs(args).get("resa") or ResaConfig()
    if args.selection != resa.selection:
        resa = dataclasses.replace(resa, selection=args.selection)
    print(f"{model.path.name}: {len(tokens)} tokens, prefill {args.prefill}, decode {len(tokens) - args.prefill}; "
          f"ResaConfig {resa}")
    results = {}
    for mode in modes:
        t0 = time.perf_counter()
        lp = model.score(tokens, prefill=args.prefill, attention=mode, resa=resa, audit=args.audit and mode != "dense")
        dt = time.perf_counter() - t0
        s = model.last_score_stats
        read = s["blocks_read"] / s["blocks_total"] if s["blocks_total"] else 1.0
        results[mode] = -lp
        print(f"  {mode:6s} perplexity {np.exp(-lp.mean()):8.4f}   mean NLL {-lp.mean():.4f}   "
              f"KV blocks read {read:6.1%}   rectifications {s['rectifications']:4d}   {len(lp) / dt:6.1f} tok/s")
        if "mass_selected" in s:
            print_audit(s["mass_selected"], s["mass_oracle"])
    if "dense" in results:
        base = np.exp(results["dense"].mean())
        for mode, nll in results.items():
            if mode != "dense":
                print(f"  {mode} vs dense: perplexity {np.exp(nll.mean()) / base - 1:+.2%}")
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("pyresa eval: matplotlib is not installed (pip install matplotlib); no plot written", file=sys.stderr)
            return 0
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for mode, nll in results.items():
            avg = moving_average(nll, args.window)
            x = np.arange(len(avg)) + args.prefill + args.window // 2
            ax.plot(x, avg, label=f"{mode} (ppl {np.exp(nll.mean()):.3f})", linewidth=1.2)
        ax.set_xlabel("position (tokens)")
        ax.set_ylabel(f"NLL, moving average over {args.window} tokens")
        ax.set_title(f"{model.path.name}: decode-mode language modelling, prefill {args.prefill}")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")
    return 0
