"""Token sampling from logits: repetition penalty, top-k, top-p, min-p, then temperature,
in llama.cpp's default order and meaning (top-p and min-p see the untempered distribution). Greedy when temperature is 0. Deterministic for a seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pyresa.errors import InvalidRequestError


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def validate(self) -> "SamplingParams":
        if not (self.temperature >= 0):
            raise InvalidRequestError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidRequestError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not (0 < self.top_p <= 1):
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (0 <= self.min_p <= 1):
            raise InvalidRequestError(f"min_p must be in [0, 1], got {self.min_p}")
        if not (self.repeat_penalty > 0):
            raise InvalidRequestError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        return self


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params.validate()
        self.rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray, history: list[int]) -> int:
        p = self.params
        if p.repeat_penalty != 1.0 and history:
            logits = logits.copy()
            recent = np.unique(np.asarray(history[-p.repeat_last_n:], dtype=np.int64))
            vals = logits[recent]
            logits[recent] = np.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
        if p.temperature == 0:
            return int(np.argmax(logits))
        # Candidates: top-k first (cheap partial sort), then nucleus and min-p on the sorted rest.
        k = p.top_k if 0 < p.top_k < logits.size else logits.size
        idx = np.argpartition(-logits, k - 1)[:k] if k < logits.size else np.arange(logits.size)
        idx = idx[np.argsort(-logits[idx], kind="stable")]
        cand = logits[idx].astype(np.float64)
        probs = np.exp(cand - cand[0])
        probs /= probs.sum()
        keep = probs.size
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
        if p.min_p > 0:
            keep = min(keep, int(np.sum(probs >= p.min_p * probs[0])))
        keep = max(keep, 1)
        scaled = cand[:keep] / p.temperature
        probs = np.exp(scaled - scaled[0])
        probs /= probs.sum()
        return int(idx[self.rng.choice(keep, p=probs)])
