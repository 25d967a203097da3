"""Folder encoding, text search and result rendering with small callable encoders and real images."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from uit_reid.retrieval import (
    GalleryIndex,
    Hit,
    build_index_from_folder,
    encode_image_folder,
    ranked_hits,
    render_results,
    search_text,
)
from uit_reid.retrieval.search import GREEN, GREY, RED

COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
WHITE = (255, 255, 255)


def transform(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img.resize((8, 16)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def image_encoder(x: torch.Tensor) -> torch.Tensor:
    """Mean colour per channel, centred: raw features the index normalises."""
    return x.mean(dim=(2, 3)) - 0.45


def text_encoder(texts: list[str]) -> torch.Tensor:
    out = torch.zeros(len(texts), 3)
    for i, t in enumerate(texts):
        for j, name in enumerate(COLORS):
            if name in t:
                out[i, j] = 1.0
    return out - 0.3


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "gallery"
    (root / "sub").mkdir(parents=True)
    for name, rgb in COLORS.items():
        for i in range(3):
            Image.new("RGB", (20, 40), rgb).save(root / ("sub" if i == 2 else ".") / f"{name}_{i}.png")
    (root / "broken.jpg").write_bytes(b"not an image at all")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_encode_folder_batches_and_skips_unreadable(folder, caplog):
    with caplog.at_level(logging.WARNING):
        feats, paths, skipped = encode_image_folder(
            folder, image_encoder, transform, batch_size=4, progress=False
        )
    assert feats.shape == (9, 3) and feats.dtype == np.float32
    assert len(paths) == 9 and all(p.endswith(".png") for p in paths)
    assert skipped == [str(folder / "broken.jpg")]
    assert "skipped 1 unreadable image(s) of 10" in caplog.text
    # batching does not change the features
    feats1, paths1, _ = encode_image_folder(folder, image_encoder, transform, batch_size=1, progress=False)
    assert paths1 == paths
    np.testing.assert_allclose(feats1, feats, atol=1e-6)


def test_worker_processes_decode_the_same_images_in_the_same_order(folder):
    """Decoding in 2 DataLoader workers changes nothing: features, order and skipped files agree."""
    single = encode_image_folder(folder, image_encoder, transform, batch_size=2, progress=False)
    workers = encode_image_folder(folder, image_encoder, transform, batch_size=2, progress=False, num_workers=2)
    np.testing.assert_array_equal(workers[0], single[0])
    assert workers[1] == single[1] == sorted(single[1])
    assert workers[2] == single[2] == [str(folder / "broken.jpg")]
    with pytest.raises(ValueError, match="num_workers must be 0 or more, got -1"):
        encode_image_folder(folder, image_encoder, transform, num_workers=-1)


def test_text_search_finds_matching_colour(folder):
    index = build_index_from_folder(folder, image_encoder, transform, fingerprint="toy", progress=False)
    assert len(index) == 9 and index.id_type == "str"
    hits = search_text(index, text_encoder, ["a person in red", "blue clothes"], k=3, fingerprint="toy")
    assert [len(h) for h in hits] == [3, 3]
    assert all("red_" in h.path for h in hits[0])
    assert all("blue_" in h.path for h in hits[1])
    assert hits[0][0].score >= hits[0][1].score >= hits[0][2].score
    with pytest.raises(ValueError, match="'toy'.*'other'"):
        search_text(index, text_encoder, "red", fingerprint="other")


def test_pids_mark_hits_correct(folder):
    index = build_index_from_folder(folder, image_encoder, transform, progress=False)
    pid_of = lambda path: path.rsplit("/", 1)[-1].split("_")[0]  # noqa: E731
    hits = search_text(index, text_encoder, ["green"], k=4, pids=pid_of, query_pids=["green"])[0]
    assert [h.correct for h in hits] == [True, True, True, False]
    assert hits[0].pid == "green"


def test_render_results_borders_and_size(folder):
    red = Image.new("RGB", (10, 20), COLORS["red"])
    hits = [Hit(1, "a", 0.9, correct=True), Hit(2, "b", 0.5, correct=False), Hit(3, "c", 0.1)]
    img = render_results("a person in red", hits, images=[red, red, None], thumb_size=(80, 40), border=3)
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    pad, cell_w = 6, 40 + 6
    assert img.width >= 3 * (cell_w + pad)
    px = img.load()
    y = next(y for y in range(img.height) if px[pad + 1, y] == GREEN) + 1  # the first tile's top border
    assert all(px[pad + 1, y + i] == GREEN for i in range(80))  # down the whole tile
    row = [px[x, y] for x in range(img.width)]
    assert [c for i, c in enumerate(row) if i == 0 or c != row[i - 1]] == [WHITE, GREEN, WHITE, RED, WHITE, GREY, WHITE]
    assert px[pad + 3 + 5, y + 3 + 5] == COLORS["red"]  # the thumbnail sits inside the border


def _ink(img: Image.Image) -> np.ndarray:
    """Black text pixels (every channel dark): what a reader sees whatever colours they can tell apart."""
    return (np.asarray(img.convert("RGB")) < 60).all(axis=-1)


def _gaps(ink_line: np.ndarray, wide: int) -> int:
    """How many runs of at least ``wide`` ink-free columns separate the ink of one text line."""
    cols = ink_line.any(axis=0)
    xs = np.flatnonzero(cols)
    runs, n = [], 0
    for c in cols[xs[0] : xs[-1] + 1]:
        if c:
            runs.append(n)
            n = 0
        else:
            n += 1
    return sum(r >= wide for r in runs)


@pytest.mark.parametrize("caption", ["A young person in a grey coat", "a black coat and white shoes",
                                     "She is wearing a top, jeans"])
def test_render_results_text_keeps_its_spaces(caption):
    """At Pillow's 10-px default, "A young" rendered as "Ayoung" and "coat and" as "coatand": every
    space of the query (one line here) shows as a gap at least 3 px wide, and letters of a word leave none."""
    img = render_results(caption, [Hit(1, "a", 0.9)], images=[None], thumb_size=(40, 20))
    ink = _ink(img)
    rows = np.flatnonzero(ink.any(axis=1))
    first_line = ink[rows[0] : rows[0] + np.flatnonzero(~ink[rows[0] :].any(axis=1))[0]]
    assert _gaps(first_line, 3) == caption.count(" ")


def test_render_results_marks_right_and_wrong_in_words_with_a_legend():
    """Swapping which hit is right changes the black text (a word under each tile), not only the
    border colours; a legend appears when correctness is known."""
    images = [Image.new("RGB", (10, 20), "white")] * 2
    swap = [render_results("a person in red", [Hit(1, "a", 0.9, correct=c), Hit(2, "b", 0.5, correct=not c)],
                           images=images) for c in (True, False)]
    unknown = render_results("a person in red", [Hit(1, "a", 0.9), Hit(2, "b", 0.5)], images=images)
    assert swap[0].size == swap[1].size
    assert not np.array_equal(_ink(swap[0]), _ink(swap[1]))
    assert swap[0].height > unknown.height  # the legend's lines and the words' line


def test_render_results_from_paths(folder):
    index = build_index_from_folder(folder, image_encoder, transform, progress=False)
    hits = search_text(index, text_encoder, "blue", k=5)[0]
    img = render_results("blue", hits, columns=2)
    assert img.width > 0 and img.height > 3 * 100  # three rows of person-shaped thumbnails


def test_bad_inputs(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        encode_image_folder(tmp_path / "nope", image_encoder, transform)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        encode_image_folder(tmp_path / "empty", image_encoder, transform)
    with pytest.raises(ValueError, match="image_encoder must return"):
        encode_image_folder(folder, lambda x: x, transform, progress=False)
    with pytest.raises(ValueError, match="hits is empty"):
        render_results("q", [])
    index = GalleryIndex(3)
    with pytest.raises(ValueError, match="queries must be"):
        search_text(index, text_encoder, [])


def test_ranked_hits_is_the_one_post_processing() -> None:
    # an approximate index pads a short row with -1 / -inf (int ids) or None (string ids)
    scores = np.array([0.9, 0.5, -np.inf], np.float32)
    hits = ranked_hits(scores, np.array([7, 3, -1]), numbers=[0, 1, -1], pid_of=lambda i: i % 2, query_pid=1)
    assert [(h.rank, h.id, h.number, h.correct) for h in hits] == [(1, 7, 0, True), (2, 3, 1, True)]
    assert all(type(h.id) is int and type(h.score) is float for h in hits)
    paths = ranked_hits(scores, np.array(["a.png", "b.png", None], dtype=object))
    assert [(h.rank, h.path, h.pid, h.correct) for h in paths] == [(1, "a.png", None, None), (2, "b.png", None, None)]


def test_service_hit_is_derived_from_the_retrieval_hit() -> None:
    pytest.importorskip("fastapi")
    from uit_reid.serve.app import HitResponse

    described = {f.name: f.metadata["description"] for f in dataclasses.fields(Hit) if "description" in f.metadata}
    fields = HitResponse.model_fields
    assert list(fields) == [*described, "image_url"]
    assert {name: fields[name].description for name in described} == described
