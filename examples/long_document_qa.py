"""Question answering over a long document with Rectified Sparse Attention: the document is
prefilled densely once, then each answer token reads only the most relevant KV blocks, with a
dense rectification every few tokens so the approximation does not drift.

    python examples/long_document_qa.py --document report.txt --question "Who signed it?"
    python examples/long_document_qa.py            # a generated document with one fact to find

Needs a model whose context holds the document (--ctx-size). Falls back to dense attention when
this build of pyresa has no ReSA yet.
"""

import argparse
import inspect
import random

import pyresa

try:
    from pyresa.resa import ResaConfig
except ImportError:  # ReSA not in this build yet
    ResaConfig = None

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default=None, help="a .gguf file (default: SmolLM2-135M-Instruct)")
parser.add_argument("--document", default=None, help="a text file (default: a generated report)")
parser.add_argument("--question", default=None)
parser.add_argument("--paragraphs", type=int, default=40, help="length of the generated report")
parser.add_argument("--ctx-size", type=int, default=8192)
parser.add_argument("--max-tokens", type=int, default=48)
parser.add_argument("--threads", type=int, default=None)
args = parser.parse_args()


def generated_report(paragraphs: int) -> tuple[str, str]:
    """A dull report about towns with one fact hidden in the middle, and the question about it."""
    rng = random.Random(0)
    towns = ["Ashford", "Brookfield", "Carrow", "Dunmore", "Elmstead", "Fairhaven", "Glenwood", "Harrowgate"]
    goods = ["wool", "timber", "cheese", "salt", "barley", "copper", "linen", "honey"]
    lines = []
    for i in range(paragraphs):
        town, good = rng.choice(towns), rng.choice(goods)
        lines.append(f"In the year {1700 + i}, the market of {town} traded {rng.randint(10, 900)} carts of {good}, "
                     f"and the council of {town} met {rng.randint(2, 12)} times to discuss the roads.")
        if i == paragraphs // 2:
            lines.append("The lighthouse keeper of Saltmere was a woman named Ingrid Halvorsen.")
    return "\n".join(lines), "Who was the lighthouse keeper of Saltmere?"


if args.document:
    with open(args.document, encoding="utf-8") as fh:
        document = fh.read()
    question = args.question or "Summarise the document in two sentences."
else:
    document, question = generated_report(args.paragraphs)
    question = args.question or question

options = {}
if ResaConfig is not None and "attention" in inspect.signature(pyresa.Model).parameters:
    # The reference implementation's settings ("resa_0.1_32").
    options = {"attention": "resa", "resa": ResaConfig(block_size=16, ratio=0.1, min_blocks=16, local_blocks=1,
                                                          rectify_every=32)}
model = pyresa.Model(args.model, n_ctx=args.ctx_size, threads=args.threads, **options)

messages = [
    {"role": "system", "content": "Answer the question using only the document. Be brief."},
    {"role": "user", "content": f"Document:\n{document}\n\nQuestion: {question}"},
]
print(f"Q: {question}")
print("A: ", end="", flush=True)
for chunk in model.chat(messages, max_tokens=args.max_tokens, temperature=0):
    print(chunk.text, end="", flush=True)
print()

s = model.last_stats
print(f"-- document + question: {s.prompt_tokens} tokens, prefilled at {s.prefill_tokens_per_second:.0f} tok/s; "
      f"answer: {s.completion_tokens} tokens at {s.decode_tokens_per_second:.1f} tok/s")
print(f"-- attention: {s.attention}; KV blocks read per step: {s.kv_blocks_read:.0%}; "
      f"rectifications: {s.rectifications}")
