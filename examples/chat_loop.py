"""A minimal chat loop: one message per line on stdin, replies streamed to stdout.

Uses the llama-cpp-python-style call, so the same loop runs on llama_cpp.Llama by changing the
constructor. The model keeps the conversation's KV cache, so each turn prefills only itself.

    python examples/chat_loop.py            # type messages, Ctrl-D to end
    printf 'Hi!\\nTell me a joke.\\n' | python examples/chat_loop.py
"""

import argparse
import sys

import pyresa

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default=None, help="a .gguf file (default: SmolLM2-135M-Instruct)")
parser.add_argument("--system", default="You are a helpful, concise assistant.")
parser.add_argument("--max-tokens", type=int, default=128)
parser.add_argument("--temperature", type=float, default=0.7)
parser.add_argument("--threads", type=int, default=None)
args = parser.parse_args()

llm = pyresa.Model(args.model, n_ctx=2048, threads=args.threads)
messages = [{"role": "system", "content": args.system}]

for line in sys.stdin:
    if not line.strip():
        continue
    messages.append({"role": "user", "content": line.strip()})
    reply = []
    for chunk in llm.create_chat_completion(messages, max_tokens=args.max_tokens, temperature=args.temperature,
                                            stream=True):
        delta = chunk["choices"][0]["delta"].get("content") or ""
        print(delta, end="", flush=True)
        reply.append(delta)
    print()
    messages.append({"role": "assistant", "content": "".join(reply)})
    s = llm.last_stats
    print(f"[{s.prompt_tokens - s.cached_tokens} new prompt tokens, {s.cached_tokens} from the cache]",
          file=sys.stderr)
