"""Parameter groups and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid import TIRHead, UITModel
from uit_reid.train import build_optimizer, lr_factor, param_groups, param_role, warmup_cosine


def test_groups_follow_the_uit_recipe(tiny_encoder_factory) -> None:
    enc = tiny_encoder_factory()
    model = UITModel(enc, num_classes=5, tir_head=TIRHead(enc.embed_dim, enc.grid_size, enc.patch_size, width=32, depth=1, heads=4))
    groups = {g["name"]: g for g in param_groups(model, lr=1e-5, weight_decay=4e-5)}
    want = {  # name: (lr, weight decay)
        "encoder": (1e-5, 4e-5), "encoder_bias": (2e-5, 0.0),
        "classifier": (5e-5, 4e-5), "classifier_bias": (5e-5, 0.0),
        "tir_attention": (5e-5, 4e-5), "tir_attention_bias": (2e-5, 0.0),
        "tir_io": (1e-5, 4e-5), "tir_io_bias": (2e-5, 0.0),
    }
    assert {n: (pytest.approx(g["lr"]), g["weight_decay"]) for n, g in groups.items()} == want
    assert param_groups(model, 1e-5, 4e-5)[0]["name"] == "encoder"  # the trainer logs group 0's lr
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert id(model.classifier.weight) in ids["classifier"]
    assert id(model.tir_head.cross_attn.in_proj_bias) in ids["tir_attention_bias"]
    assert id(model.tir_head.decoder.resblocks[0].mlp.c_fc.weight) in ids["tir_attention"]
    assert id(model.tir_head.pred.weight) in ids["tir_io"]
    grouped = set().union(*ids.values())
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert grouped == trainable and id(enc.clip.logit_scale) not in grouped
    assert sum(len(v) for v in ids.values()) == len(grouped)  # no parameter twice


def test_param_role_names_a_stray_parameter() -> None:
    assert param_role("tir_head.cross_attn.in_proj_bias") == "tir_attention"
    with pytest.raises(ValueError, match=r"parameter 'projector.weight' has no role"):
        param_role("projector.weight")


@settings(max_examples=50, deadline=None)
@given(st.integers(10, 500), st.integers(0, 50), st.floats(0.0, 1.0))
def test_lr_factor_shape(total: int, warmup: int, start: float) -> None:
    warmup = min(warmup, total - 1)
    assert lr_factor(0, total, warmup, start) == pytest.approx(start if warmup else 1.0)
    assert lr_factor(warmup, total, warmup, start) == pytest.approx(1.0)
    assert lr_factor(total, total, warmup, start) == pytest.approx(0.0, abs=1e-12)
    mid = warmup + (total - warmup) / 2
    assert lr_factor(int(mid), total, warmup, start) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * (int(mid) - warmup) / (total - warmup)))
    )
    values = [lr_factor(s, total, warmup, start) for s in range(warmup, total + 1)]
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))  # non-increasing after warm-up


def test_scheduler_drives_every_group(tiny_encoder_factory) -> None:
    model = UITModel(tiny_encoder_factory(), num_classes=3, tir_head=False)
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.0)
    scheduler = warmup_cosine(optimizer, total_steps=10, warmup_steps=2, warmup_factor=0.1)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([g["initial_lr"] * 0.1 for g in optimizer.param_groups])
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([g["initial_lr"] for g in optimizer.param_groups])
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["eps"] == 1e-3
