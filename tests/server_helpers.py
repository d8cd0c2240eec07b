"""Start and stop `pyresa serve` on a free port of 127.0.0.1 for tests, and plain HTTP requests."""

import json
import os
import socket
import subprocess
import sys
import time
from http.client import HTTPConnection
from pathlib import Path

from pyresa.default_model import default_model_path

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, method="GET", path="/", body=None, timeout=30):
    """(status, parsed JSON body) of a plain HTTP request: raw bytes, no client library in between."""
    host, port = url.removeprefix("http://").split(":")
    conn = HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {"content-type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


def start_server(*flags, timeout=90):
    """Starts `pyresa serve` on a free local port; returns (process, base url)."""
    port = free_port()
    env = dict(os.environ)  # the installed pyresa (or the developer's own PYTHONPATH)
    proc = subprocess.Popen([sys.executable, "-m", "pyresa", "serve", str(default_model_path()), "--host",
                             "127.0.0.1", "--port", str(port), "--threads", "1", "--log-level", "warning", *flags],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pyresa serve exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if http(url, path="/health", timeout=1)[0] == 200:
                return proc, url
        except OSError:
            time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError("pyresa serve did not answer /health in time")


def stop_server(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read()
