"""ReSA quality on the CPU (issue 6): decode-mode perplexity of dense, sparse and resa on a real
English text (prefill N, teacher-force the rest), and greedy-generation agreement with dense
after a long prompt (tokens until the first divergence). --record appends to results/RESULTS.md."""

from __future__ import annotations

import argparse
import datetime
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--prefill", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--greedy-prompt", type=int, default=4000, help="prompt tokens before greedy generation")
    ap.add_argument("--greedy-tokens", type=int, default=256)
    ap.add_argument("--skip-ppl", action="store_true")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()

    import pyresa

    model = pyresa.Model(n_ctx=8192, threads=args.threads)
    tokens = model.tokenize(Path(args.text).read_text())
    cfg = pyresa.ResaConfig()
    lines = []
    if not args.skip_ppl:
        ppl = {}
        for mode in ("dense", "sparse", "resa"):
            lp = model.score(tokens, prefill=args.prefill, attention=mode, resa=cfg)
            s = model.last_score_stats
            ppl[mode] = float(np.exp(-lp.mean()))
            read = s["blocks_read"] / s["blocks_total"]
            lines.append(f"| {mode} | {ppl[mode]:.4f} | {ppl[mode] / ppl.get('dense', ppl[mode]) - 1:+.2%} | "
                         f"{read:.1%} | {s['rectifications']} |")
            print(lines[-1], flush=True)
    prompt = tokens[: args.greedy_prompt]
    outs = {}
    for mode in ("dense", "sparse", "resa"):
        model.set_attention(mode, cfg)
        model.reset()
        outs[mode] = [c.token for c in model.generate(prompt, max_tokens=args.greedy_tokens, temperature=0)
                      if c.token is not None]
    model.set_attention("dense")
    agree = {}
    for mode in ("sparse", "resa"):
        a, b = outs["dense"], outs[mode]
        agree[mode] = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    greedy = (f"Greedy after a {len(prompt)}-token prompt, {args.greedy_tokens} tokens: first divergence from "
              f"dense at token {agree['sparse']} (sparse), {agree['resa']} (resa).")
    print(greedy)
    if args.record:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        from bench_cpu import machine

        with open(ROOT / "results" / "RESULTS.md", "a") as fh:
            fh.write(f"\n### ReSA quality, {datetime.date.today()} (commit {commit})\n"
                     f"Machine: {machine()}. Model {model.path.name}; text {Path(args.text).name} "
                     f"({len(tokens)} tokens), prefill {args.prefill}, the rest decoded in each mode; ResaConfig "
                     f"defaults (resa_0.1_32).\n\n")
            if lines:
                fh.write("| mode | perplexity | vs dense | KV blocks read | rectifications |\n|---|---|---|---|---|\n")
                fh.write("\n".join(lines) + "\n")
            fh.write(f"\n{greedy}\n")


if __name__ == "__main__":
    main()
