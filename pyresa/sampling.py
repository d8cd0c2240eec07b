"""Token sampling from logits: repetition penalty, top-k, top-p, min-p, then temperature,
in llama.cpp's default order and meaning (top-p and min-p see the untempered distribution). Greedy when temperature is 0. Deterministic for a seed."""

from __future__ import annotations

from collections.abc import Sequence
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


# Most candidates a GPU engine hands back per step (its top-k kernel: one per thread of a CTA).
MAX_DEVICE_CANDIDATES = 1024


def penalized_ids(history: Sequence[int], params: SamplingParams) -> np.ndarray:
    """The distinct ids the repetition penalty applies to: the last `repeat_last_n` of the history
    (0: none, -1: all), or none when the penalty is 1."""
    n = params.repeat_last_n
    if params.repeat_penalty == 1.0 or n == 0 or not history:
        return np.zeros(0, dtype=np.int32)
    recent = history if n < 0 else history[-n:]
    return np.unique(np.asarray(recent, dtype=np.int32))


def apply_penalty(logits: np.ndarray, ids: np.ndarray, penalty: float) -> np.ndarray:
    """llama.cpp's repetition penalty on a copy: logit / penalty if > 0, else logit * penalty."""
    if ids.size == 0 or penalty == 1.0:
        return logits
    logits = logits.copy()
    vals = logits[ids]
    logits[ids] = np.where(vals > 0, vals / np.float32(penalty), vals * np.float32(penalty))
    return logits


def top_candidates(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest logits and their ids, largest first; equal logits in id order, and at the
    k-th value the lowest ids are kept (the rule the GPU's top-k kernel follows too)."""
    n = logits.size
    if k >= n:
        idx = np.arange(n)
    else:
        part = np.argpartition(-logits, k - 1)[:k]
        kth = logits[part].min()
        above = np.flatnonzero(logits > kth)
        idx = np.concatenate([above, np.flatnonzero(logits == kth)[: k - above.size]])
    return order_candidates(idx, logits[idx])


def order_candidates(ids: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort candidates by logit, largest first, then by id."""
    order = np.lexsort((ids, -vals))
    return np.asarray(ids)[order], np.asarray(vals)[order]


def without_nan(logits: np.ndarray) -> np.ndarray:
    """NaN logits (a numerical fault upstream) become -inf: never drawn, never ahead of a number."""
    nan = np.isnan(logits)
    return np.where(nan, np.float32(-np.inf), logits).astype(logits.dtype) if nan.any() else logits


def relative_weights(sorted_vals: np.ndarray) -> np.ndarray:
    """exp(v - max) for values sorted largest first; an infinite maximum gets all the weight
    (shared among equal ones) instead of inf - inf = NaN."""
    top = sorted_vals[0]
    if not np.isfinite(top):
        if top < 0:
            raise ValueError("cannot sample: every logit is -inf or NaN")
        return (sorted_vals == top).astype(np.float64)
    return np.exp(sorted_vals - top)


class Sampler:
    """Draws tokens for one generation. `sample` takes a position's full logits (CPU engine);
    `sample_candidates` takes only the largest ones (what a GPU engine copies out) and draws the
    same token as `sample` would from the full row, or answers None when the candidates cannot
    decide (top-k off, and top-p / min-p reach past them): then the caller passes the full row."""

    def __init__(self, params: SamplingParams):
        self.params = params.validate()
        self.rng = np.random.default_rng(params.seed)

    def candidate_count(self, n_vocab: int) -> int:
        """How many of the largest logits decide a draw: top_k, or the whole vocabulary when off."""
        p = self.params
        if p.temperature == 0:
            return 1
        return p.top_k if 0 < p.top_k < n_vocab else n_vocab

    def sample(self, logits: np.ndarray, history: Sequence[int]) -> int:
        p = self.params
        logits = apply_penalty(without_nan(logits), penalized_ids(history, p), p.repeat_penalty)
        if p.temperature == 0:
            return int(np.argmax(logits))
        ids, vals = top_candidates(logits, self.candidate_count(logits.size))
        token = self._draw(ids, vals, None)
        assert token is not None  # the complete candidate list always decides
        return token

    def sample_candidates(self, ids: np.ndarray, vals: np.ndarray, n_vocab: int,
                          sum_exp: float | None = None) -> int | None:
        """Draw from the largest logits (any order; after the penalty). With fewer candidates than
        `candidate_count(n_vocab)`, `sum_exp` must be sum(exp(logit - max)) over the vocabulary."""
        ids, vals = order_candidates(ids, without_nan(vals))
        if self.params.temperature == 0:
            return int(ids[0])
        complete = ids.size >= self.candidate_count(n_vocab)
        if not complete and sum_exp is None:
            raise ValueError("an incomplete candidate list needs the vocabulary's sum_exp")
        return self._draw(ids, vals, None if complete else sum_exp)

    def kept(self, vals: np.ndarray, sum_exp: float | None = None) -> int | None:
        """How many of the candidates (logits, largest first) top-p and min-p keep, on the untempered
        distribution over the candidates, or over the vocabulary when `sum_exp` is given for an
        incomplete list; None when that list cannot decide."""
        p = self.params
        cand = vals.astype(np.float64)
        probs = relative_weights(cand)
        probs /= probs.sum() if sum_exp is None else sum_exp
        keep = None if sum_exp is not None else probs.size
        if p.top_p < 1.0:
            at = int(np.searchsorted(np.cumsum(probs), p.top_p))
            if at < probs.size:
                keep = at + 1
        if p.min_p > 0:
            n_min = int(np.sum(probs >= p.min_p * probs[0]))
            if n_min < probs.size or sum_exp is None:
                keep = n_min if keep is None else min(keep, n_min)
        return None if keep is None else max(keep, 1)

    def _draw(self, ids: np.ndarray, vals: np.ndarray, sum_exp: float | None) -> int | None:
        """Top-p and min-p (`kept`), then the temperature, then one seeded draw."""
        keep = self.kept(vals, sum_exp)
        if keep is None:
            return None
        probs = relative_weights(vals[:keep].astype(np.float64) / self.params.temperature)
        probs /= probs.sum()
        return int(ids[self.rng.choice(keep, p=probs)])
