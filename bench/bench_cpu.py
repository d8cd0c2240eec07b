"""Decode and prefill speed of pyresa against llama-cpp-python, side by side in one process run:
same model, same threads, same tokens (real English text). Prints a Markdown table and, with
--record, appends it to results/RESULTS.md with the machine's description.

Decode at depth d: prefill d tokens, then time N single-token evaluations (the raw decode step
of each library, no sampling), greedy tokens of the text itself. For ReSA modes (when given),
rectification is included in the timed steps."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

TEXT = Path("/usr/share/common-licenses/GPL-3")
ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from pyresa import _core

    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, pyresa ISA {_core.cpu_isa()}"


def corpus_tokens(model, n: int) -> list[int]:
    text = TEXT.read_text()
    tokens = model.tokenize(text)
    while len(tokens) < n:
        tokens += tokens
    return tokens[:n]


def time_pyresa(model, tokens, depth, n_decode, mode):
    eng = model._engine
    if mode != "dense":
        model.set_attention(mode)
    eng.truncate(0)
    if depth:
        eng.eval(np.asarray(tokens[:depth], dtype=np.int32), False)
    steps = [np.asarray([t], dtype=np.int32) for t in tokens[depth: depth + n_decode]]
    eng.reset_stats() if hasattr(eng, "reset_stats") else None
    t0 = time.perf_counter()
    for s in steps:
        eng.eval(s, False)
    dt = time.perf_counter() - t0
    stats = eng.stats() if hasattr(eng, "stats") else {}
    if mode != "dense":
        model.set_attention("dense")
    return n_decode / dt, stats


def time_llama(llm, tokens, depth, n_decode):
    llm.reset()
    if depth:
        llm.eval(tokens[:depth])
    t0 = time.perf_counter()
    for t in tokens[depth: depth + n_decode]:
        llm.eval([t])
    return n_decode / (time.perf_counter() - t0)


def time_prefill(fn, reps=2):
    best = 1e9
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depths", default="0,2048,7000")
    ap.add_argument("--decode", type=int, default=128, help="decoded tokens per figure")
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--modes", default="dense", help="pyresa attention modes: dense,sparse,resa")
    ap.add_argument("--record", action="store_true", help="append the table to results/RESULTS.md")
    args = ap.parse_args()

    import pyresa
    from llama_cpp import Llama

    depths = [int(d) for d in args.depths.split(",")]
    modes = args.modes.split(",")
    n_ctx = max(depths) + args.decode + 16
    model = pyresa.Model(args.model, n_ctx=max(n_ctx, args.prefill + 16), threads=args.threads)
    llm = Llama(str(model.path), n_ctx=max(n_ctx, args.prefill + 16), n_batch=512, n_threads=args.threads,
                flash_attn=True, verbose=False)
    tokens = corpus_tokens(model, max(n_ctx, args.prefill))

    rows = []
    for depth in depths:
        ref = time_llama(llm, tokens, depth, args.decode)
        row = {"depth": depth, "llama.cpp dense": ref}
        for mode in modes:
            tps, stats = time_pyresa(model, tokens, depth, args.decode, mode)
            row[f"pyresa {mode}"] = tps
            if stats.get("blocks_total"):
                row[f"{mode} KV read"] = stats["blocks_read"] / stats["blocks_total"]
        rows.append(row)
        print(row, flush=True)

    pre = tokens[: args.prefill]
    t_ref = time_prefill(lambda: (llm.reset(), llm.eval(pre)))
    t_ours = time_prefill(lambda: (model._engine.truncate(0), model._engine.eval(np.asarray(pre, dtype=np.int32), False)))

    lines = [f"| depth | llama.cpp dense tok/s | " + " | ".join(f"pyresa {m} tok/s (ratio)" for m in modes) + " |",
             "|---|---|" + "---|" * len(modes)]
    for r in rows:
        cells = []
        for m in modes:
            v = r[f"pyresa {m}"]
            extra = f", reads {r[f'{m} KV read']:.0%} of KV" if f"{m} KV read" in r else ""
            cells.append(f"{v:.1f} ({v / r['llama.cpp dense']:.2f}x{extra})")
        lines.append(f"| {r['depth']} | {r['llama.cpp dense']:.1f} | " + " | ".join(cells) + " |")
    lines.append(f"\nPrefill {args.prefill} tokens: pyresa {args.prefill / t_ours:.0f} tok/s, "
                 f"llama.cpp {args.prefill / t_ref:.0f} tok/s ({t_ref / t_ours:.2f}x).")
    table = "\n".join(lines)
    print(table)
    if args.record:
        import llama_cpp

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        header = (f"\n### CPU decode/prefill, {datetime.date.today()} (commit {commit})\n"
                  f"Machine: {machine()}. Threads: {args.threads}. Model: {model.path.name}. "
                  f"llama-cpp-python {llama_cpp.__version__} (flash attention on). "
                  f"{args.decode} decoded tokens per figure.\n\n")
        with open(ROOT / "results" / "RESULTS.md", "a") as fh:
            fh.write(header + table + "\n")


if __name__ == "__main__":
    main()
