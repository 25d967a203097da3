"""Torch datasets and collates on real synthetic files: batch dicts shaped as UITModel.forward takes."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import open_clip
import pytest
import torch

from uit_reid.augment import TextAugment, build_eval_transform, build_train_transform
from uit_reid.data import (
    CorruptImageError,
    GalleryDataset,
    QueryDataset,
    TrainDataset,
    build_eval_loaders,
    build_train_loader,
    load_dataset,
    make_synthetic,
)
from uit_reid.data.datasets import TrainCollate

SIZE = (96, 32)


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, num_ids=16, images_per_id=2, seed=1, num_val_ids=0, num_test_ids=4, progress=False)
    return load_dataset(root)


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-16")


def test_train_dataset_pairs(ds) -> None:
    tds = TrainDataset(ds.train, build_train_transform(SIZE))
    assert len(tds) == ds.train.num_captions == 12 * 2 * 2
    item = tds[3]
    rec = ds.train.records[1]
    assert item["image"].shape == (3, *SIZE) and item["image"].dtype == torch.float32
    assert item["caption"] == rec.captions[1] and item["pid"] == rec.pid and item["image_id"] == 1
    assert tds.pids == [r.pid for r in ds.train.records for _ in r.captions]


def test_text_augment_applied(ds) -> None:
    tds = TrainDataset(ds.train, build_train_transform(SIZE), TextAugment(p=1.0, rng=random.Random(0)))
    assert tds[0]["caption"] != ds.train.records[0].captions[0]
    assert len(tds[0]["caption"].split()) < len(ds.train.records[0].captions[0].split())


def test_train_collate(ds, tokenizer) -> None:
    tds = TrainDataset(ds.train, build_train_transform(SIZE))
    batch = TrainCollate(tokenizer)([tds[i] for i in range(5)])
    assert set(batch) == {"images", "text_ids", "pids", "image_ids"}
    assert batch["images"].shape == (5, 3, *SIZE)
    assert batch["text_ids"].shape == (5, 77) and batch["text_ids"].dtype == torch.long
    assert batch["text_ids"].argmax(dim=1).gt(3).all()  # EOT after the words
    assert batch["pids"].tolist() == [tds.pids[i] for i in range(5)]
    assert batch["image_ids"].tolist() == [0, 0, 1, 1, 2]


@pytest.mark.parametrize("workers", [0, 2])
def test_build_train_loader_identity_batches(ds, tokenizer, workers: int) -> None:
    loader = build_train_loader(ds.train, tokenizer, SIZE, batch_size=8, num_instances=4, num_workers=workers,
                                sampler="identity")
    batches = list(loader)
    assert len(batches) == len(loader) >= 1
    for b in batches:
        assert b["images"].shape == (8, 3, *SIZE)
        counts = torch.bincount(b["pids"])
        assert sorted(counts[counts > 0].tolist()) == [4, 4]


def test_eval_loaders_in_order(ds, tokenizer) -> None:
    gallery, queries = build_eval_loaders(ds.test, tokenizer, SIZE, batch_size=5, num_workers=0)
    g = list(gallery)
    assert torch.cat([b["pids"] for b in g]).tolist() == ds.test.gallery.pids
    assert torch.cat([b["image_ids"] for b in g]).tolist() == list(range(ds.test.num_images))
    assert g[0]["images"].shape == (5, 3, *SIZE)
    q = list(queries)
    assert torch.cat([b["pids"] for b in q]).tolist() == ds.test.queries.pids
    assert torch.cat([b["image_ids"] for b in q]).tolist() == ds.test.queries.image_indices
    assert q[0]["text_ids"].shape == (5, 77)
    assert len(QueryDataset(ds.test)) == 16 and len(GalleryDataset(ds.test, build_eval_transform(SIZE))) == 8


def test_corrupt_image_error_and_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_synthetic(tmp_path, num_ids=4, images_per_id=2, seed=0, num_val_ids=0, num_test_ids=1, progress=False)
    d = load_dataset(tmp_path)
    bad = d.train.records[0].image_path
    bad.write_bytes(bad.read_bytes()[:50])
    tds = TrainDataset(d.train, build_eval_transform(SIZE))
    with pytest.raises(CorruptImageError, match=str(bad)):
        tds[0]
    skip = TrainDataset(d.train, build_eval_transform(SIZE), on_corrupt="skip")
    with caplog.at_level(logging.WARNING, logger="uit_reid.data.datasets"):
        item = skip[0]
    assert str(bad) in caplog.text
    assert item["pid"] == d.train.records[0].pid  # replaced by the same person's other image
    assert torch.equal(item["image"], skip[2]["image"])
    with pytest.raises(CorruptImageError, match=str(bad)):
        GalleryDataset(d.train, build_eval_transform(SIZE))[0]
