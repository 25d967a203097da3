"""Performance levers that can be checked on a CPU: no host syncs in the step, fused attention in TIR.

A host sync (``.item()``, ``bool(tensor)``, boolean-mask indexing) stalls a GPU's queue once per step;
on the CPU each shows up in the profiler as ``aten::_local_scalar_dense`` or ``aten::nonzero``. The
TIR decoder's attention must run through ``scaled_dot_product_attention`` (flash / memory-efficient
kernels on a GPU) rather than an explicit softmax over a materialised score matrix.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from uit_reid import TIRHead, UITModel

SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::item"}


def _ops(fn) -> list[str]:
    with profile() as prof:
        fn()
    return [event.name for event in prof.events()]


def _batch(encoder, pids: list[int]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "images": torch.randn(len(pids), 3, *encoder.image_size, generator=gen),
        "text_ids": encoder.tokenize([f"a person in a coat, photo {i}" for i in range(len(pids))]),
        "pids": torch.tensor(pids),
    }


@pytest.mark.parametrize("pids", [[0, 0, 1, 1, 2, 3], [0, 0, 0, 0, 0, 0]], ids=["mixed", "no-negatives"])
def test_a_training_step_has_no_host_sync(tiny_encoder_factory, pids) -> None:
    encoder = tiny_encoder_factory()
    head = TIRHead(encoder.embed_dim, encoder.grid_size, encoder.patch_size, width=32, depth=1, heads=4)
    model = UITModel(encoder, num_classes=4, tir_head=head, loss_weights={"itc": 1.0})
    batch = _batch(encoder, pids)

    def step() -> None:
        out = model(batch)
        out["loss"].backward()

    ops = _ops(step)
    assert "aten::scaled_dot_product_attention" in ops  # the profile did see the model run
    assert SYNC_OPS.isdisjoint(ops), sorted(SYNC_OPS.intersection(ops))


def test_tir_decoder_attention_is_fused(tiny_encoder_factory) -> None:
    encoder = tiny_encoder_factory()
    depth = 2
    head = TIRHead(encoder.embed_dim, encoder.grid_size, encoder.patch_size, width=32, depth=depth, heads=4)
    n = encoder.grid_size[0] * encoder.grid_size[1]
    visible = torch.randn(2, 1 + n // 4, encoder.embed_dim)
    ids_restore = torch.stack([torch.randperm(n) for _ in range(2)])
    text = torch.randn(2, 77, encoder.embed_dim)
    ops = _ops(lambda: head(visible, ids_restore, text))
    # one cross-attention plus one self-attention per decoder block, each through SDPA
    assert ops.count("aten::scaled_dot_product_attention") == depth + 1
    assert "aten::softmax" not in ops and "aten::_softmax" not in ops
