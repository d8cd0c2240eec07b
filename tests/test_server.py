"""`pyresa serve` against the official `openai` client: a server started here on 127.0.0.1 (one for
the module), streaming and non-streaming chat and completions, invalid requests, queued
concurrent requests, and clients that disconnect."""

import concurrent.futures
import json
import time

import pytest

openai = pytest.importorskip("openai", reason="the server tests use the official openai client (pip install openai)")
for _dep in ("fastapi", "uvicorn", "sse_starlette"):
    pytest.importorskip(_dep, reason="pyresa serve needs the server extra (pip install 'pyresa[server]')")

from server_helpers import http, start_server, stop_server  # noqa: E402

HELLO = [{"role": "user", "content": "Hello! Who are you?"}]
MAX_QUEUE = 4  # requests in line (running or waiting) before the server answers 503
LONG = [{"role": "user", "content": "Write a very long story about a dragon."}]


@pytest.fixture(scope="module")
def server():
    proc, url = start_server("-c", "2048", "--max-queue", str(MAX_QUEUE))
    yield url
    log = stop_server(proc)
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def health(server):
    status, body = http(server, path="/health")
    assert status == 200
    return body


def wait_until_idle(server, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = health(server)
        if h["requests_in_flight"] == 0:
            return h
        time.sleep(0.05)
    raise AssertionError(f"the server is still busy: {health(server)}")


def test_models(client):
    (m,) = client.models.list().data
    assert m.id == "SmolLM2-135M-Instruct.Q4_1" and m.owned_by == "pyresa"
    assert client.models.retrieve(m.id).id == m.id


def test_chat_non_streaming_and_streaming(client):
    r = client.chat.completions.create(model="any", messages=HELLO, max_tokens=24, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    content = r.choices[0].message.content
    assert content.strip() and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    stream = client.chat.completions.create(model="any", messages=HELLO, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # the same conversation again: its prompt came from the KV cache
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= r.usage.prompt_tokens - 1


def test_completions_non_streaming_and_streaming(client):
    r = client.completions.create(model="any", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8
    chunks = list(client.completions.create(model="any", prompt="The capital of France is", max_tokens=8,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_strings(client):
    r = client.completions.create(model="any", prompt="The capital of France is", max_tokens=16, temperature=0)
    text = r.choices[0].text
    stop = text[3:7]
    r2 = client.completions.create(model="any", prompt="The capital of France is", max_tokens=16, temperature=0,
                                   stop=[stop])
    assert r2.choices[0].text == text[:text.find(stop)] and r2.choices[0].finish_reason == "stop"


def test_invalid_requests_get_400_json(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="any", messages=[], max_tokens=4)
    assert e.value.status_code == 400 and "messages" in e.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="any", messages=HELLO, temperature=7)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="any", prompt="word " * 3000, max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="any", messages=HELLO, n=2)
    with pytest.raises(openai.BadRequestError):  # refused before any streaming starts
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}]}], stream=True)
    raw = [("/v1/chat/completions", b"{not json"), ("/v1/chat/completions", b"[1, 2]"),
           ("/v1/chat/completions", json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode()),
           ("/v1/completions", json.dumps({"prompt": {"a": 1}}).encode()),
           ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": "many"}).encode())]
    for path, body in raw:
        status, answer = http(server, "POST", path, body)
        assert status == 400, (body, answer)
        assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["message"]
    status, answer = http(server, path="/v1/nothing-here")
    assert status == 404 and "error" in answer
    assert health(server)["status"] == "ok"  # still serving


def test_concurrent_requests_are_queued(client, server):
    prompts = [f"Count from 1 to {n}." for n in range(3, 3 + MAX_QUEUE)]
    expected = [client.chat.completions.create(model="any", messages=[{"role": "user", "content": p}],
                                               max_tokens=12, temperature=0).choices[0].message.content
                for p in prompts]

    def ask(p):
        return client.chat.completions.create(model="any", messages=[{"role": "user", "content": p}],
                                              max_tokens=12, temperature=0).choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        assert list(pool.map(ask, prompts)) == expected
    wait_until_idle(server)


def test_a_client_that_disconnects_mid_stream_stops_its_generation(client, server):
    before = wait_until_idle(server)["requests_cancelled"]
    stream = client.chat.completions.create(model="any", messages=LONG, max_tokens=1800, temperature=0,
                                            stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    t0 = time.monotonic()
    after = wait_until_idle(server, timeout=20)
    assert after["requests_cancelled"] == before + 1
    assert time.monotonic() - t0 < 5  # 1800 tokens would have taken far longer
    # and the model serves the next request correctly
    r = client.chat.completions.create(model="any", messages=HELLO, max_tokens=24, temperature=0)
    assert r.choices[0].message.content.strip()


def test_a_client_that_gives_up_on_a_non_streaming_request_stops_it(server):
    before = wait_until_idle(server)["requests_cancelled"]
    body = json.dumps({"messages": LONG, "max_tokens": 1800, "temperature": 0})
    with pytest.raises(TimeoutError):
        http(server, "POST", "/v1/chat/completions", body, timeout=1.0)  # gives up and hangs up
    after = wait_until_idle(server, timeout=20)
    assert after["requests_cancelled"] == before + 1


def test_a_full_line_answers_503_and_waiting_clients_can_leave(server):
    before = wait_until_idle(server)["requests_cancelled"]
    c = openai.OpenAI(base_url=server + "/v1", api_key="x", max_retries=0, timeout=60)
    running = c.chat.completions.create(model="any", messages=LONG, max_tokens=1800, stream=True)
    next(iter(running))
    waiting = [c.chat.completions.create(model="any", messages=LONG, max_tokens=1800, stream=True)
               for _ in range(MAX_QUEUE - 1)]  # answered with headers at once, then they wait their turn
    assert health(server)["requests_in_flight"] == MAX_QUEUE
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="any", messages=HELLO, max_tokens=4)
    assert e.value.status_code == 503
    for s in waiting + [running]:
        s.close()
    after = wait_until_idle(server, timeout=20)
    assert after["requests_cancelled"] == before + MAX_QUEUE
