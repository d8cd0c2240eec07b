#!/usr/bin/env python3
"""Same-build A/B of the engine's environment switches on the GPU machine: runs bench/gpu_bench.py
once per variant (a fresh process each: the switches are read when an engine is made) and prints
one table of tokens/s per (depth, mode) and variant. Run after bench/gpu_bench.sh has built
pyresa (it uses that build) and written the 7B model.

    python3 bench/gpu_ab.py --model /root/llamacpp/syn7b.gguf --depths 0,262144 \
        --variant base: --variant noprefetch:PYRESA_CUDA_ATTN_PREFETCH_MB=0,PYRESA_CUDA_KV_EVICT_FIRST=0
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def parse_variant(text):
    name, _, assigns = text.partition(":")
    env = {}
    for item in filter(None, assigns.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {text!r}: expected NAME:VAR=VALUE,VAR=VALUE")
        env[key] = value
    return name, env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--depths", default="0,262144")
    ap.add_argument("--modes", default="dense,resa")
    ap.add_argument("--variant", action="append", required=True, help="NAME:VAR=VALUE,... (NAME: = no change)")
    ap.add_argument("--rounds", type=int, default=1, help="run the variants this many times, interleaved")
    ap.add_argument("--prefill", type=int, default=0, help="also time a prefill of this many tokens (0: none)")
    ap.add_argument("--out", default=None, help="JSON file for every run's figures")
    args = ap.parse_args()
    variants = [parse_variant(v) for v in args.variant]
    bench = Path(__file__).with_name("gpu_bench.py")
    runs = []
    for rnd in range(args.rounds):
        for name, env in variants:
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                cmd = [sys.executable, str(bench), "--model", args.model, "--depths", args.depths, "--modes",
                       args.modes, "--prefill", str(args.prefill), "--sampling", "0", "--out", f.name]
                print(f"== round {rnd} variant {name} {env}", flush=True)
                r = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
                if r.returncode:
                    print(r.stdout[-2000:], r.stderr[-2000:], flush=True)
                    continue
                res = json.load(open(f.name))
            if res.get("prefill"):
                runs.append({"round": rnd, "variant": name, "env": env, "depth": 0, "mode": f"pp{args.prefill}",
                             "tokens_per_s": res["prefill"]["tokens_per_s"], "ms_per_token": None})
            for d in res["decode"]:
                runs.append({"round": rnd, "variant": name, "env": env, "depth": d["depth"], "mode": d["mode"],
                             "tokens_per_s": d["tokens_per_s"], "ms_per_token": d["ms_per_token"]})
            print("   " + ", ".join(f"{r['depth']}/{r['mode']} {r['tokens_per_s']:.1f}" for r in runs
                                if r["round"] == rnd and r["variant"] == name), flush=True)
    if args.out:
        json.dump(runs, open(args.out, "w"), indent=1)
    keys = sorted({(r["depth"], r["mode"]) for r in runs})
    print("\ntok/s (best of rounds)  " + "  ".join(f"{d}/{m}" for d, m in keys))
    for name, _ in variants:
        cells = []
        for k in keys:
            v = [r["tokens_per_s"] for r in runs if r["variant"] == name and (r["depth"], r["mode"]) == k]
            cells.append(f"{max(v):8.1f}" if v else "       -")
        print(f"{name:>22}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
