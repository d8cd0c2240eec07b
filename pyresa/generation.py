"""Streaming pieces of a generation: the chunk type, stop-string handling, and statistics."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Chunk:
    """One step of a streamed generation. ``text`` may be empty (a token that only started a
    multi-byte character, or text held back because it may begin a stop string)."""

    text: str
    token: int | None
    finish_reason: str | None = None  # "stop" or "length" on the last chunk


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the KV cache, not prefilled again
    completion_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    attention: str = "dense"
    kv_blocks_read: float = 1.0  # share of the KV blocks read by decode steps (1.0 for dense)
    rectifications: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def decode_tokens_per_second(self) -> float:
        return self.completion_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def prefill_tokens_per_second(self) -> float:
        n = self.prompt_tokens - self.cached_tokens
        return n / self.prefill_seconds if self.prefill_seconds > 0 else 0.0


class StopStringFilter:
    """Holds back the end of the text while it could still grow into a stop string, so a stop
    string never reaches the caller, even when it is split across tokens."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was found)."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [(self.pending.find(s), s) for s in self.stops]
        hits = [(i, s) for i, s in hits if i >= 0]
        if hits:
            i = min(h[0] for h in hits)
            out, self.pending = self.pending[:i], ""
            return out, True
        keep = 0  # longest suffix of pending that is a proper prefix of some stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
