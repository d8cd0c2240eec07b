"""The sampler against llama.cpp's samplers (the oracle: llama-cpp-python's bindings of
llama_sampler_init_penalties / top_k / top_p / min_p applied to the same logits), and the
candidate path a GPU engine uses (only the largest logits come back) against the full-row path."""

import ctypes

import numpy as np
import pytest

from pyresa.sampling import (MAX_DEVICE_CANDIDATES, Sampler, SamplingParams, apply_penalty, penalized_ids,
                             top_candidates)

llama = pytest.importorskip("llama_cpp")

TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class LlamaCandidates:
    """A llama_token_data_array over numpy memory, for llama.cpp's samplers to work on."""

    def __init__(self, logits: np.ndarray):
        self.buf = np.zeros(logits.size, TOKEN_DATA)
        self.buf["id"] = np.arange(logits.size)
        self.buf["logit"] = logits
        self.arr = llama.llama_token_data_array(
            data=self.buf.ctypes.data_as(ctypes.POINTER(llama.llama_token_data)), size=logits.size, selected=-1,
            sorted=False)

    def apply(self, sampler) -> None:
        try:
            llama.llama_sampler_apply(sampler, ctypes.byref(self.arr))
        finally:
            llama.llama_sampler_free(sampler)

    def ids(self) -> np.ndarray:
        return self.buf["id"][: self.arr.size].copy()

    def logits_by_id(self) -> np.ndarray:
        out = np.empty(self.arr.size, np.float32)
        out[self.buf["id"][: self.arr.size]] = self.buf["logit"][: self.arr.size]
        return out


def random_logits(rng, n=32000, scale=3.0):
    return (rng.standard_normal(n) * scale).astype(np.float32)


def test_repetition_penalty_matches_llama_cpp():
    rng = np.random.default_rng()
    n = 5000
    x = random_logits(rng, n)
    history = list(rng.integers(0, n, 200))  # repeats inside the window count once
    params = SamplingParams(repeat_penalty=1.3, repeat_last_n=64)
    ref = LlamaCandidates(x)
    pen = llama.llama_sampler_init_penalties(n, params.repeat_last_n, params.repeat_penalty, 0.0, 0.0)
    for t in history:
        llama.llama_sampler_accept(pen, int(t))
    ref.apply(pen)
    got = apply_penalty(x, penalized_ids(history, params), params.repeat_penalty)
    np.testing.assert_array_equal(got, ref.logits_by_id())
    assert not np.array_equal(got, x)


def test_penalty_window_edges():
    assert penalized_ids([1, 2, 3], SamplingParams(repeat_penalty=1.2, repeat_last_n=0)).size == 0
    assert penalized_ids([1, 2, 3], SamplingParams(repeat_penalty=1.0)).size == 0
    assert list(penalized_ids([3, 1, 3, 2], SamplingParams(repeat_penalty=1.2, repeat_last_n=-1))) == [1, 2, 3]
    assert list(penalized_ids([3, 1, 3, 2], SamplingParams(repeat_penalty=1.2, repeat_last_n=2))) == [2, 3]


@pytest.mark.parametrize("top_k,top_p,min_p", [(40, 0.95, 0.05), (0, 0.9, 0.0), (0, 1.0, 0.05), (200, 0.5, 0.0),
                                               (5, 1.0, 0.0), (0, 0.8, 0.02)])
def test_kept_candidates_match_llama_cpp(top_k, top_p, min_p):
    """top-k, then top-p and min-p on the renormalised candidates: the same set as llama.cpp's
    samplers chained in that order (its default order)."""
    rng = np.random.default_rng()
    for _ in range(5):
        x = random_logits(rng, scale=float(rng.uniform(1.0, 4.0)))
        ref = LlamaCandidates(x)
        ref.apply(llama.llama_sampler_init_top_k(top_k))
        ref.apply(llama.llama_sampler_init_top_p(top_p, 1))
        ref.apply(llama.llama_sampler_init_min_p(min_p, 1))
        sampler = Sampler(SamplingParams(temperature=0.8, top_k=top_k, top_p=top_p, min_p=min_p))
        ids, vals = top_candidates(x, sampler.candidate_count(x.size))
        keep, n_ref = sampler.kept(vals), ref.arr.size
        # llama.cpp keeps a prefix of the same order ...
        assert set(ref.ids().tolist()) == set(ids[:n_ref].tolist())
        if keep != n_ref:  # ... and may cut elsewhere only where its float32 sums round across p
            probs = np.exp(vals.astype(np.float64) - vals[0])
            cum = np.cumsum(probs / probs.sum())
            lo, hi = sorted((keep, n_ref))
            assert np.all(np.abs(cum[lo - 1: hi] - top_p) < 1e-3), (keep, n_ref, cum[lo - 1: hi + 1])


def test_top_candidates_order_and_ties():
    rng = np.random.default_rng()
    x = rng.integers(-20, 20, 3000).astype(np.float32)  # many equal values
    for k in (1, 7, 40, 500, 3000, 5000):
        ids, vals = top_candidates(x, k)
        order = np.lexsort((np.arange(x.size), -x))  # by value, largest first, then by id
        np.testing.assert_array_equal(ids, order[: min(k, x.size)])
        np.testing.assert_array_equal(vals, x[ids])


def sample_all(params, logits_seq, history, via_candidates, k_device=MAX_DEVICE_CANDIDATES):
    sampler = Sampler(params)
    out = []
    for x in logits_seq:
        wanted = sampler.candidate_count(x.size)
        if not via_candidates or k_device < wanted < x.size:  # (the model copies the full row then)
            token = sampler.sample(x, history)
        else:  # what a GPU engine hands back: the k largest after the penalty, in any order
            z = apply_penalty(x, penalized_ids(history, params), params.repeat_penalty)
            ids, vals = top_candidates(z, min(wanted, k_device))
            shuffle = np.random.default_rng().permutation(ids.size)
            sum_exp = float(np.exp(z.astype(np.float64) - z.max()).sum()) if wanted > k_device else None
            token = sampler.sample_candidates(ids[shuffle], vals[shuffle], z.size, sum_exp)
            if token is None:
                token = sampler.sample(x, history)
        out.append(token)
        history = history + [token]
    return out


@pytest.mark.parametrize("kw", [dict(temperature=0.8, seed=1), dict(temperature=1.2, top_k=0, top_p=0.9, min_p=0.0, seed=2),
                                dict(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, seed=3),
                                dict(temperature=0.9, top_k=1024, top_p=0.99, min_p=0.0, seed=4),
                                dict(temperature=0.8, repeat_penalty=1.4, seed=5), dict(temperature=0, repeat_penalty=1.3)])
def test_candidates_draw_what_the_full_row_draws(kw):
    """Same seed, same logits: drawing from the device's candidates gives the full-row tokens
    (top-k off with top-p reaching past the candidates falls back to the full row)."""
    rng = np.random.default_rng()
    seq = [random_logits(rng, 20000, scale=float(rng.uniform(0.5, 5.0))) for _ in range(40)]
    history = list(rng.integers(0, 20000, 30))
    params = SamplingParams(**kw)
    assert sample_all(params, seq, history, True) == sample_all(params, seq, history, False)


def test_incomplete_candidates_need_the_vocabulary_sum():
    sampler = Sampler(SamplingParams(temperature=0.8, top_k=0))
    with pytest.raises(ValueError, match="sum_exp"):
        sampler.sample_candidates(np.arange(10), np.zeros(10, np.float32), 1000)


def test_nan_is_never_drawn_and_inf_takes_all():
    rng = np.random.default_rng()
    x = random_logits(rng, 1000)
    x[rng.integers(0, 1000, 20)] = np.nan
    for kw in (dict(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0), dict(temperature=0.8), dict(temperature=0)):
        s = Sampler(SamplingParams(seed=1, **kw))
        for _ in range(50):
            assert not np.isnan(x[s.sample(x, [])])
    x[[7, 9]] = np.inf
    s = Sampler(SamplingParams(temperature=0.8, seed=2))
    assert {s.sample(x, []) for _ in range(40)} == {7, 9}
    with pytest.raises(ValueError, match="-inf or NaN"):
        Sampler(SamplingParams(temperature=0.8)).sample(np.full(10, np.nan, np.float32), [])
