"""`pyresa chat`: talk to a model in the terminal, or answer one prompt per line from a pipe.

The whole conversation is rendered through the model's chat template at every turn; the
model's KV cache keeps the previous turns, so only the new turn is prefilled."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import TextIO

from pyresa.cli import common

HELP = """\
Commands:
  /help           this help
  /reset          start a new conversation (keeps the system prompt)
  /system TEXT    set the system prompt (/system alone shows it, /system default restores the template's)
  /forget [N]     drop the N oldest exchanges (default 1), to make room in the context
  /stats          details of the last reply and of this session
  /exit           leave (or Ctrl-D)
Ctrl-C stops the current reply and keeps the conversation. A line starting with // sends a literal /."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("chat", help="chat with a model in the terminal",
                              description="Chat with a model: a terminal session, or one prompt per line "
                                          "from a pipe (replies on stdout, no prompts or colours). "
                                          "--max-tokens -1 lets a reply run until the context is full.")
    configure(p)
    return p


def configure(p: argparse.ArgumentParser) -> None:
    common.add_model_args(p)
    common.add_sampling_args(p, max_tokens=1024)
    p.add_argument("--system", "-s", default=None, metavar="TEXT", help="system prompt")
    p.add_argument("--no-color", action="store_true", help="plain output even in a terminal (also NO_COLOR=1)")
    p.set_defaults(func=run)


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """The shared sampling flags; --max-tokens -1 means: no limit but the context."""
    kwargs = common.sampling_kwargs(args)
    if kwargs["max_tokens"] is not None and kwargs["max_tokens"] < 0:
        kwargs["max_tokens"] = None
    return kwargs


def load_tokenizer_quietly(model) -> None:
    """Loads the tokenizer now, not during the first message (it loads without llama.cpp's
    load-time warnings: see pyresa.tokenizer)."""
    model.tokenizer.llama


# -- output -----------------------------------------------------------------------------------
class Style:
    """ANSI styles when writing to a terminal, nothing otherwise. `readline` wraps the prompt's
    escapes in \\001..\\002 so line editing knows their width is zero."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def _wrap(self, code: str, text: str, prompt: bool = False) -> str:
        if not self.enabled:
            return text
        start, end = f"\x1b[{code}m", "\x1b[0m"
        if prompt:
            start, end = f"\001{start}\002", f"\001{end}\002"
        return f"{start}{text}{end}"

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def warn(self, text: str) -> str:
        return self._wrap("33", text)

    def prompt(self, text: str) -> str:
        return self._wrap("1;32", text, prompt=True)


class ThinkSplitter:
    """Splits a streamed reply into reasoning (between <think> and </think>) and answer, even when
    a tag arrives split over several chunks: text that may begin a tag is held back."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self):
        self.thinking = False
        self.pending = ""

    def push(self, text: str) -> list[tuple[bool, str]]:
        """[(is_thinking, text), ...] ready to show."""
        self.pending += text
        out = []
        while True:
            tag = self.CLOSE if self.thinking else self.OPEN
            i = self.pending.find(tag)
            if i >= 0:
                if i:
                    out.append((self.thinking, self.pending[:i]))
                self.pending = self.pending[i + len(tag):]
                self.thinking = not self.thinking
                continue
            keep = next((n for n in range(min(len(tag) - 1, len(self.pending)), 0, -1)
                         if self.pending.endswith(tag[:n])), 0)
            ready = self.pending[:len(self.pending) - keep]
            self.pending = self.pending[len(self.pending) - keep:]
            if ready:
                out.append((self.thinking, ready))
            return out

    def flush(self) -> list[tuple[bool, str]]:
        out = [(self.thinking, self.pending)] if self.pending else []
        self.pending = ""
        return out


class InterruptFlag:
    """While active, Ctrl-C sets a flag instead of raising, so a reply stops between two tokens and
    never in the middle of updating the model's cache."""

    def __init__(self):
        self.hit = False

    def _handler(self, signum, frame):
        self.hit = True

    def __enter__(self):
        self.hit = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


# -- the session -------------------------------------------------------------------------------
class ChatSession:
    def __init__(self, model, sampling: dict, system: str | None, *, interactive: bool, style: Style,
                 out: TextIO = sys.stdout, err: TextIO = sys.stderr):
        self.model = model
        self.sampling = sampling
        self.system = system
        self.messages: list[dict[str, str]] = []  # user and assistant turns, without the system prompt
        self.interactive = interactive
        self.style = style
        self.out, self.err = out, err
        self.info_out = out if interactive else err  # in a pipe, stdout carries replies only
        self.replies = 0
        self.total_tokens = 0
        self.total_decode_seconds = 0.0
        self.last_finish: str | None = None

    def info(self, text: str) -> None:
        print(text, file=self.info_out, flush=True)

    def conversation(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + self.messages

    # -- commands ------------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Runs a /command; False when the session should end."""
        name, _, rest = line[1:].partition(" ")
        name, rest = name.lower(), rest.strip()
        if name in ("exit", "quit", "q", "bye"):
            return False
        if name in ("help", "h", "?"):
            self.info(HELP)
        elif name in ("reset", "clear"):
            self.messages = []
            self.model.reset()
            self.info(self.style.dim("(new conversation)"))
        elif name == "system":
            if not rest:
                shown = self.system if self.system is not None else "(the chat template's default)"
                self.info(f"system prompt: {shown}")
            else:
                self.system = None if rest == "default" else rest
                self.info(self.style.dim("(system prompt set; the conversation is kept)"))
        elif name == "forget":
            n = int(rest) if rest.isdigit() else 1
            dropped = 0
            for _ in range(n):
                if not self.messages:
                    break
                # one exchange: the oldest user message and the replies up to the next user message
                del self.messages[0]
                while self.messages and self.messages[0]["role"] != "user":
                    del self.messages[0]
                dropped += 1
            self.info(self.style.dim(f"(dropped {dropped} exchange{'s' * (dropped != 1)}, "
                                     f"{len(self.messages)} messages left)"))
        elif name == "stats":
            self.info(self.stats_text())
        else:
            self.info(self.style.warn(f"unknown command /{name}; /help lists the commands"))
        return True

    def stats_text(self) -> str:
        m, s = self.model, self.model.last_stats
        lines = [f"model      {m.path.name} on {m.device}, {m.threads} threads, n_ctx {m.n_ctx}",
                 f"context    {m.n_cached} of {m.n_ctx} tokens in the KV cache, {len(self.messages)} messages"]
        if self.replies:
            lines += [
                f"last reply {s.completion_tokens} tokens in {s.decode_seconds:.2f} s "
                f"({s.decode_tokens_per_second:.1f} tok/s), finish: {self.last_finish}",
                f"prompt     {s.prompt_tokens} tokens, {s.cached_tokens} reused from the cache, "
                f"{s.prompt_tokens - s.cached_tokens} prefilled in {s.prefill_seconds:.2f} s "
                f"({s.prefill_tokens_per_second:.1f} tok/s)",
                f"attention  {s.attention}" + (f", {s.kv_blocks_read:.0%} of KV blocks read, "
                                               f"{s.rectifications} rectifications" if s.attention != "dense" else ""),
                f"session    {self.replies} replies, {self.total_tokens} tokens"
                + (f", {self.total_tokens / self.total_decode_seconds:.1f} tok/s"
                   if self.total_decode_seconds > 0 else ""),
            ]
        return "\n".join(lines)

    def status_line(self) -> str:
        m, s = self.model, self.model.last_stats
        parts = [f"{s.completion_tokens} tokens", f"{s.decode_tokens_per_second:.1f} tok/s",
                 f"context {m.n_cached}/{m.n_ctx}"]
        if s.attention != "dense":
            parts += [f"KV blocks read {s.kv_blocks_read:.0%}", f"{s.rectifications} rectifications"]
        return "[" + " · ".join(parts) + "]"

    # -- a turn --------------------------------------------------------------------------------
    def send(self, text: str) -> None:
        import pyresa

        self.messages.append({"role": "user", "content": text})
        with InterruptFlag() as interrupt:  # Ctrl-C from here on stops the reply, never the session
            try:
                chunks = self.model.chat(self.conversation(), **self.sampling)
                reply, finish = self.stream(chunks, interrupt)
            except pyresa.ContextFullError as e:
                self.messages.pop()
                self.info(self.style.warn(
                    f"The conversation no longer fits in the context ({e}). "
                    "Type /forget to drop the oldest exchange, /reset to start over, "
                    "or restart with a larger --ctx-size."))
                return
            except pyresa.PyresaError as e:
                self.messages.pop()
                self.info(self.style.warn(f"error: {e}"))
                return
        self.messages.append({"role": "assistant", "content": reply})
        self.replies += 1
        self.last_finish = finish
        stats = self.model.last_stats
        self.total_tokens += stats.completion_tokens
        self.total_decode_seconds += stats.decode_seconds
        if finish == "interrupted":
            self.info(self.style.warn("[interrupted]"))
        elif finish == "length":
            if self.model.n_cached >= self.model.n_ctx - 1:
                self.info(self.style.warn(
                    f"[context full: {self.model.n_ctx} tokens; the reply was cut. "
                    "/forget drops the oldest exchange, /reset starts over]"))
            elif self.interactive:
                self.info(self.style.dim(f"[reply cut at --max-tokens {self.sampling.get('max_tokens')}]"))
        if self.interactive:
            self.info(self.style.dim(self.status_line()))

    def stream(self, chunks, interrupt: InterruptFlag) -> tuple[str, str | None]:
        """Shows the reply as it comes; returns its raw text and how it ended."""
        reply, finish = [], None
        splitter = ThinkSplitter()
        at_line_start = True
        answer_started = False
        try:
            for chunk in chunks:
                reply.append(chunk.text)
                pieces = splitter.push(chunk.text)
                if chunk.finish_reason is not None:
                    pieces += splitter.flush()
                for thinking, piece in pieces:
                    if thinking:
                        if self.interactive:
                            self.out.write(self.style.dim(piece))
                        else:
                            self.err.write(piece)  # reasoning never mixes into the piped answer
                    else:
                        if not answer_started:
                            piece = piece.lstrip("\n")
                            if not piece:
                                continue
                            if not at_line_start and self.interactive:
                                piece = "\n" + piece
                            answer_started = True
                        self.out.write(piece)
                    at_line_start = piece.endswith("\n")
                self.out.flush()
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
                    break
                if interrupt.hit:
                    finish = "interrupted"
                    break
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        if not at_line_start or not (answer_started or self.interactive):
            self.out.write("\n")  # in a pipe, every reply ends with one newline, even an empty one
        self.out.flush()
        return "".join(reply), finish


# -- the loops ---------------------------------------------------------------------------------
def _history_file():
    from pyresa.default_model import cache_dir

    return cache_dir() / "chat_history"


def _setup_readline():
    """Line editing and input history (kept across sessions) where readline exists."""
    try:
        import readline
    except ImportError:
        return None
    path = _history_file()
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    return readline, path


def _save_history(setup) -> None:
    if setup is None:
        return
    readline, path = setup
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(path)
    except OSError:
        pass


def interactive_loop(session: ChatSession) -> None:
    setup = _setup_readline()
    prompt = session.style.prompt("> ")
    try:
        while True:
            try:
                line = input(prompt)
            except KeyboardInterrupt:  # at the prompt: drop the line, as a shell does
                print("^C", flush=True)
                continue
            except EOFError:
                print(flush=True)
                return
            if not handle_line(session, line):
                return
    finally:
        _save_history(setup)


def piped_loop(session: ChatSession, lines) -> None:
    for raw in lines:
        if not handle_line(session, raw.rstrip("\r\n")):
            return


def handle_line(session: ChatSession, line: str) -> bool:
    """Sends a message or runs a command; False to leave."""
    stripped = line.strip()
    if not stripped:
        return True
    if stripped.startswith("//"):
        session.send(stripped[1:])
        return True
    if stripped.startswith("/"):
        return session.command(stripped)
    session.send(line)
    return True


def run(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    color = interactive and sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR")
    style = Style(color)
    if interactive:
        print(style.dim("loading the model..."), flush=True)
    model = common.load_model(args)
    try:
        load_tokenizer_quietly(model)
        if not model.tokenizer.chat_template:
            print(f"pyresa: {model.path.name} has no chat template; use `pyresa generate` for plain "
                  "text completion", file=sys.stderr)
            return 2
    except Exception as e:  # tokenizer unavailable
        print(f"pyresa: {e}", file=sys.stderr)
        return 2
    session = ChatSession(model, sampling_kwargs(args), args.system, interactive=interactive, style=style)
    if interactive:
        attention = getattr(model, "attention", None) or "dense"
        print(f"pyresa chat · {model.model_name} · {model.device} · n_ctx {model.n_ctx} · {attention} attention")
        print(style.dim("Type a message. /help lists the commands; Ctrl-C stops a reply, Ctrl-D leaves."),
              flush=True)
        interactive_loop(session)
    else:
        try:
            piped_loop(session, sys.stdin)
        except KeyboardInterrupt:  # between replies, in a pipe: stop quietly, as `cat` would
            return 130
    return 0


