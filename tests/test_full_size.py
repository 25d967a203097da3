"""The full-size model (ViT-B/16 at 384x128 with UIT's TIR head, random weights) trains on a CPU.

Everything else in the suite uses the tiny model; this is the one place the real architecture runs
forward and backward, under bf16 autocast (and, where a C++ compiler is present and
``UIT_COMPILE_TEST=1``, under ``torch.compile``), so a shape, dtype or autocast bug in the full-size
path cannot hide behind the tiny one. Batch 4 keeps it within a 2-core CI machine.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from uit_reid import CLIPDualEncoder, UITModel
from uit_reid.train.optim import build_optimizer

MASK_SEED = 5


def _batch(encoder: CLIPDualEncoder) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    captions = ["a man in a red jacket", "a woman with a blue bag", "the same man, red jacket", "a child in green"]
    return {
        "images": torch.randn(4, 3, 384, 128, generator=gen),
        "text_ids": encoder.tokenize(captions),
        "pids": torch.tensor([0, 1, 0, 2]),
    }


def _two_steps(model: UITModel, forward, batch: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=4e-5)
    history = []
    for _ in range(2):
        torch.manual_seed(MASK_SEED)  # the same TIR masks both steps: the second loss is comparable
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = forward(batch)
        out["loss"].backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({k: float(v.detach()) for k, v in out.items()})
    return history


@pytest.fixture(scope="module")
def full_model() -> UITModel:
    torch.manual_seed(0)
    encoder = CLIPDualEncoder.from_open_clip("ViT-B-16", image_size=(384, 128))
    return UITModel(encoder, num_classes=3, tir_head=True)


def _check(history: list[dict[str, float]]) -> None:
    for record in history:
        assert set(record) == {"sdm", "id", "cmt", "tir", "loss"}
        assert all(torch.isfinite(torch.tensor(v)) for v in record.values()), record
    # same batch, same masks, one Adam step: the weighted loss goes down
    assert history[1]["loss"] < history[0]["loss"], history


@pytest.mark.slow
def test_full_size_uit_model_takes_two_bf16_training_steps(full_model) -> None:
    encoder = full_model.encoder
    assert (encoder.grid_size, encoder.patch_size, encoder.embed_dim) == ((24, 8), (16, 16), 512)
    assert full_model.tir_head is not None and full_model.tir_head.config()["width"] == 512
    _check(_two_steps(full_model, full_model, _batch(encoder)))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile needs a C++ compiler")
@pytest.mark.skipif(os.environ.get("UIT_COMPILE_TEST") != "1", reason="compiling ViT-B/16 on CPU takes minutes: set UIT_COMPILE_TEST=1")
def test_full_size_uit_model_takes_two_compiled_bf16_steps(full_model) -> None:
    _check(_two_steps(full_model, torch.compile(full_model), _batch(full_model.encoder)))
