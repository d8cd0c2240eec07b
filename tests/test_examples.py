"""Every script in examples/ runs, on the default model, so none of them rots."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

def run_example(name, *args, stdin=None, timeout=180):
    env = dict(os.environ)  # the installed pyresa (or the developer's own PYTHONPATH)
    r = subprocess.run([sys.executable, str(EXAMPLES / name), *args], input=stdin, capture_output=True, text=True,
                       env=env, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout}\n{r.stderr}"
    return r

def test_every_example_has_a_test():
    tested = {"stream_generate.py", "chat_loop.py", "async_stream.py", "long_document_qa.py", "openai_client.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested

def test_stream_generate():
    r = run_example("stream_generate.py", "The three primary colours are", "--max-tokens", "16", "--seed", "1",
                    "--threads", "1")
    assert r.stdout.startswith("The three primary colours are")
    assert "tok/s" in r.stdout

def test_chat_loop():
    r = run_example("chat_loop.py", "--max-tokens", "16", "--threads", "1",
                    stdin="Hello!\nWhat is the capital of France?\n")
    assert len([line for line in r.stdout.splitlines() if line.strip()]) >= 2
    cached = [int(x.split(",")[1].split()[0]) for x in r.stderr.splitlines() if "from the cache" in x]
    assert len(cached) == 2 and cached[1] > cached[0]  # the second turn reuses the first

def test_async_stream():
    r = run_example("async_stream.py", "--max-tokens", "12", "--threads", "1")
    assert r.stdout.count("answer:") == 2
    beats = int(r.stdout.split("the event loop ran ")[1].split()[0])
    assert beats > 0

def test_long_document_qa():
    r = run_example("long_document_qa.py", "--paragraphs", "8", "--ctx-size", "2048", "--max-tokens", "16",
                    "--threads", "1")
    assert r.stdout.startswith("Q: Who was the lighthouse keeper of Saltmere?")

    try:
        from pyresa.resa import ResaConfig  # noqa: F401
        expected = "resa"
    except ImportError:
        expected = "dense"
    assert f"attention: {expected}" in r.stdout

def test_openai_client():
    pytest.importorskip("openai", reason="the example uses the official openai client (pip install openai)")
    for dep in ("fastapi", "uvicorn", "sse_starlette"):
        pytest.importorskip(dep, reason="pyresa serve needs the server extra (pip install 'pyresa[server]')")
    from server_helpers import start_server, stop_server

    proc, url = start_server("-c", "2048")
    try:
        r = run_example("openai_client.py", "--base-url", url + "/v1", "--max-tokens", "16")
    finally:
        stop_server(proc)
    assert "model: SmolLM2-135M-Instruct.Q4_1" in r.stdout
    for label in ("chat:", "stream:", "completion: Once upon a time"):
        assert label in r.stdout
