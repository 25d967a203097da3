"""The --memory-budget heuristics: the coarse quantizer pick and autofaiss's size spelling (properties)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid.retrieval.budget import (
    HNSW_QUANTIZER_LISTS,
    MAX_BYTES,
    TRAIN_SAMPLE_SHARE,
    budget_nlist,
    choose_kind,
    coarse_quantizer,
    index_memory,
    parse_bytes,
)
from uit_reid.retrieval.factory_string import parse_factory


@given(nlist=st.integers(1, 2**20))
def test_coarse_quantizer_is_hnsw_exactly_from_the_threshold(nlist) -> None:
    suffix = coarse_quantizer(nlist)
    assert suffix == ("_HNSW32" if nlist >= HNSW_QUANTIZER_LISTS else "")
    layout = parse_factory(f"IVF{nlist}{suffix},PQ8", 64)
    assert (layout.quantizer_hnsw_m > 0) == (nlist >= HNSW_QUANTIZER_LISTS)


@given(a=st.integers(1, 2**20), b=st.integers(1, 2**20))
def test_coarse_quantizer_is_monotone_in_the_list_count(a, b) -> None:
    """More lists never go back from a graph to a flat quantizer."""
    lo, hi = sorted((a, b))
    assert not (coarse_quantizer(lo) and not coarse_quantizer(hi))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(10**6, 10**10), dim=st.sampled_from([128, 512, 768]), budget=st.integers(10**8, 10**13),
       max_nlist=st.sampled_from([None, 4096, 2**14, 2**17]))
def test_chosen_kinds_use_the_named_quantizer_and_fit(n, dim, budget, max_nlist) -> None:
    try:
        kind = choose_kind(n, dim, budget, max_nlist=max_nlist)
    except ValueError as err:
        assert "do not fit" in str(err)
        return
    assert index_memory(kind, n, dim) <= budget
    layout = parse_factory(kind, dim)
    if layout.kind == "ivf":
        assert (layout.quantizer_hnsw_m > 0) == (layout.nlist >= HNSW_QUANTIZER_LISTS)
        assert layout.nlist == min(budget_nlist(n, dim, budget), max_nlist or 2**62)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 10**11), dim=st.sampled_from([16, 128, 512, 768]), budget=st.integers(1, 10**13))
def test_the_list_count_grows_as_autofaiss_s_within_the_training_sample(n, dim, budget) -> None:
    """A power of two in [4 sqrt(n), 8 sqrt(n)) unless the gallery or the budget cannot hold its training sample."""
    nlist = budget_nlist(n, dim, budget)
    assert nlist & (nlist - 1) == 0
    sample = 40 * nlist * dim * 4  # float32 training vectors, 40 per list
    assert nlist < 8 * math.sqrt(n)
    assert nlist == 1 or (nlist * 40 <= n and sample * TRAIN_SAMPLE_SHARE <= budget)
    if nlist < 4 * math.sqrt(n):  # below the rule only because twice the lists would not train or not fit
        assert 2 * nlist * 40 > n or 2 * sample * TRAIN_SAMPLE_SHARE > budget


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 10**11), more=st.integers(0, 10**11), dim=st.sampled_from([128, 512]),
       budget=st.integers(1, 10**13), extra=st.integers(0, 10**13))
def test_the_list_count_never_shrinks_with_more_vectors_or_more_memory(n, more, dim, budget, extra) -> None:
    assert budget_nlist(n, dim, budget) <= budget_nlist(n + more, dim, budget)
    assert budget_nlist(n, dim, budget) <= budget_nlist(n, dim, budget + extra)


def test_a_large_gallery_gets_an_hnsw_quantizer() -> None:
    assert choose_kind(10**8, 128, 16 * 2**30) == "IVF65536_HNSW32,PQ128"  # the 100M benchmark's dimension
    assert choose_kind(10**8, 512, 64 * 2**30) == "IVF65536_HNSW32,PQ256"
    assert choose_kind(10**9, 512, 100 * 10**9) == "OPQ64,IVF131072_HNSW32,PQ64"
    assert choose_kind(10**9, 512, 100 * 10**9, max_nlist=2**15) == "OPQ64,IVF32768_HNSW32,PQ64"
    # 16,384 lists' training sample (1.3 GB) would take more than 1/8 of 4 GB: the measured 10M pick stays
    assert choose_kind(10_000_000, 512, 4 * 10**9) == "IVF4096,PQ256"


def test_the_cli_names_the_list_count_and_the_quantizer_it_picked(caplog) -> None:
    import argparse
    import logging

    from uit_reid.cli import _memory_kind

    with caplog.at_level(logging.INFO, logger="uit_reid"):
        kind = _memory_kind(argparse.Namespace(memory_budget="16G", kind=None), 10**8, 128)
    assert kind == "IVF65536_HNSW32,PQ128"
    assert caplog.messages == [
        "--memory-budget 16G: IVF65536_HNSW32,PQ128 (about 14.55 GB for 100000000 vectors; 65536 lists by "
        "budget_nlist, an HNSW coarse quantizer: HNSW from 16384 lists on)"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("16G", 16 * 2**30), ("300M", 300 * 2**20), ("1.5K", 1536), ("2t", 2 * 2**40), ("4GB", 4 * 10**9),
     ("512MiB", 512 * 2**20), ("100", 100)],
)
def test_sizes_in_both_spellings(text, expected) -> None:
    assert parse_bytes(text) == expected


@given(digits=st.integers(20, 400), unit=st.sampled_from(["", "B", "GB", "G", "TiB"]))
def test_absurd_sizes_are_one_line_not_overflow(digits, unit) -> None:
    with pytest.raises(ValueError, match=r"is absurd: more than 2\*\*60 bytes") as err:
        parse_bytes("9" * digits + unit)
    assert len(str(err.value)) < 80


@given(value=st.integers(1, MAX_BYTES))
def test_every_size_up_to_the_limit_reads_back(value) -> None:
    assert abs(parse_bytes(str(value)) - value) <= value * 1e-15 + 1


def test_the_cli_names_a_bad_kind_or_size_in_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    import numpy as np

    from uit_reid.cli import main
    from uit_reid.retrieval.shards import write_shard

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16))
    write_shard(tmp_path / "emb", 0, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16),
                [f"{i}.jpg" for i in range(200)])
    out = tmp_path / "g.faiss"
    for flags, message in (
        (["--kind", "HNSW200000,Flat"], "index kind 'HNSW200000,Flat': HNSW neighbours 200000 is out of range 2..256"),
        (["--kind", "IVF4,PQ8x16"], "index kind 'IVF4,PQ8x16': PQ bits 16 is out of range 1..12"),
        (["--memory-budget", "9" * 400 + "G"], "size 999999999999...G is absurd: more than 2**60 bytes"),
    ):
        assert main(["index", "build", "--embeddings", str(tmp_path / "emb"), "--out", str(out), *flags]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()
