"""Tokenizer and chat template through llama-cpp-python's vocabulary-only loader, so text is
split exactly as llama.cpp splits it. Loaded lazily: a model driven by token ids needs no
tokenizer (a GPU machine without llama-cpp-python can still run it)."""

from __future__ import annotations

import codecs
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from pyresa.errors import TokenizerUnavailableError


class Tokenizer:
    def __init__(self, path: Path, metadata: dict[str, Any]):
        self.path = path
        self.metadata = metadata
        self._llama = None
        self.bos_id = metadata.get("tokenizer.ggml.bos_token_id")
        self.eos_id = metadata.get("tokenizer.ggml.eos_token_id")
        self.eot_id = metadata.get("tokenizer.ggml.eot_token_id")
        self.add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
        self.chat_template = metadata.get("tokenizer.chat_template")

    @property
    def llama(self):
        if self._llama is None:
            try:
                from llama_cpp import Llama
            except ImportError as e:
                raise TokenizerUnavailableError(
                    "text needs the tokenizer from llama-cpp-python, which is not installed "
                    "(pip install llama-cpp-python), or pass token ids instead") from e
            with _native_stderr_captured():
                self._llama = Llama(str(self.path), vocab_only=True, verbose=False)
        return self._llama

    def stop_ids(self) -> set[int]:
        """Tokens that end a generation: EOS, EOT, and the vocabulary's end-of-generation tokens."""
        ids = {i for i in (self.eos_id, self.eot_id) if i is not None}
        try:
            import llama_cpp

            vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
            n = llama_cpp.llama_vocab_n_tokens(vocab)
            ids |= {t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        except (ImportError, AttributeError, TokenizerUnavailableError):
            pass
        return ids

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        # special=True: control tokens written in the text (as chat templates do) are parsed.
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=add_special and self.add_bos, special=True))

    def token_bytes(self, token: int) -> bytes:
        return self.llama.detokenize([token])

    def detokenize(self, ids: list[int]) -> str:
        return self.llama.detokenize(list(ids)).decode("utf-8", errors="replace")

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise TokenizerUnavailableError(f"{self.path.name} has no tokenizer.chat_template")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def piece(i):
            return self.llama.detokenize([i], special=True).decode("utf-8", errors="replace") if i is not None else ""

        fmt = Jinja2ChatFormatter(self.chat_template, eos_token=piece(self.eos_id), bos_token=piece(self.bos_id),
                                  add_generation_prompt=add_generation_prompt)
        return fmt(messages=messages).prompt


class _native_stderr_captured:
    """llama.cpp prints load-time warnings on file descriptor 2 even with verbose=False (e.g.
    'n_ctx_seq (512) > n_ctx_train (0)' for a vocabulary-only load). Capture them; show them
    only if loading fails."""

    def __enter__(self):
        self.saved = None
        try:
            sys.stderr.flush()
            self.fd = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):  # stderr replaced (pytest capture, IDEs)
            return self
        self.captured = tempfile.TemporaryFile()
        self.saved = os.dup(self.fd)
        os.dup2(self.captured.fileno(), self.fd)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.saved is None:
            return False
        os.dup2(self.saved, self.fd)
        os.close(self.saved)
        if exc_type is not None:
            self.captured.seek(0)
            sys.stderr.write(self.captured.read().decode("utf-8", "replace"))
        self.captured.close()
        return False


class StreamDecoder:
    """Turns token bytes into text without ever emitting half a UTF-8 character: bytes of an
    incomplete character are held until the token that completes it arrives."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
