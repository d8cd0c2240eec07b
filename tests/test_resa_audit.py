"""The selection audit and the oracle selection (the tools behind RESULTS.md's ReSA quality
analysis): the attention-mass kernel against a numpy softmax, the oracle's top-n against numpy's
ordering, and the engine's audit figures against the invariants that tie them together."""

from __future__ import annotations

import numpy as np
import pytest

import pyresa
from pyresa import ResaConfig, _core
from pyresa.errors import InvalidRequestError

rng = np.random.default_rng(7)


def numpy_block_mass(q, K, n_tokens, block_size, scale):
    s = scale * (q.astype(np.float64) @ K[:n_tokens].astype(np.float64).T)  # [group, tokens]
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    per_token = p.mean(axis=0)
    n_blocks = -(-n_tokens // block_size)
    padded = np.zeros(n_blocks * block_size)
    padded[:n_tokens] = per_token
    return padded.reshape(n_blocks, block_size).sum(axis=1)


@pytest.mark.parametrize("group,D,n_tokens,block_size", [(3, 64, 1000, 16), (7, 128, 333, 16), (1, 64, 17, 4)])
def test_block_attention_mass_matches_numpy(group, D, n_tokens, block_size):
    q = rng.standard_normal((group, D)).astype(np.float32)
    K = (rng.standard_normal((1, n_tokens + 5, D)) * 0.7).astype(np.float16)
    scale = 1 / np.sqrt(D)
    got = _core.block_attention_mass(q, K, n_tokens, block_size, scale)
    want = numpy_block_mass(q, K[0], n_tokens, block_size, scale)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert abs(got.sum() - 1) < 1e-9


def test_oracle_selection_takes_the_heaviest_blocks():
    mass = rng.random(50)
    mass[[3, 9]] = mass[20]  # ties: the lower index wins
    for n_sel, n_local in [(10, 1), (10, 0), (50, 1), (4, 4), (7, 3)]:
        row = _core.select_blocks_by_mass(mass, n_sel, n_local)
        local = list(range(50 - n_local, 50))
        order = sorted(range(50 - n_local), key=lambda b: (-mass[b], b))
        want = sorted(order[: n_sel - n_local] + local)
        assert row.tolist() == want


def test_audit_does_not_change_the_numbers(resa_model, tokens):
    cfg = ResaConfig(ratio=0.1, min_blocks=4)
    plain = resa_model.score(tokens[:560], prefill=500, attention="sparse", resa=cfg)
    assert "mass_selected" not in resa_model.last_score_stats
    audited = resa_model.score(tokens[:560], prefill=500, attention="sparse", resa=cfg, audit=True)
    np.testing.assert_array_equal(plain, audited)
    s = resa_model.last_score_stats
    sel, orc = np.array(s["mass_selected"]), np.array(s["mass_oracle"])
    assert sel.shape == orc.shape == (30,)
    # The oracle keeps the most mass any n_sel blocks can hold: the rule's selection keeps at
    # most that, and both keep a real share of it (8 of 32 blocks incl. the newest).
    assert np.all(sel <= orc + 1e-12)
    assert np.all(sel > 0.2) and np.all(orc <= 1 + 1e-9)
    assert sel.mean() < orc.mean()


def test_oracle_selection_keeps_the_oracle_mass(resa_model, tokens):
    cfg = ResaConfig(ratio=0.1, min_blocks=4, selection="oracle")
    lp = resa_model.score(tokens[:540], prefill=500, attention="sparse", resa=cfg)
    s = resa_model.last_score_stats
    np.testing.assert_allclose(s["mass_selected"], s["mass_oracle"], rtol=0, atol=1e-12)
    dense = resa_model.score(tokens[:540], prefill=500, attention="dense")
    assert not np.allclose(lp, dense)


def test_ratio_one_keeps_all_the_mass_and_the_dense_logits(resa_model, tokens):
    full = ResaConfig(ratio=1.0, selection="oracle")
    lp = resa_model.score(tokens[:530], prefill=500, attention="resa", resa=full, audit=True)
    s = resa_model.last_score_stats
    np.testing.assert_allclose(s["mass_selected"], 1.0, atol=1e-9)
    dense = resa_model.score(tokens[:530], prefill=500, attention="dense")
    np.testing.assert_allclose(lp, dense, rtol=0, atol=1e-5)


def test_unknown_selection_is_refused():
    with pytest.raises(InvalidRequestError, match="selection"):
        ResaConfig(selection="best")
