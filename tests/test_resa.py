"""Rectified Sparse Attention on the CPU: the modes' agreement at ratio 1, rectification's
rewrite of the cache (against a dense run of the same tokens), descriptors (against numpy
min/max of the cached keys), boundaries of rectify_every, and the configuration's checks."""

from __future__ import annotations

import numpy as np
import pytest

import pyresa
from pyresa import ResaConfig
from pyresa.errors import ContextFullError, InvalidRequestError


def decode(model, toks):
    """Teacher-forced decode steps: one eval per token, returning each step's logits."""
    return [model._engine.eval(np.asarray([t], dtype=np.int32), False) for t in toks]


def test_ratio_one_gives_the_dense_logits(resa_model, tokens):
    dense = resa_model.score(tokens[:600], prefill=500, attention="dense")
    full = ResaConfig(ratio=1.0)
    sparse = resa_model.score(tokens[:600], prefill=500, attention="sparse", resa=full)
    resa = resa_model.score(tokens[:600], prefill=500, attention="resa", resa=full)
    # One attention operator serves every mode and the rectification pass, so the numbers are
    # not merely close: they are the same.
    np.testing.assert_allclose(sparse, dense, rtol=0, atol=1e-5)
    np.testing.assert_allclose(resa, dense, rtol=0, atol=1e-5)


def test_sparse_reads_the_configured_share(resa_model, tokens):
    cfg = ResaConfig(ratio=0.1, min_blocks=4)
    lp = resa_model.score(tokens[:700], prefill=600, attention="sparse", resa=cfg)
    s = resa_model.last_score_stats
    n_blocks = [-(-n // 16) for n in range(601, 700)]
    expect_read = sum(cfg.n_selected(n) for n in range(601, 700)) * 3 * 30
    assert s["blocks_read"] == expect_read
    assert s["blocks_total"] == sum(n_blocks) * 3 * 30
    assert s["blocks_read"] / s["blocks_total"] < 0.12
    dense = resa_model.score(tokens[:700], prefill=600, attention="dense")
    assert not np.allclose(lp, dense)  # it really is sparse ...
    assert abs(lp.mean() - dense.mean()) < 0.5  # ... and still a language model


def test_rectification_rewrites_kv_as_a_dense_run(model_path, tokens):
    f = 8
    prompt, gen = tokens[:300], tokens[300:300 + 2 * (f + 1) + 2]
    m = pyresa.Model(model_path, n_ctx=512, attention="resa", resa=ResaConfig(ratio=0.05, min_blocks=2, rectify_every=f))
    m._engine.eval(np.asarray(prompt, dtype=np.int32), False)
    # f sparse steps, then the (f+1)-th rectifies (re-running those f with it), twice; then 2 pending
    decode(m, gen)
    st = m._engine.stats()
    assert st["rectifications"] == 2 and st["pending_rectification"] == 2
    ref = pyresa.Model(model_path, n_ctx=512)
    ref._engine.eval(np.asarray(prompt + gen, dtype=np.int32), False)
    n_exact = len(prompt) + 2 * (f + 1)  # everything up to and including the last rectifying step
    for layer in (0, 13, 29):
        k, v = m._engine.kv(layer)
        rk, rv = ref._engine.kv(layer)
        np.testing.assert_array_equal(k[:, :n_exact], rk[:, :n_exact])
        np.testing.assert_array_equal(v[:, :n_exact], rv[:, :n_exact])
        if layer > 0:  # (layer 0's K/V depend on the embeddings alone)
            # the two pending tokens were decoded sparsely: their K/V are not the dense ones
            assert not np.array_equal(v[:, n_exact:], rv[:, n_exact:])


def test_descriptors_are_the_min_and_max_of_the_cached_keys(model_path, tokens):
    m = pyresa.Model(model_path, n_ctx=512, attention="resa", resa=ResaConfig(rectify_every=5))
    m._engine.eval(np.asarray(tokens[:201], dtype=np.int32), False)  # partial last block
    decode(m, tokens[201:220])  # appends, and rectifications rewrite blocks
    for layer in (0, 29):
        k, _ = m._engine.kv(layer)
        keys = k.view(np.float16).astype(np.float32)  # [heads][n][D]
        kmin, kmax = m._engine.descriptors(layer)
        n = keys.shape[1]
        for b in range(kmin.shape[1]):
            blk = keys[:, b * 16: min(n, (b + 1) * 16)]
            np.testing.assert_array_equal(kmin[:, b], blk.min(axis=1))
            np.testing.assert_array_equal(kmax[:, b], blk.max(axis=1))


@pytest.mark.parametrize("n_gen", [31, 32, 33, 64, 70])
def test_generation_lengths_around_rectify_every(model_path, n_gen):
    m = pyresa.Model(model_path, n_ctx=512, attention="resa")
    chunks = list(m.generate("The GNU General Public License", max_tokens=n_gen, temperature=0))
    n_tok = sum(c.token is not None and c.finish_reason is None for c in chunks)
    assert n_tok == n_gen or chunks[-1].finish_reason == "stop"
    s = m._engine.stats()
    # the sampled tokens are fed back one by one; every 32nd feed after 32 sparse steps rectifies
    assert s["rectifications"] == max(0, (n_tok - 1) // 33)
    assert m.last_stats.rectifications == s["rectifications"]
    assert 0 < m.last_stats.kv_blocks_read <= 1


def test_rectification_at_the_context_end(model_path, tokens):
    f = 4
    n_ctx = 64 + f + 1
    m = pyresa.Model(model_path, n_ctx=n_ctx, attention="resa", resa=ResaConfig(rectify_every=f, min_blocks=1))
    m._engine.eval(np.asarray(tokens[:64], dtype=np.int32), False)
    decode(m, tokens[64:64 + f + 1])  # the last of these rectifies, filling the context exactly
    assert m._engine.n_past == n_ctx and m._engine.stats()["rectifications"] == 1
    with pytest.raises(ContextFullError):
        decode(m, tokens[100:101])
    assert m._engine.n_past == n_ctx  # nothing was corrupted or half-written
    ref = pyresa.Model(model_path, n_ctx=n_ctx)
    ref._engine.eval(np.asarray(tokens[:n_ctx], dtype=np.int32), False)
    np.testing.assert_array_equal(m._engine.kv(5)[0], ref._engine.kv(5)[0])


def test_a_new_prompt_rectifies_pending_tokens(model_path, tokens):
    m = pyresa.Model(model_path, n_ctx=512, attention="resa", resa=ResaConfig(rectify_every=32))
    m._engine.eval(np.asarray(tokens[:100], dtype=np.int32), False)
    decode(m, tokens[100:110])
    m._engine.eval(np.asarray(tokens[110:130], dtype=np.int32), False)  # a chat turn: several tokens
    assert m._engine.stats()["pending_rectification"] == 0
    ref = pyresa.Model(model_path, n_ctx=512)
    ref._engine.eval(np.asarray(tokens[:130], dtype=np.int32), False)
    np.testing.assert_array_equal(m._engine.kv(3)[1], ref._engine.kv(3)[1])


@pytest.mark.parametrize("kwargs, word", [
    ({"block_size": 0}, "block_size"), ({"ratio": 0}, "ratio"), ({"ratio": 1.5}, "ratio"),
    ({"ratio": float("nan")}, "ratio"), ({"min_blocks": 0}, "min_blocks"),
    ({"local_blocks": 20, "min_blocks": 16}, "local_blocks"), ({"rectify_every": 0}, "rectify_every"),
    ({"block_size": 2.5}, "block_size"),
])
def test_config_validation(kwargs, word):
    with pytest.raises(InvalidRequestError, match=word):
        ResaConfig(**kwargs)


def test_unknown_mode(model):
    with pytest.raises(InvalidRequestError, match="attention"):
        model.set_attention("fast")
