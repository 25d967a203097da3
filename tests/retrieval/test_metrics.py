"""evaluate() against an independent brute-force evaluator written here (full stable argsort)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid.retrieval import binding_accuracy, evaluate, relevant_ranks


def brute_force(sim: np.ndarray, qp: np.ndarray, gp: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Textbook definitions, one query at a time, over a stable argsort of -similarity."""
    r_at = {k: 0.0 for k in ks}
    aps, inps = [], []
    for i in range(sim.shape[0]):
        order = np.argsort(-sim[i], kind="stable")
        rel = gp[order] == qp[i]
        positions = np.flatnonzero(rel) + 1  # 1-based ranks of relevant items
        for k in ks:
            r_at[k] += float(positions[0] <= k)
        aps.append(np.mean([(j + 1) / p for j, p in enumerate(positions)]))
        inps.append(len(positions) / positions[-1])
    n = sim.shape[0]
    out = {f"R{k}": 100.0 * r_at[k] / n for k in ks}
    out["mAP"] = 100.0 * float(np.mean(aps))
    out["mINP"] = 100.0 * float(np.mean(inps))
    return out


def assert_close(a: dict, b: dict, tol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=tol), key


@st.composite
def problems(draw):
    ng = draw(st.integers(1, 40))
    nq = draw(st.integers(1, 30))
    num_ids = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    ties = draw(st.booleans())
    rng = np.random.default_rng(seed)
    gp = rng.integers(0, num_ids, ng)
    qp = rng.choice(gp, nq)  # every query has a relevant item; repeated pids, several relevant
    sim = rng.standard_normal((nq, ng)).astype(np.float32)
    if ties:  # coarse values: many exact ties, also between relevant items
        sim = np.round(sim * 2) / 2
    return sim, qp, gp


@settings(max_examples=150, deadline=None)
@given(problems(), st.sampled_from([64, 4096, 512 * 2**20]))
def test_matches_brute_force(problem, budget):
    sim, qp, gp = problem
    assert_close(evaluate(sim, qp, gp, memory_budget=budget), brute_force(sim, qp, gp))


@settings(max_examples=30, deadline=None)
@given(problems())
def test_ranks_are_the_stable_argsort_positions(problem):
    sim, qp, gp = problem
    ranks = relevant_ranks(sim, qp, gp)
    for i in range(sim.shape[0]):
        order = np.argsort(-sim[i], kind="stable")
        np.testing.assert_array_equal(ranks[i], np.flatnonzero(gp[order] == qp[i]) + 1)


def test_many_relevant_items_take_the_binary_search_path():
    rng = np.random.default_rng(1)
    gp = rng.integers(0, 3, 600)  # ~200 relevant items per query (> 64)
    qp = rng.choice(gp, 50)
    sim = rng.standard_normal((50, 600)).astype(np.float32)
    assert_close(evaluate(sim, qp, gp), brute_force(sim, qp, gp))
    tied = np.round(sim)
    assert_close(evaluate(tied, qp, gp), brute_force(tied, qp, gp))


def test_random_continuous_inputs_torch_and_numpy_agree_with_reference():
    rng = np.random.default_rng(2)
    gp = rng.integers(0, 50, 300)
    qp = rng.choice(gp, 400)
    sim = rng.standard_normal((400, 300)).astype(np.float32)
    ref = brute_force(sim, qp, gp)
    assert_close(evaluate(sim, qp, gp), ref)
    assert_close(evaluate(torch.from_numpy(sim), torch.from_numpy(qp), torch.from_numpy(gp)), ref)
    assert_close(
        evaluate(torch.from_numpy(sim).half().float(), qp, gp),
        brute_force(torch.from_numpy(sim).half().float().numpy(), qp, gp),
    )
    assert_close(evaluate(sim.astype(np.float64), list(qp), list(gp), num_threads=1), ref)


def test_hand_computed_example():
    # gallery pids [1, 2, 1, 3]; query pid 1; order by score: g3(3), g0(1), g1(2), g2(1)
    sim = np.array([[0.8, 0.5, 0.1, 0.9]])
    out = evaluate(sim, [1], [1, 2, 1, 3], ks=(1, 2, 3))
    # relevant ranks 2 and 4: AP = (1/2 + 2/4) / 2 = 0.5; INP = 2/4
    assert out == {"R1": 0.0, "R2": 100.0, "R3": 100.0, "mAP": 50.0, "mINP": 50.0}


def test_tie_rule_is_stable_by_gallery_index():
    # all scores equal: ranks follow gallery order
    sim = np.zeros((2, 4), dtype=np.float32)
    out = evaluate(sim, [7, 9], [9, 7, 7, 9], ks=(1,))
    assert relevant_ranks(sim, [7, 9], [9, 7, 7, 9])[0].tolist() == [2, 3]
    assert relevant_ranks(sim, [7, 9], [9, 7, 7, 9])[1].tolist() == [1, 4]
    ap = ((1 / 2 + 2 / 3) / 2 + (1 / 1 + 2 / 4) / 2) / 2
    assert out["R1"] == 50.0
    assert out["mAP"] == pytest.approx(100 * ap)
    assert out["mINP"] == pytest.approx(100 * (2 / 3 + 2 / 4) / 2)


def test_image_to_text_by_transposing():
    rng = np.random.default_rng(3)
    img_pids = np.repeat(np.arange(20), 2)
    txt_pids = np.repeat(img_pids, 2)
    sim = rng.standard_normal((txt_pids.size, img_pids.size)).astype(np.float32)
    assert_close(evaluate(sim.T, img_pids, txt_pids), brute_force(sim.T.copy(), img_pids, txt_pids))
    assert_close(
        evaluate(torch.from_numpy(sim).T, img_pids, txt_pids), brute_force(sim.T.copy(), img_pids, txt_pids)
    )


def test_string_pids():
    sim = np.array([[0.1, 0.9, 0.3], [0.7, 0.2, 0.4]])
    out = evaluate(sim, ["a", "b"], ["a", "b", "a"], ks=(1,))
    assert out["R1"] == 0.0  # query a: best is g1 (b); query b: best is g0 (a)
    assert out["mAP"] == pytest.approx(100 * ((1 / 2 + 2 / 3) / 2 + 1 / 3) / 2)


def test_query_without_relevant_item_is_named():
    sim = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"query 2 \(pid 5\).*no relevant gallery item"):
        evaluate(sim, [1, 2, 5], [1, 2])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.zeros(3), [1], [1]), "similarity must be 2-D"),
        ((np.zeros((2, 3)), [1], [1, 1, 1]), "query_pids has 1 entries"),
        ((np.zeros((1, 3)), [1], [1, 1]), "gallery_pids has 2 entries"),
        ((np.array([[np.nan, 1.0]]), [1], [1, 1]), "NaN or infinite"),
        ((np.zeros((1, 1)), [[1]], [1]), "query_pids must be 1-D"),
    ],
)
def test_bad_inputs_name_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        evaluate(*args)


def test_bad_ks():
    with pytest.raises(ValueError, match="ks must be"):
        evaluate(np.zeros((1, 1)), [1], [1], ks=(0,))


# ---------------------------------------------------------------------------------------- binding accuracy
def test_binding_accuracy_counts_wins_and_half_ties() -> None:
    true = np.array([0.9, 0.2, 0.5, 0.1])
    contrast = torch.tensor([0.1, 0.3, 0.5, 0.0])  # win, loss, tie, win
    assert binding_accuracy(true, contrast) == 100 * 2.5 / 4
    assert binding_accuracy([0.3, 0.3], [0.3, 0.3]) == 50.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-1, 1), st.floats(-1, 1)), min_size=1, max_size=30))
def test_binding_accuracy_is_a_share_and_exchanging_the_captions_mirrors_it(pairs) -> None:
    true, contrast = (np.array(x, dtype=np.float64) for x in zip(*pairs, strict=True))
    acc = binding_accuracy(true, contrast)
    wins = sum(1.0 if t > c else 0.5 if t == c else 0.0 for t, c in pairs)
    assert acc == pytest.approx(100 * wins / len(pairs))
    assert acc + binding_accuracy(contrast, true) == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("true", "contrast", "message"),
    [
        ([0.1, 0.2], [0.1], "true_scores and contrast_scores must have the same length, got 2 and 1"),
        ([], [], "binding_accuracy needs at least one pair of scores"),
        ([0.1, float("nan")], [0.1, 0.2], "binding scores contain NaN or infinite values"),
        ([[0.1]], [[0.2]], "true_scores must be 1-D, got shape (1, 1)"),
    ],
)
def test_binding_accuracy_bad_input(true, contrast, message) -> None:
    with pytest.raises(ValueError) as exc:
        binding_accuracy(true, contrast)
    assert str(exc.value) == message
