"""Async streaming, as a web app would use it: `async for` over chunks while the event loop stays
free (the model computes on its own thread, outside the GIL). Two requests at once are served
one after the other, in arrival order.

    python examples/async_stream.py
"""

import argparse
import asyncio

import pyresa

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default=None, help="a .gguf file (default: SmolLM2-135M-Instruct)")
parser.add_argument("--max-tokens", type=int, default=32)
parser.add_argument("--threads", type=int, default=None)
args = parser.parse_args()


async def ask(model, question: str) -> str:
    stream = await model.acreate_chat_completion([{"role": "user", "content": question}],
                                                 max_tokens=args.max_tokens, temperature=0, stream=True)
    parts = []
    async for chunk in stream:
        parts.append(chunk["choices"][0]["delta"].get("content") or "")
    return "".join(parts)


async def heartbeat(beats: list):
    while True:
        await asyncio.sleep(0.01)
        beats.append(1)


async def main():
    model = pyresa.Model(args.model, n_ctx=2048, threads=args.threads)
    beats = []
    ticker = asyncio.create_task(heartbeat(beats))
    answers = await asyncio.gather(ask(model, "What is the capital of France?"),
                                   ask(model, "Name a primary colour."))
    ticker.cancel()
    for a in answers:
        print("answer:", a.strip())
    print(f"the event loop ran {len(beats)} heartbeats meanwhile")


asyncio.run(main())
