"""`pyresa chat`: driven in a real terminal (tmux) through a two-turn conversation, an interrupt
and /reset; from a pipe; with a full context; and its reasoning/answer split."""

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyresa.cli.chat import ChatSession, Style, ThinkSplitter
from pyresa.default_model import default_model_path
from pyresa.generation import Chunk, GenerationStats

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def chat_command(*flags):
    return [sys.executable, "-m", "pyresa", "chat", str(default_model_path()), "--threads", "1", *flags]


def child_env(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = env.get("PYTHONPATH", "")  # the installed pyresa, or the developer's own path
    env["PYRESA_CACHE"] = str(tmp_path)  # input history goes here, not to the user's cache
    return env


# -- pipe ----------------------------------------------------------------------------------------
def test_pipe_one_prompt_per_line(tmp_path):
    lines = "Hello! Who are you?\n/stats\nWhat is the capital of France?\n"
    r = subprocess.run(chat_command("-c", "2048", "--temperature", "0", "--max-tokens", "24"), input=lines,
                       capture_output=True, text=True, env=child_env(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stdout and ">" not in r.stdout.split("\n")[0][:2]
    replies = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(replies) >= 2
    assert "reused from the cache" in r.stderr  # /stats output stays off stdout


def test_pipe_context_full_is_a_message_not_a_crash(tmp_path):
    long_line = "Please summarise this. " + "The quick brown fox jumps over the lazy dog. " * 60
    lines = long_line + "\nHi!\n"
    r = subprocess.run(chat_command("-c", "256", "--temperature", "0", "--max-tokens", "16"), input=lines,
                       capture_output=True, text=True, env=child_env(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "no longer fits in the context" in r.stderr and "/reset" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.strip(), "the session goes on after the full context"


def test_reply_cut_by_a_full_context(tmp_path):
    r = subprocess.run(chat_command("-c", "64", "--temperature", "0", "--max-tokens", "-1"),
                       input="Write a long story about a dragon.\n", capture_output=True, text=True,
                       env=child_env(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "context full" in r.stderr and "Traceback" not in r.stderr


# -- reasoning -----------------------------------------------------------------------------------
def test_think_splitter_handles_tags_split_across_chunks():
    s = ThinkSplitter()
    out = []
    for piece in ["<thi", "nk>let me ", "see</th", "ink>\n\nThe answer", " is <", "4>."]:
        out += s.push(piece)
    out += s.flush()
    thinking = "".join(t for is_thinking, t in out if is_thinking)
    answer = "".join(t for is_thinking, t in out if not is_thinking)
    assert thinking == "let me see"
    assert answer == "\n\nThe answer is <4>."


class FakeModel:
    """Just enough of a Model to drive a ChatSession without computing anything."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.n_ctx, self.n_cached = 100, 0
        self.last_stats = GenerationStats()

    def chat(self, messages, **sampling):
        def gen():
            for p in self.pieces:
                yield Chunk(p, 1)
            yield Chunk("", 2, "stop")
        return gen()


def test_thinking_is_dimmed_in_a_terminal_and_kept_off_a_piped_answer():
    pieces = ["<think>", "hmm, ", "two plus two", "</think>", "\n\n", "It is 4."]
    out = io.StringIO()
    session = ChatSession(FakeModel(pieces), {}, None, interactive=True, style=Style(True), out=out, err=out)
    session.send("2+2?")
    shown = out.getvalue()
    assert "\x1b[2mhmm, \x1b[0m" in shown and "<think>" not in shown
    assert ANSI.sub("", shown).startswith("hmm, two plus two\nIt is 4.\n")
    assert session.messages[-1]["content"] == "".join(pieces)  # history keeps what the model said

    out, err = io.StringIO(), io.StringIO()
    session = ChatSession(FakeModel(pieces), {}, None, interactive=False, style=Style(False), out=out, err=err)
    session.send("2+2?")
    assert out.getvalue() == "It is 4.\n"
    assert err.getvalue() == "hmm, two plus two"


# -- a real terminal -----------------------------------------------------------------------------
class Tmux:
    def __init__(self, name):
        self.socket = f"pyresa-test-{os.getpid()}-{name}"

    def __call__(self, *args, check=True):
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=check)

    def screen(self):
        return self("capture-pane", "-p", "-J", "-S", "-500", "-t", "chat").stdout

    def wait_for(self, predicate, timeout=60, what="the screen"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{self.screen()}")


@pytest.fixture
def tmux(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux): the real-terminal test needs it")
    t = Tmux(tmp_path.name)
    yield t
    t("kill-server", check=False)


def test_terminal_session_two_turns_interrupt_reset(tmux, tmp_path):
    env = child_env(tmp_path)
    cmd = " ".join(shlex.quote(a) for a in chat_command("-c", "2048", "--temperature", "0", "--max-tokens", "1500"))
    exports = " ".join(f"{k}={shlex.quote(env[k])}" for k in ("PYTHONPATH", "PYRESA_CACHE"))
    tmux("new-session", "-d", "-s", "chat", "-x", "120", "-y", "40",
         f"cd {shlex.quote(str(tmp_path))} && env {exports} {cmd}; echo CHAT-EXITED-$?; sleep 600")
    tmux("set-option", "-t", "chat", "history-limit", "5000")
    tmux.wait_for(lambda s: "Ctrl-D leaves" in s and s.rstrip().endswith(">"), what="the banner and prompt")

    def status_lines(s):
        return re.findall(r"\[(\d+) tokens · [\d.]+ tok/s · context (\d+)/2048\]", s)

    # turn 1 and turn 2: streamed replies, each followed by a status line
    tmux("send-keys", "-t", "chat", "Hello! Who are you?", "Enter")
    tmux.wait_for(lambda s: len(status_lines(s)) == 1, what="the first reply's status line")
    tmux("send-keys", "-t", "chat", "What did I just ask you?", "Enter")
    screen = tmux.wait_for(lambda s: len(status_lines(s)) == 2, what="the second reply's status line")
    (n1, ctx1), (n2, ctx2) = status_lines(screen)
    assert int(ctx2) > int(ctx1) > 0

    # the second turn prefilled only itself: the first turn came from the KV cache
    tmux("send-keys", "-t", "chat", "/stats", "Enter")
    screen = tmux.wait_for(lambda s: "reused from the cache" in s, what="/stats")
    reused = int(re.search(r"(\d+) reused from the cache", screen).group(1))
    assert reused >= int(ctx1) - 2, screen

    # Ctrl-C stops a reply and keeps the session
    tmux("send-keys", "-t", "chat", "Write a very long story about a dragon.", "Enter")
    before = screen.count("dragon")
    tmux.wait_for(lambda s: s.count("dragon") > before + 1 or len(s) > len(screen) + 200, what="the reply to start")
    tmux("send-keys", "-t", "chat", "C-c")
    screen = tmux.wait_for(lambda s: "[interrupted]" in s and len(status_lines(s)) == 3,
                           what="the interrupted reply", timeout=30)
    tmux("send-keys", "-t", "chat", "Thanks. Say hi!", "Enter")
    screen = tmux.wait_for(lambda s: len(status_lines(s)) == 4, what="a reply after the interrupt")

    # /reset starts over: the next turn's context is small again
    tmux("send-keys", "-t", "chat", "/reset", "Enter")
    tmux.wait_for(lambda s: "(new conversation)" in s, what="/reset")
    tmux("send-keys", "-t", "chat", "Hello! Who are you?", "Enter")
    screen = tmux.wait_for(lambda s: len(status_lines(s)) == 5, what="the reply after /reset")
    assert status_lines(screen)[4] == status_lines(screen)[0], "after /reset the conversation starts over"

    # input history: Up brings back the last line
    tmux("send-keys", "-t", "chat", "Up")
    tmux.wait_for(lambda s: s.rstrip().endswith("> Hello! Who are you?"), what="the recalled line")
    tmux("send-keys", "-t", "chat", "C-u")
    tmux("send-keys", "-t", "chat", "/exit", "Enter")
    screen = tmux.wait_for(lambda s: "CHAT-EXITED-" in s, what="the exit")
    assert "CHAT-EXITED-0" in screen and "Traceback" not in screen
    assert (tmp_path / "chat_history").exists()
