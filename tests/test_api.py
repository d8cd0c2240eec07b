"""The app-facing API on the default model: llama-cpp-python-shaped create_completion /
create_chat_completion (dicts and chunk dicts), async streaming that leaves the event loop free,
stop strings that never leak, UTF-8 never split."""

import asyncio

import pytest

import pyresa

GREEDY = {"temperature": 0}
HELLO = [{"role": "user", "content": "Hello! Who are you?"}]


@pytest.fixture(scope="module")
def model():
    # One thread: the test machines are small and shared; spinning workers would only contend.
    return pyresa.Model(n_ctx=2048, threads=1)


def _check_usage(usage):
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 0
    assert 0 <= usage["prompt_tokens_details"]["cached_tokens"] <= usage["prompt_tokens"]


def test_completion_dict(model):
    r = model.create_completion("The capital of France is", max_tokens=5, **GREEDY)
    assert set(r) == {"id", "object", "created", "model", "choices", "usage"}
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-")
    assert r["model"] == "SmolLM2-135M-Instruct.Q4_1"
    (choice,) = r["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["text"]
    _check_usage(r["usage"])
    assert r["usage"]["completion_tokens"] == 5
    assert model("The capital of France is", max_tokens=5, **GREEDY)["choices"][0]["text"] == choice["text"]
    echoed = model.create_completion("The capital of France is", max_tokens=5, echo=True, **GREEDY)
    assert echoed["choices"][0]["text"] == "The capital of France is" + choice["text"]


def test_completion_stream_matches_whole(model):
    whole = model.create_completion("Once upon a time", max_tokens=12, **GREEDY)
    chunks = list(model.create_completion("Once upon a time", max_tokens=12, stream=True, **GREEDY))
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    _check_usage(chunks[-1]["usage"])
    assert pyresa.api.completion_from_chunks(chunks)["choices"] == whole["choices"]


def test_chat_completion_dict_and_stream(model):
    r = model.create_chat_completion(HELLO, max_tokens=24, **GREEDY)
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    (choice,) = r["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    _check_usage(r["usage"])

    chunks = list(model.create_chat_completion(HELLO, max_tokens=24, stream=True, **GREEDY))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = chunks[-1]["choices"][0]
    assert last["delta"] == {} and last["finish_reason"] == choice["finish_reason"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == choice["message"]["content"]


def test_chat_reuses_the_conversation_cache(model):
    first = model.create_chat_completion(HELLO, max_tokens=16, **GREEDY)
    history = HELLO + [first["choices"][0]["message"], {"role": "user", "content": "Tell me a joke."}]
    second = model.create_chat_completion(history, max_tokens=8, **GREEDY)
    usage = second["usage"]
    # only the new turn is prefilled: everything up to the end of the first reply is reused
    assert usage["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["total_tokens"] - 2
    assert usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"] < 20


def test_openai_message_forms(model):
    parts = [{"role": "developer", "content": "You are terse."},
             {"role": "user", "content": [{"type": "text", "text": "Hello! "}, {"type": "text", "text": "Hi?"}]}]
    assert model.create_chat_completion(parts, max_tokens=4, **GREEDY)["choices"][0]["message"]["content"]


def test_stop_string_split_across_tokens_never_leaks(model):
    prompt = "The capital of France is"
    pieces = [c.text for c in model.generate(prompt, max_tokens=24, **GREEDY)]
    full = "".join(pieces)
    # a stop string made of the end of one token and the start of the next
    i = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    expected = full[:full.find(stop)]
    r = model.create_completion(prompt, max_tokens=24, stop=[stop], **GREEDY)
    assert r["choices"][0]["text"] == expected and r["choices"][0]["finish_reason"] == "stop"
    streamed = [c["choices"][0]["text"] for c in model.create_completion(prompt, max_tokens=24, stop=stop,
                                                                           stream=True, **GREEDY)]
    assert "".join(streamed) == expected
    assert all(stop not in s for s in streamed)


def test_utf8_never_split(model):
    prompt = "😀😀😀😀😀😀😀😀😀😀"
    chunks = list(model.generate(prompt, max_tokens=12, **GREEDY))
    token_bytes = b"".join(model.tokenizer.token_bytes(c.token) for c in chunks if c.token is not None)
    assert any(not _decodes(model.tokenizer.token_bytes(c.token)) for c in chunks if c.token is not None), \
        "the test needs tokens that each hold part of a character"
    assert all("\ufffd" not in c.text for c in chunks)
    assert "".join(c.text for c in chunks) == token_bytes.decode("utf-8", "replace")
    streamed = [c["choices"][0]["text"] for c in model.create_completion(prompt, max_tokens=12, stream=True, **GREEDY)]
    assert all("\ufffd" not in s for s in streamed)


def _decodes(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_bad_arguments_fail_at_the_call(model):
    with pytest.raises(pyresa.InvalidRequestError):
        model.create_completion("x", temperature=-1, stream=True)  # before any iteration
    with pytest.raises(pyresa.InvalidRequestError):
        model.create_chat_completion([], stream=True)
    with pytest.raises(pyresa.InvalidRequestError):
        model.create_chat_completion([{"role": "wizard", "content": "x"}])
    with pytest.raises(pyresa.UnsupportedError):
        model.create_chat_completion(HELLO, tools=[{"type": "function", "function": {"name": "f"}}])
    with pytest.raises(pyresa.UnsupportedError):
        model.create_completion("x", logprobs=3)
    with pytest.raises(pyresa.ContextFullError):
        model.create_completion("word " * 3000)
    # neutral values of options pyresa does not implement are fine (apps pass them routinely)
    model.create_chat_completion(HELLO, max_tokens=1, tools=None, presence_penalty=0.0, logit_bias={},
                                 response_format={"type": "text"}, mirostat_mode=0, model="anything")


def test_async_streaming_leaves_the_loop_free(model):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.002)
                ticks += 1

        t = asyncio.create_task(ticker())
        stream = await model.acreate_chat_completion(HELLO, max_tokens=32, stream=True, **GREEDY)
        chunks = [c async for c in stream]
        t.cancel()
        whole = await model.acreate_chat_completion(HELLO, max_tokens=32, **GREEDY)
        return ticks, chunks, whole

    ticks, chunks, whole = asyncio.run(main())
    assert ticks >= 10, "the event loop was blocked while the model generated"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
        whole["choices"][0]["message"]["content"]
    assert whole["object"] == "chat.completion"


def test_async_generations_queue_one_at_a_time(model):
    expected = {i: "".join(c.text for c in model.chat([{"role": "user", "content": f"Count to {i}."}],
                                                      max_tokens=12, **GREEDY)) for i in (3, 5, 7)}
    events = []

    async def one(i):
        parts = []
        async for c in model.achat([{"role": "user", "content": f"Count to {i}."}], max_tokens=12, **GREEDY):
            events.append(i)
            parts.append(c.text)
        return "".join(parts)

    async def main():
        return await asyncio.gather(one(3), one(5), one(7))

    assert asyncio.run(main()) == [expected[3], expected[5], expected[7]]
    # one whole generation after the other, in arrival order: never interleaved
    runs = [i for k, i in enumerate(events) if k == 0 or events[k - 1] != i]
    assert runs == [3, 5, 7]


def test_async_stream_abandoned_midway_frees_the_model(model):
    async def main():
        stream = model.agenerate("Once upon a time", max_tokens=200, **GREEDY)
        async for _ in stream:
            break
        await stream.aclose()
        return await model.acreate_completion("The capital of France is", max_tokens=5, **GREEDY)

    r = asyncio.run(asyncio.wait_for(main(), 60))
    assert r["choices"][0]["text"] == model.create_completion("The capital of France is", max_tokens=5,
                                                              **GREEDY)["choices"][0]["text"]
