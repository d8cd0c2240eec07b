"""Use `pyresa serve` from the official OpenAI Python client.

    pyresa serve --port 8000 &                 # in another terminal
    python examples/openai_client.py --base-url http://127.0.0.1:8000/v1
"""

import argparse

from openai import OpenAI

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
parser.add_argument("--max-tokens", type=int, default=48)
args = parser.parse_args()

client = OpenAI(base_url=args.base_url, api_key="not-needed")  # the server checks no key
model = client.models.list().data[0].id
print(f"model: {model}")

# A whole reply at once.
reply = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "You are a concise assistant."},
              {"role": "user", "content": "What is the capital of France?"}],
    max_tokens=args.max_tokens, temperature=0)
print("chat:", reply.choices[0].message.content)
print(f"  ({reply.usage.prompt_tokens} prompt + {reply.usage.completion_tokens} completion tokens, "
      f"finish: {reply.choices[0].finish_reason})")

# The same, streamed as it is generated (server-sent events).
print("stream: ", end="", flush=True)
stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Name three fruits."}],
    max_tokens=args.max_tokens, temperature=0, stream=True)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()

# Plain text completion.
completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=16, temperature=0)
print("completion: Once upon a time" + completion.choices[0].text)
