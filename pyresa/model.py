"""The high-level model: load a GGUF, tokenize, compute logits, generate and chat, streaming."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from pyresa import _core
from pyresa.api import CompletionsMixin
from pyresa.default_model import default_model_path
from pyresa.errors import ContextFullError, InvalidRequestError, UnsupportedError
from pyresa.generation import Chunk, GenerationStats, StopStringFilter
from pyresa.gguf_file import open_gguf
from pyresa.resa import ResaConfig, check_mode
from pyresa.sampling import MAX_DEVICE_CANDIDATES, Sampler, SamplingParams, penalized_ids
from pyresa.tokenizer import StreamDecoder, Tokenizer

DEFAULT_MAX_TOKENS = 256


class Model(CompletionsMixin):
    """A GGUF language model and one sequence (its KV cache).

    ``Model()`` loads the default model (SmolLM2-135M-Instruct Q4_1), fetching it on first use.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, n_ctx: int | None = None,
                 threads: int | None = None, device: str = "cpu", n_batch: int = 256,
                 attention: str = "dense", resa: ResaConfig | None = None):
        self.path = Path(path) if path is not None else default_model_path()
        self.device = self._resolve_device(device)
        self.file = open_gguf(self.path)
        self.config = dict(self.file.config)
        if n_ctx is None:
            n_ctx = self.config["n_ctx_train"]
        if n_ctx <= 0:
            raise InvalidRequestError(f"n_ctx must be positive, got {n_ctx}")
        if threads is not None and threads <= 0:
            raise InvalidRequestError(f"threads must be positive, got {threads}")
        self._engine = self._make_engine(n_ctx, threads or 0, n_batch)
        self.tokenizer = Tokenizer(self.path, self.file.metadata)
        self._cached: list[int] = []  # tokens whose K/V are in the cache, in order
        self.last_stats = GenerationStats()
        self.attention = "dense"
        self.resa = ResaConfig()
        self.set_attention(attention, resa)

    def set_attention(self, attention: str, resa: ResaConfig | None = None, *, _audit: bool = False) -> None:
        """Decode attention: "dense", "sparse" (block-sparse, no rectification) or "resa"
        (block-sparse + dense rectification every resa.rectify_every tokens). Prefill is dense.
        (_audit: score()'s selection audit, see there.)"""
        check_mode(attention)
        if resa is not None and not isinstance(resa, ResaConfig):
            raise InvalidRequestError(f"resa must be a pyresa.ResaConfig, got {type(resa).__name__}")
        self.resa = resa or self.resa
        r, audit = self.resa, _audit
        extra = {}
        if r.selection != "minmax" or audit:
            if self.device != "cpu":
                raise UnsupportedError("oracle block selection and the selection audit run on the CPU only")
            extra = {"selection": r.selection, "audit": audit}
        self._engine.set_attention(attention, r.block_size, float(r.ratio), r.min_blocks, r.local_blocks,
                                   r.rectify_every, **extra)
        self.attention = attention

    @staticmethod
    def _resolve_device(device: str) -> str:
        if device == "cpu":
            return "cpu"
        if device == "auto":
            return "cuda:0" if _core.cuda_available() else "cpu"
        if device == "cuda" or device.startswith("cuda:"):
            index = device[5:] if device.startswith("cuda:") else "0"
            if not index.isdigit():
                raise InvalidRequestError(f"bad device '{device}' (cuda, cuda:N)")
            if not getattr(_core, "cuda_built", False):
                raise UnsupportedError("this build of pyresa has no CUDA backend (device='cuda'); use device='cpu'")
            count = _core.cuda_device_count()
            if int(index) >= count:
                raise UnsupportedError(f"device '{device}' is not available ({count} CUDA device(s) found)")
            return f"cuda:{int(index)}"
        raise InvalidRequestError(f"unknown device '{device}' (cpu, cuda, cuda:N, auto)")

    def _make_engine(self, n_ctx: int, threads: int, n_batch: int):
        if self.device.startswith("cuda:"):
            # GPU prefill wants large chunks: at least 512 tokens per forward.
            return _core.CudaEngine(self.config, self.file.tensor_table(), n_ctx, 0, max(n_batch, 512),
                                    int(self.device[5:]))
        return _core.Engine(self.config, self.file.tensor_table(), n_ctx, threads, n_batch)

    # -- properties --------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._engine.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.config["n_vocab"]

    @property
    def threads(self) -> int:
        return self._engine.n_threads

    @property
    def n_cached(self) -> int:
        """Tokens currently in the KV cache (reused by the next generation if they match)."""
        return len(self._cached)

    # -- text --------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer.tokenize(text, add_special)

    def detokenize(self, ids: Iterable[int]) -> str:
        return self.tokenizer.detokenize(list(ids))

    def _prompt_tokens(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenize(prompt, add_special=True)
        tokens = [int(t) for t in prompt]
        bad = [t for t in tokens if not 0 <= t < self.n_vocab]
        if bad:
            raise InvalidRequestError(f"token id {bad[0]} outside the vocabulary [0, {self.n_vocab})")
        return tokens

    # -- evaluation --------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the KV cache."""
        self._engine.truncate(0)
        self._cached = []

    def logits(self, tokens: Sequence[int], *, as_cupy: bool = False):
        """Logits of every position, float32 [len(tokens), n_vocab], from a fresh context (dense).

        On a CUDA device, ``as_cupy=True`` returns a CuPy array that stays on the GPU (zero-copy,
        through DLPack)."""
        tokens = self._prompt_tokens(tokens)
        if not tokens:
            raise InvalidRequestError("logits() needs at least one token")
        self._check_fits(len(tokens))
        if as_cupy and not self.device.startswith("cuda"):
            raise InvalidRequestError("as_cupy=True needs a CUDA device")
        self.reset()
        if as_cupy:
            import cupy

            out = cupy.from_dlpack(self._engine.eval_device(np.asarray(tokens, dtype=np.int32), True))
            self._cached = list(tokens)
            return out
        out = self._engine.eval(np.asarray(tokens, dtype=np.int32), True)
        self._cached = list(tokens)
        return out

    def score(self, tokens: Sequence[int], *, prefill: int, attention: str | None = None,
              resa: ResaConfig | None = None, audit: bool = False) -> np.ndarray:
        """Per-token log-probabilities with teacher forcing ("language modelling in decode mode"):
        the first `prefill` tokens are prefilled densely, every later token goes through the
        decode path of `attention` (rectification included). Returns float64 [len(tokens) - prefill]:
        log p(tokens[i] | tokens[:i]) for i = prefill .. len(tokens) - 1.

        audit=True (CPU, sparse modes) also measures at every sparse step the true attention mass
        the selected blocks hold, and the most any n_sel blocks could hold (the oracle's):
        last_score_stats["mass_selected"] / ["mass_oracle"], one mean per layer. It reads every
        key each step, so scoring is much slower."""
        tokens = self._prompt_tokens(tokens)
        if not 1 <= prefill < len(tokens):
            raise InvalidRequestError(f"prefill must be in [1, {len(tokens) - 1}], got {prefill}")
        self._check_fits(len(tokens))
        saved = (self.attention, self.resa)
        try:
            self.set_attention(attention or self.attention, resa, _audit=audit)
            self.reset()
            self._engine.reset_stats()
            out = np.empty(len(tokens) - prefill, dtype=np.float64)
            logits = self._engine.eval(np.asarray(tokens[:prefill], dtype=np.int32), False)
            for i in range(prefill, len(tokens)):
                z = logits.astype(np.float64)
                m = z.max()
                out[i - prefill] = z[tokens[i]] - m - np.log(np.exp(z - m).sum())
                if i + 1 < len(tokens):
                    logits = self._engine.eval(np.asarray(tokens[i: i + 1], dtype=np.int32), False)
            self._cached = list(tokens[:-1])
            self.last_score_stats = self._engine.stats()
            return out
        finally:
            self.set_attention(*saved)

    def _check_fits(self, n: int) -> None:
        if n > self.n_ctx:
            raise ContextFullError(f"{n} tokens do not fit in the context window (n_ctx = {self.n_ctx})")

    def _prefill(self, tokens: list[int], evaluate: Callable[[np.ndarray], object]) -> tuple[object, int]:
        """Bring the cache to `tokens`, reusing the longest common prefix; returns what `evaluate`
        gives for the tokens that had to run (see `_decoder`) and the reused length."""
        common = 0
        for x, y in zip(self._cached, tokens):
            if x != y:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # at least one token must run to give logits
        self._engine.truncate(common)
        self._cached = self._cached[:common]
        out = evaluate(np.asarray(tokens[common:], dtype=np.int32))
        self._cached = list(tokens)
        return out, common

    def _decoder(self, sampler: Sampler, history: list[int]) -> tuple[Callable[[np.ndarray], object],
                                                                      Callable[[object], int]]:
        """How a generation step runs: `evaluate` feeds tokens to the engine, `pick` turns what it
        returned into the next token. On the CPU: the full logits and the sampler. On a CUDA
        device the logits (600 KB a token at a 152K vocabulary) stay on the GPU: greedy without a
        penalty takes the argmax there; otherwise the penalty and the top-k run there and only the
        candidates come back, from which the sampler draws exactly as from the full row (top_k
        between the candidate limit, 1,024, and the vocabulary size copies the full row)."""
        p = sampler.params
        n_vocab = self.n_vocab
        wanted = sampler.candidate_count(n_vocab)
        if not self.device.startswith("cuda") or MAX_DEVICE_CANDIDATES < wanted < n_vocab:
            # (a top_k over the device's candidate limit normalises over more logits than come back)
            return (lambda t: self._engine.eval(t, False)), (lambda logits: sampler.sample(logits, history))
        if p.temperature == 0 and p.repeat_penalty == 1.0:
            return self._engine.eval_greedy, (lambda token: token)
        k = min(wanted, MAX_DEVICE_CANDIDATES)
        penalty = float(np.float32(p.repeat_penalty))

        def evaluate(t: np.ndarray):
            return self._engine.eval_top(t, k, penalized_ids(history, p), penalty, wanted > k)

        def pick(out) -> int:
            ids, vals, _, sum_exp = out
            token = sampler.sample_candidates(ids, vals, n_vocab, sum_exp if wanted > k else None)
            if token is None:  # top-k off and top-p/min-p reach past the candidates: the full row
                token = sampler.sample(self._engine.last_logits(), history)
            return token

        return evaluate, pick

    def generate(self, prompt: str | Sequence[int], *, max_tokens: int | None = DEFAULT_MAX_TOKENS,
                 temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 repeat_penalty: float = 1.0, seed: int | None = None, stop: str | Sequence[str] | None = None,
                 ) -> Iterator[Chunk]:
        """Stream a continuation of `prompt` (text or token ids), one Chunk per token.

        The last chunk has ``finish_reason`` "stop" (end-of-generation token or a stop string,
        which is never included in the text) or "length" (max_tokens or the context is full)."""
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, seed=seed).validate()
        tokens = self._prompt_tokens(prompt)
        if not tokens:
            raise InvalidRequestError("the prompt is empty")
        self._check_fits(len(tokens))
        if max_tokens is not None and max_tokens < 0:
            raise InvalidRequestError(f"max_tokens must be >= 0, got {max_tokens}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return self._generate(tokens, max_tokens, params, stops)

    def _generate(self, tokens: list[int], max_tokens: int | None, params: SamplingParams,
                  stops: list[str]) -> Iterator[Chunk]:
        stats = GenerationStats(prompt_tokens=len(tokens), attention=self.attention)
        self.last_stats = stats
        self._engine.reset_stats()
        t0 = time.perf_counter()
        sampler = Sampler(params)
        history = list(tokens)
        evaluate, pick = self._decoder(sampler, history)
        # `last`: what the engine gave for the newest position (logits, or candidates, or the token).
        last, stats.cached_tokens = self._prefill(tokens, evaluate)
        stats.prefill_seconds = time.perf_counter() - t0
        stop_ids = self.tokenizer.stop_ids() if self._has_tokenizer() else set()
        decoder, stop_filter = StreamDecoder(), StopStringFilter(stops)
        limit = max_tokens if max_tokens is not None else self.n_ctx - len(tokens)
        t_decode = time.perf_counter()
        n = 0
        while True:
            if n >= limit:
                yield Chunk(stop_filter.flush() + decoder.flush(), None, "length")
                return
            token = pick(last)
            history.append(token)
            n += 1
            stats.completion_tokens = n
            if token in stop_ids:
                stats.decode_seconds = time.perf_counter() - t_decode
                yield Chunk(stop_filter.flush() + decoder.flush(), token, "stop")
                return
            text = decoder.push(self.tokenizer.token_bytes(token)) if stop_ids or self._has_tokenizer() else ""
            text, hit = stop_filter.push(text)
            if hit:
                stats.decode_seconds = time.perf_counter() - t_decode
                yield Chunk(text, token, "stop")
                return
            if len(self._cached) >= self.n_ctx:  # the sampled token has no room in the cache
                stats.decode_seconds = time.perf_counter() - t_decode
                yield Chunk(text + stop_filter.flush() + decoder.flush(), token, "length")
                return
            if n < limit:
                step = np.asarray([token], dtype=np.int32)
                last = evaluate(step)
                self._cached.append(token)
            stats.decode_seconds = time.perf_counter() - t_decode
            self._update_attention_stats(stats)
            yield Chunk(text, token)

    def _update_attention_stats(self, stats: GenerationStats) -> None:
        s = self._engine.stats()
        stats.kv_blocks_read = s["blocks_read"] / s["blocks_total"] if s["blocks_total"] else 1.0
        stats.rectifications = s["rectifications"]

    def _has_tokenizer(self) -> bool:
        try:
            self.tokenizer.llama
            return True
        except Exception:
            return False

    def chat(self, messages: list[dict[str, str]], **sampling) -> Iterator[Chunk]:
        """Stream the assistant's reply to `messages` ([{"role": ..., "content": ...}]) using the
        model's chat template."""
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise InvalidRequestError(f"each message needs 'role' and 'content': {m!r}")
        prompt = self.tokenizer.render_chat(messages, add_generation_prompt=True)
        tokens = self.tokenize(prompt, add_special=False)
        if self.tokenizer.add_bos and self.tokenizer.bos_id is not None and tokens[:1] != [self.tokenizer.bos_id]:
            tokens = [self.tokenizer.bos_id] + tokens
        return self.generate(tokens, **sampling)
