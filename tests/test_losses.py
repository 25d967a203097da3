"""Losses against float64 references written from their formulas, plus properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid import losses


def _features(seed: int, batch: int, dim: int, num_ids: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(batch, dim))
    t = v + rng.normal(scale=1.5, size=(batch, dim))  # correlated pairs, like a half-trained model
    pids = rng.integers(0, num_ids, size=batch)
    return v, t, pids


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_softmax(row: np.ndarray) -> np.ndarray:
    shifted = row - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def sdm_reference(v: np.ndarray, t: np.ndarray, pids: np.ndarray, scale: float = 50.0, eps: float = 1e-8) -> float:
    sim = _normalise(v) @ _normalise(t).T * scale
    y = (pids[:, None] == pids[None, :]).astype(np.float64)
    q = y / y.sum(axis=1, keepdims=True)
    total = 0.0
    for s in (sim, sim.T):
        for i in range(len(pids)):
            log_p = _log_softmax(s[i])
            total += float(np.sum(np.exp(log_p) * (log_p - np.log(q[i] + eps)))) / len(pids)
    return total


def cmt_reference(v: np.ndarray, t: np.ndarray, pids: np.ndarray, margin: float) -> float:
    sim = _normalise(t) @ _normalise(v).T  # captions x images
    total = 0.0
    for s in (sim, sim.T):
        hinges = []
        for i in range(len(pids)):
            negatives = [j for j in range(len(pids)) if pids[j] != pids[i]]
            if not negatives:
                continue
            n = max(negatives, key=lambda j: s[i, j])
            hinges.append(max(0.0, (1 - s[i, i]) - (1 - s[i, n]) + margin))
        total += float(np.mean(hinges)) if hinges else 0.0
    return total


def _t(x: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


batches = st.tuples(
    st.integers(0, 2**31 - 1), st.integers(2, 12), st.integers(2, 16), st.integers(1, 5)
)


@settings(max_examples=60, deadline=None)
@given(batches)
def test_sdm_matches_float64_reference_and_is_nonnegative(params) -> None:
    v, t, pids = _features(*params)
    got = losses.sdm_loss(_t(v), _t(t), torch.tensor(pids)).item()
    want = sdm_reference(v, t, pids)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    # KL against q + eps, whose mass is 1 + B*eps: the bound is -B*eps, not exactly 0.
    assert got >= -len(pids) * 1e-8 * 2


@settings(max_examples=40, deadline=None)
@given(batches, st.floats(1e-2, 1e2))
def test_sdm_is_invariant_to_feature_scale(params, scale: float) -> None:
    v, t, pids = _features(*params)
    base = losses.sdm_loss(_t(v), _t(t), torch.tensor(pids))
    scaled = losses.sdm_loss(_t(v * scale), _t(t / scale), torch.tensor(pids))
    assert scaled.item() == pytest.approx(base.item(), rel=1e-5, abs=1e-5)


@settings(max_examples=60, deadline=None)
@given(batches, st.floats(0.0, 0.5))
def test_cmt_matches_its_formula(params, margin: float) -> None:
    v, t, pids = _features(*params)
    got = losses.cmt_loss(_t(v), _t(t), torch.tensor(pids), margin=margin).item()
    assert got == pytest.approx(cmt_reference(v, t, pids, margin), rel=1e-5, abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 10), st.floats(0.0, 0.9))
def test_cmt_is_zero_when_negatives_are_margin_farther(seed: int, batch: int, margin: float) -> None:
    # Orthonormal features: a pair has cosine 1, any two identities cosine 0 (distance gap 1 > margin).
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(batch + 2, batch + 2)))
    v = q[:batch] * rng.uniform(0.5, 3.0, size=(batch, 1))
    t = q[:batch] * rng.uniform(0.5, 3.0, size=(batch, 1))
    loss = losses.cmt_loss(_t(v), _t(t), torch.arange(batch), margin=margin)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # ...and positive once the margin exceeds the gap.
    assert losses.cmt_loss(_t(v), _t(t), torch.arange(batch), margin=1.5).item() == pytest.approx(1.0, abs=1e-5)


def test_cmt_leaves_out_rows_without_a_negative() -> None:
    v = torch.randn(6, 8, requires_grad=True)
    t = torch.randn(6, 8, requires_grad=True)
    same = torch.zeros(6, dtype=torch.long)
    loss = losses.cmt_loss(v, t, same)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(v.grad) == 0 and torch.count_nonzero(t.grad) == 0


def test_cmt_hardest_positive_uses_the_least_similar_same_identity_item() -> None:
    # Two identities, two pairs each; caption 0 is far from its own image's twin (image 1).
    v = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    pids = torch.tensor([0, 0, 1, 1])
    own = losses.cmt_loss(v, t, pids, margin=0.1, hardest_positive=False)
    hard = losses.cmt_loss(v, t, pids, margin=0.1, hardest_positive=True)
    # Every hardest negative sits at distance 1. Own pairs: only caption 1 / image 1 (distance 1)
    # violate the margin, once per direction: 0.1/4 + 0.1/4. Hardest positives: captions 0 and 1
    # both take image 1 (distance 1), images keep 0.1/4.
    assert own.item() == pytest.approx(0.1 / 4 + 0.1 / 4, abs=1e-6)
    assert hard.item() == pytest.approx(0.2 / 4 + 0.1 / 4, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 12), st.integers(2, 9))
def test_id_loss_is_the_mean_cross_entropy(seed: int, batch: int, classes: int) -> None:
    rng = np.random.default_rng(seed)
    zi, zt = rng.normal(size=(batch, classes)) * 3, rng.normal(size=(batch, classes)) * 3
    y = rng.integers(0, classes, size=batch)
    ce = [-_log_softmax(z[i])[y[i]] for z in (zi, zt) for i in range(batch)]
    got = losses.id_loss(_t(zi), _t(zt), torch.tensor(y)).item()
    assert got == pytest.approx(float(np.mean(ce)), rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(batches)
def test_itc_is_symmetric_infonce(params) -> None:
    v, t, _ = _features(*params)
    sim = _normalise(v) @ _normalise(t).T * 50.0
    n = len(v)
    want = sum(-_log_softmax(s[i])[i] for s in (sim, sim.T) for i in range(n)) / (2 * n)
    assert losses.itc_loss(_t(v), _t(t)).item() == pytest.approx(want, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("name", ["sdm", "cmt", "itc", "id"])
def test_losses_have_finite_gradients_under_bf16_autocast(name: str) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 16)
    x = torch.randn(8, 16)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v, t = layer(x), layer(x + torch.randn_like(x))
        assert v.dtype == torch.bfloat16
        if name == "sdm":
            loss = losses.sdm_loss(v, t, pids)
        elif name == "cmt":
            loss = losses.cmt_loss(v, t, pids)
        elif name == "itc":
            loss = losses.itc_loss(v, t)
        else:
            loss = losses.id_loss(v[:, :4], t[:, :4], pids)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    assert any(p.grad.abs().sum() > 0 for p in layer.parameters())


def test_mismatched_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="pair up"):
        losses.sdm_loss(torch.randn(4, 8), torch.randn(5, 8), torch.arange(4))
    with pytest.raises(ValueError, match="pids must be"):
        losses.cmt_loss(torch.randn(4, 8), torch.randn(4, 8), torch.arange(3))
