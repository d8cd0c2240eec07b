"""`pyresa generate [MODEL] -p TEXT`: stream a continuation to the terminal."""

from __future__ import annotations

import argparse
import sys

from pyresa.cli.common import add_model_args, add_sampling_args, load_model, sampling_kwargs


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt, streaming to the terminal",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", help="prompt text")
    src.add_argument("-f", "--file", help="read the prompt from a file ('-' for stdin)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat template")
    p.add_argument("--stats", action="store_true", help="print speed and cache figures to stderr at the end")
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.prompt is not None:
        prompt = args.prompt
    elif args.file == "-":
        prompt = sys.stdin.read()
    else:
        with open(args.file, encoding="utf-8") as fh:
            prompt = fh.read()
    model = load_model(args)
    kwargs = sampling_kwargs(args)
    stream = model.chat([{"role": "user", "content": prompt}], **kwargs) if args.chat else model.generate(prompt, **kwargs)
    out = sys.stdout
    try:
        for chunk in stream:
            if chunk.text:
                out.write(chunk.text)
                out.flush()
    except KeyboardInterrupt:
        out.write("\n")
        return 130
    out.write("\n")
    if args.stats:
        s = model.last_stats
        print(f"prompt {s.prompt_tokens} tok ({s.prefill_tokens_per_second:.1f} tok/s), "
              f"generated {s.completion_tokens} tok ({s.decode_tokens_per_second:.1f} tok/s), "
              f"attention {s.attention}, KV blocks read {s.kv_blocks_read:.1%}, rectifications {s.rectifications}",
              file=sys.stderr)
    return 0
