"""Calls for apps: llama-cpp-python's high-level ``create_completion`` / ``create_chat_completion``
(OpenAI-shaped dicts, or chunk dicts when streaming), so an app moves over by changing its
constructor, and async streaming for web apps.

Model inherits these from :class:`CompletionsMixin`. A Model holds one sequence (one KV cache):
async generations on one Model are queued first come, first served, and every step runs on the
Model's own worker thread, so the event loop never waits for the native code (which releases
the GIL while it computes)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Sequence

from pyresa.errors import InvalidRequestError, UnsupportedError
from pyresa.generation import Chunk

ROLES = ("system", "user", "assistant", "tool", "function")


def _reject_unsupported(**given: tuple[Any, Any]) -> None:
    """Options llama-cpp-python or OpenAI accept that pyresa does not implement: fine at their
    neutral value, an error otherwise (silently ignoring them would change what the app gets)."""
    for name, (value, neutral) in given.items():
        if value is not None and value != neutral and not (isinstance(neutral, tuple) and value in neutral):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise UnsupportedError(f"{name} is not supported by pyresa (got {shown})")


def normalize_messages(messages: Sequence[dict]) -> list[dict[str, str]]:
    """OpenAI messages to what chat templates expect: content as one string ("developer" is
    the newer name of "system"; text parts are joined; other parts are not supported)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise InvalidRequestError(f"messages[{i}] needs a 'role' and a 'content': {m!r}")
        role = "system" if m["role"] == "developer" else m["role"]
        if role not in ROLES:
            raise InvalidRequestError(f"messages[{i}]: unknown role {m['role']!r}")
        content = m.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif isinstance(part, dict) and part.get("type") == "text":
                    raise InvalidRequestError(f"messages[{i}]: a text part needs a string 'text'")
                else:
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise UnsupportedError(f"messages[{i}]: content parts of type {kind!r} are not supported")
            content = "".join(parts)
        elif not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}]: content must be a string or a list of text parts")
        if m.get("tool_calls"):
            raise UnsupportedError(f"messages[{i}]: tool calls are not supported")
        out.append({"role": role, "content": content})
    return out


def _usage(stats) -> dict:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
    }


class _Opened:
    """A validated request: the (not yet started) Chunk generator and what the dicts need."""

    def __init__(self, model, chunks: Iterator[Chunk], kind: str, model_name: str, prefix: str = ""):
        self.model = model
        self.chunks = chunks
        self.kind = kind  # "text_completion" or "chat.completion"
        self.id = ("cmpl-" if kind == "text_completion" else "chatcmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model_name = model_name
        self.prefix = prefix  # echoed prompt
        self.started = False

    def _chunk(self, choice: dict, usage: dict | None = None) -> dict:
        out = {"id": self.id, "object": self.kind + ".chunk" if self.kind == "chat.completion" else self.kind,
               "created": self.created, "model": self.model_name, "choices": [choice]}
        if usage is not None:
            out["usage"] = usage
        return out

    def convert(self, chunk: Chunk) -> list[dict]:
        """The chunk dicts for one Chunk (none for a step that produced no text)."""
        out = []
        chat = self.kind == "chat.completion"
        if not self.started:
            self.started = True
            if chat:
                out.append(self._chunk({"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}))
            elif self.prefix:
                out.append(self._chunk({"text": self.prefix, "index": 0, "logprobs": None, "finish_reason": None}))
        if chunk.text:
            if chat:
                choice = {"index": 0, "delta": {"content": chunk.text}, "logprobs": None, "finish_reason": None}
            else:
                choice = {"text": chunk.text, "index": 0, "logprobs": None, "finish_reason": None}
            out.append(self._chunk(choice))
        if chunk.finish_reason is not None:
            if chat:
                choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": chunk.finish_reason}
            else:
                choice = {"text": "", "index": 0, "logprobs": None, "finish_reason": chunk.finish_reason}
            out.append(self._chunk(choice, usage=_usage(self.model.last_stats)))
        return out


def completion_from_chunks(chunks: Iterable[dict]) -> dict:
    """The whole response (a "text_completion" or "chat.completion" dict) from its stream of
    chunk dicts."""
    chunks = list(chunks)
    if not chunks:
        raise InvalidRequestError("no chunks to gather")
    first = chunks[0]
    text, finish, usage = [], None, None
    for d in chunks:
        for c in d["choices"]:
            text.append((c["delta"].get("content") or "") if "delta" in c else c["text"])
            finish = c["finish_reason"] or finish
        usage = d.get("usage") or usage
    if first["object"] == "chat.completion.chunk":
        kind = "chat.completion"
        choice = {"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                  "logprobs": None, "finish_reason": finish}
    else:
        kind = "text_completion"
        choice = {"text": "".join(text), "index": 0, "logprobs": None, "finish_reason": finish}
    return {"id": first["id"], "object": kind, "created": first["created"], "model": first["model"],
            "choices": [choice], "usage": usage}


# -- the Model's worker thread and queue ---------------------------------------------------------
_setup_lock = threading.Lock()


def _executor(model) -> ThreadPoolExecutor:
    """One thread per Model: steps of a generation and the next request's validation run there in
    submission order, so a generation is never stepped from two threads at once."""
    ex = model.__dict__.get("_pyresa_executor")
    if ex is None:
        with _setup_lock:
            ex = model.__dict__.get("_pyresa_executor")
            if ex is None:
                ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyresa-model")
                model.__dict__["_pyresa_executor"] = ex
    return ex


def _queue(model) -> asyncio.Lock:
    """The Model's first-come-first-served queue of async generations, one per event loop."""
    with _setup_lock:
        locks = model.__dict__.setdefault("_pyresa_async_locks", weakref.WeakKeyDictionary())
        loop = asyncio.get_running_loop()
        if loop not in locks:
            locks[loop] = asyncio.Lock()  # FIFO: waiters are woken in arrival order
        return locks[loop]


async def _in_model_thread(model, fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_executor(model), fn)


_END = object()


def _next(it: Iterator):
    return next(it, _END)  # StopIteration cannot cross a Future


async def _drain(model, chunks: Iterator) -> AsyncIterator:
    """Waits its turn for the Model, then steps the generator on the Model's thread."""
    async with _queue(model):
        ex, loop = _executor(model), asyncio.get_running_loop()
        try:
            while True:
                item = await loop.run_in_executor(ex, _next, chunks)
                if item is _END:
                    return
                yield item
        finally:
            # Cancelled (client gone) or abandoned: stop the generation. Queued behind a step that
            # may still be running, so the next request in line also starts after it.
            close = getattr(chunks, "close", None)
            if close is not None:
                ex.submit(close)


async def _agather(dicts: AsyncIterator[dict]) -> dict:
    return completion_from_chunks([d async for d in dicts])


async def _adicts(opened: _Opened) -> AsyncIterator[dict]:
    chunks = _drain(opened.model, opened.chunks)
    try:
        async for chunk in chunks:
            for d in opened.convert(chunk):
                yield d
    finally:
        await chunks.aclose()  # now, not when the garbage collector gets to it: the next request waits


def _dicts(opened: _Opened) -> Iterator[dict]:
    for chunk in opened.chunks:
        yield from opened.convert(chunk)


class CompletionsMixin:
    """OpenAI-shaped and async calls; mixed into :class:`pyresa.Model`."""

    @property
    def model_name(self) -> str:
        """The name responses carry in their "model" field (the file name without .gguf)."""
        name = self.path.name
        return name[:-5] if name.endswith(".gguf") else name

    # -- validation, shared by the sync and async calls ---------------------------------------
    def _open_completion(self, prompt: str | list[int], suffix: str | None = None, max_tokens: int | None = 16,
                         temperature: float = 0.8, top_p: float = 0.95, min_p: float = 0.05,
                         typical_p: float = 1.0, logprobs: int | None = None, echo: bool = False,
                         stop: str | list[str] | None = None, frequency_penalty: float = 0.0,
                         presence_penalty: float = 0.0, repeat_penalty: float = 1.0, top_k: int = 40,
                         seed: int | None = None, tfs_z: float = 1.0, mirostat_mode: int = 0,
                         mirostat_tau: float = 5.0, mirostat_eta: float = 0.1, model: str | None = None,
                         stopping_criteria=None, logits_processor=None, grammar=None,
                         logit_bias: dict | None = None) -> _Opened:
        _reject_unsupported(suffix=(suffix, ("", None)), logprobs=(logprobs, (0, False)),
                            frequency_penalty=(frequency_penalty, 0.0), presence_penalty=(presence_penalty, 0.0),
                            typical_p=(typical_p, 1.0), tfs_z=(tfs_z, 1.0), mirostat_mode=(mirostat_mode, 0),
                            stopping_criteria=(stopping_criteria, None), logits_processor=(logits_processor, None),
                            grammar=(grammar, None), logit_bias=(logit_bias, ({},)))
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) and not (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
            raise InvalidRequestError("prompt must be a string or a list of token ids (one prompt per request)")
        chunks = self.generate(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               min_p=min_p, repeat_penalty=repeat_penalty, seed=seed, stop=stop)
        prefix = "" if not echo else prompt if isinstance(prompt, str) else self.detokenize(prompt)
        return _Opened(self, chunks, "text_completion", model or self.model_name, prefix)

    def _open_chat(self, messages: list[dict], functions=None, function_call=None, tools=None, tool_choice=None,
                   temperature: float = 0.2, top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                   typical_p: float = 1.0, stop: str | list[str] | None = None, seed: int | None = None,
                   response_format: dict | None = None, max_tokens: int | None = None,
                   presence_penalty: float = 0.0, frequency_penalty: float = 0.0, repeat_penalty: float = 1.0,
                   tfs_z: float = 1.0, mirostat_mode: int = 0, mirostat_tau: float = 5.0,
                   mirostat_eta: float = 0.1, model: str | None = None, logits_processor=None, grammar=None,
                   logit_bias: dict | None = None, logprobs: bool | None = None,
                   top_logprobs: int | None = None) -> _Opened:
        fmt = response_format.get("type") if isinstance(response_format, dict) else response_format
        _reject_unsupported(functions=(functions, ([],)), function_call=(function_call, ("none",)),
                            tools=(tools, ([],)), tool_choice=(tool_choice, ("none",)),
                            response_format=(fmt, "text"), logprobs=(logprobs, False),
                            top_logprobs=(top_logprobs, 0), frequency_penalty=(frequency_penalty, 0.0),
                            presence_penalty=(presence_penalty, 0.0), typical_p=(typical_p, 1.0),
                            tfs_z=(tfs_z, 1.0), mirostat_mode=(mirostat_mode, 0),
                            logits_processor=(logits_processor, None), grammar=(grammar, None),
                            logit_bias=(logit_bias, ({},)))
        chunks = self.chat(normalize_messages(messages), max_tokens=max_tokens, temperature=temperature,
                           top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, seed=seed,
                           stop=stop)
        return _Opened(self, chunks, "chat.completion", model or self.model_name)

    # -- llama-cpp-python's calls ---------------------------------------------------------------
    def create_completion(self, prompt: str | list[int], suffix: str | None = None, max_tokens: int | None = 16,
                          temperature: float = 0.8, top_p: float = 0.95, min_p: float = 0.05,
                          typical_p: float = 1.0, logprobs: int | None = None, echo: bool = False,
                          stop: str | list[str] | None = None, frequency_penalty: float = 0.0,
                          presence_penalty: float = 0.0, repeat_penalty: float = 1.0, top_k: int = 40,
                          stream: bool = False, seed: int | None = None, **options) -> dict | Iterator[dict]:
        """Complete `prompt`: an OpenAI "text_completion" dict, or with ``stream=True`` an iterator
        of chunk dicts whose last one has ``finish_reason`` and ``usage``. Arguments are checked
        here, before any token is generated. ``max_tokens=None`` runs until a stop or the context
        is full. Further llama-cpp-python options (``model``, ``mirostat_mode``, ...) are accepted
        at their neutral values."""
        opened = self._open_completion(prompt, suffix, max_tokens, temperature, top_p, min_p, typical_p, logprobs,
                                       echo, stop, frequency_penalty, presence_penalty, repeat_penalty, top_k,
                                       seed, **options)
        return _dicts(opened) if stream else completion_from_chunks(_dicts(opened))

    def __call__(self, prompt: str | list[int], **kwargs) -> dict | Iterator[dict]:
        """``model(prompt, ...)`` is ``create_completion``, as in llama-cpp-python."""
        return self.create_completion(prompt, **kwargs)

    def create_chat_completion(self, messages: list[dict], *, stream: bool = False,
                               **options) -> dict | Iterator[dict]:
        """Reply to `messages` through the model's chat template: an OpenAI "chat.completion" dict,
        or with ``stream=True`` an iterator of "chat.completion.chunk" dicts (a first one with the
        role, then content deltas, then one with ``finish_reason`` and ``usage``). Options as
        llama-cpp-python's: temperature (0.2), top_p, top_k, min_p, stop, seed, max_tokens (None:
        until the model ends its turn or the context is full), repeat_penalty, ..."""
        opened = self._open_chat(messages, **options)
        return _dicts(opened) if stream else completion_from_chunks(_dicts(opened))

    # -- async ---------------------------------------------------------------------------------
    async def acreate_completion(self, prompt: str | list[int], *, stream: bool = False,
                                 **options) -> dict | AsyncIterator[dict]:
        """``create_completion`` for asyncio: ``await`` it for the dict, or with ``stream=True``
        ``await`` it (arguments are checked then) and ``async for`` over the chunk dicts."""
        opened = await _in_model_thread(self, lambda: self._open_completion(prompt, **options))
        return _adicts(opened) if stream else await _agather(_adicts(opened))

    async def acreate_chat_completion(self, messages: list[dict], *, stream: bool = False,
                                      **options) -> dict | AsyncIterator[dict]:
        """``create_chat_completion`` for asyncio (see ``acreate_completion``)."""
        opened = await _in_model_thread(self, lambda: self._open_chat(messages, **options))
        return _adicts(opened) if stream else await _agather(_adicts(opened))

    async def agenerate(self, prompt: str | Sequence[int], **sampling) -> AsyncIterator[Chunk]:
        """``generate`` for asyncio: ``async for chunk in model.agenerate(...)``."""
        chunks = await _in_model_thread(self, lambda: self.generate(prompt, **sampling))
        drained = _drain(self, chunks)
        try:
            async for chunk in drained:
                yield chunk
        finally:
            await drained.aclose()

    async def achat(self, messages: list[dict], **sampling) -> AsyncIterator[Chunk]:
        """``chat`` for asyncio: ``async for chunk in model.achat(messages, ...)``."""
        chunks = await _in_model_thread(self, lambda: self.chat(normalize_messages(messages), **sampling))
        drained = _drain(self, chunks)
        try:
            async for chunk in drained:
                yield chunk
        finally:
            await drained.aclose()
