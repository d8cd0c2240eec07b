"""Stream a completion token by token, then print how fast it was.

    python examples/stream_generate.py "The three primary colours are"
"""

import argparse

import pyresa

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("prompt", nargs="?", default="The three primary colours are")
parser.add_argument("--model", default=None, help="a .gguf file (default: SmolLM2-135M-Instruct)")
parser.add_argument("--max-tokens", type=int, default=64)
parser.add_argument("--temperature", type=float, default=0.8)
parser.add_argument("--seed", type=int, default=None)
parser.add_argument("--threads", type=int, default=None)
args = parser.parse_args()

model = pyresa.Model(args.model, n_ctx=2048, threads=args.threads)

print(args.prompt, end="", flush=True)
for chunk in model.generate(args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                            seed=args.seed, stop=["\n\n"]):
    print(chunk.text, end="", flush=True)  # text arrives as it is generated; never half a character
print()

stats = model.last_stats
print(f"-- {stats.completion_tokens} tokens at {stats.decode_tokens_per_second:.1f} tok/s "
      f"(prompt: {stats.prompt_tokens} tokens at {stats.prefill_tokens_per_second:.1f} tok/s)")
