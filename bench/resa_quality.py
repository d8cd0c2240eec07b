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
    ap.add_argument("--analysis", action="store_true",
                    help="also: attention mass kept by the selection vs the oracle's (per layer), perplexity "
                         "with the oracle selection, and resa at larger ratios (slow: reads every key per step)")
    ap.add_argument("--sweep", default="0.2,0.3,0.5", help="ratios for resa in --analysis")
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
    analysis = analyse(model, tokens, args, ppl) if args.analysis and not args.skip_ppl else []
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
            if analysis:
                fh.write("\n" + "\n".join(analysis) + "\n")
            fh.write(f"\n{greedy}\n")


def analyse(model, tokens, args, ppl) -> list[str]:
    """Why sparse decoding loses what it loses on this model: how much of each step's true attention
    mass the selected blocks hold, how much the best n_sel blocks could hold (the oracle), the
    perplexity when the oracle picks the blocks (no descriptor rule can do better), and the ratio
    resa needs to come within 1% of dense."""
    import pyresa

    out = []
    lp = model.score(tokens, prefill=args.prefill, attention="sparse", resa=pyresa.ResaConfig(), audit=True)
    s = model.last_score_stats
    sel, orc = np.array(s["mass_selected"]), np.array(s["mass_oracle"])
    out.append("Attention mass kept per sparse step (mean over steps and KV heads; group-mean softmax), "
               "ReSA's min/max rule vs the oracle's heaviest n_sel blocks, by layer:\n")
    out.append("| layer | " + " | ".join(str(i) for i in range(len(sel))) + " | mean |")
    out.append("|---" * (len(sel) + 2) + "|")
    out.append("| min/max rule | " + " | ".join(f"{x:.2f}" for x in sel) + f" | {sel.mean():.3f} |")
    out.append("| oracle | " + " | ".join(f"{x:.2f}" for x in orc) + f" | {orc.mean():.3f} |")
    out.append("")
    print("\n".join(out), flush=True)
    out.append("| run | perplexity | vs dense |\n|---|---|---|")
    runs = [("sparse, oracle selection", "sparse", pyresa.ResaConfig(selection="oracle")),
            ("resa, oracle selection", "resa", pyresa.ResaConfig(selection="oracle"))]
    runs += [(f"resa, ratio {r}", "resa", pyresa.ResaConfig(ratio=float(r))) for r in args.sweep.split(",")]
    for name, mode, cfg in runs:
        lp = model.score(tokens, prefill=args.prefill, attention=mode, resa=cfg)
        p = float(np.exp(-lp.mean()))
        out.append(f"| {name} | {p:.4f} | {p / ppl['dense'] - 1:+.2%} |")
        print(out[-1], flush=True)
    return out


if __name__ == "__main__":
    main()
