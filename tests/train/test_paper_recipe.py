"""The paper configs build the authors' model and recipe (SEN, Delong-liu-bupt/SEN), checked against
numbers and rules written out from the authors' code, not re-derived from ours."""

from __future__ import annotations

import pytest
import torch

from uit_reid.data import IdentityGroupSampler, build_batch_sampler
from uit_reid.tir import SEN_TIR_KEY_MAP
from uit_reid.train import load_config, param_groups
from uit_reid.train.trainer import build_model

NUM_CLASSES = 11_003  # CUHK-PEDES training identities


@pytest.fixture(scope="module")
def paper():
    config = load_config("cuhk_pedes")
    config.model.pretrained = None  # random weights: the structure is what is checked
    torch.manual_seed(0)
    return config, build_model(config, NUM_CLASSES)


def _activations(module: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules() if type(m).__name__ in ("GELU", "QuickGELU")}


def test_both_towers_and_the_decoder_use_quick_gelu(paper) -> None:
    _, model = paper
    clip = model.encoder.clip
    assert model.encoder.model_name == "ViT-B-16-quickgelu" and model.encoder.quick_gelu
    assert _activations(clip.visual) == {"QuickGELU"}
    assert _activations(clip.transformer) == {"QuickGELU"}
    assert _activations(model.tir_head) == {"QuickGELU"}


def test_decoder_is_the_authors_layout(paper) -> None:
    _, model = paper
    head = model.tir_head
    assert model.encoder.grid_size == (24, 8) and head.num_patches == 192
    assert not head.residual and not head.mask_padding
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    # SEN: decoder_embed 2, mask_token 1, norm_1/2/4/6/7 10, cross_attn_Text 4, 4 blocks x 12, decoder_pred 2
    assert len(shapes) == 2 + 1 + 10 + 4 + 4 * 12 + 2
    assert shapes["pred.weight"] == (16 * 16 * 3, 512) and shapes["mask_token"] == (1, 1, 512)
    assert shapes["decoder.resblocks.3.mlp.c_fc.weight"] == (2048, 512)
    ours = set(SEN_TIR_KEY_MAP.values())
    assert all(any(k.startswith(p) for p in ours) for k in shapes)


def _sen_name(ours: str) -> str:
    """Our parameter name → the authors' (model/build.py, model/clip_model.py)."""
    if ours.startswith("tir_head."):
        rest = ours[len("tir_head."):]
        for sen, mine in SEN_TIR_KEY_MAP.items():
            if rest.startswith(mine):
                return sen + rest[len(mine):]
        raise AssertionError(ours)
    return ours.replace("encoder.clip.", "base_model.")


def _sen_rule(name: str, lr: float = 1e-5, wd: float = 4e-5) -> tuple[float, float]:
    """SEN solver/build.py with its defaults (lr_factor 5, bias_lr_factor 2, weight_decay_bias 0),
    applied in the same order to the same names."""
    out_lr, out_wd = lr, wd
    if "cross" in name:
        out_lr = lr * 5.0
    if "bias" in name:
        out_lr, out_wd = lr * 2.0, 0.0
    if "classifier" in name:
        out_lr = lr * 5.0
    return out_lr, out_wd


def test_every_parameter_gets_the_authors_lr_and_weight_decay(paper) -> None:
    config, model = paper
    o = config.optim
    groups = param_groups(model, o.lr, o.weight_decay, o.head_lr_mult, o.bias_lr_mult)
    got = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(got) == len(named)
    fast = 0
    for name, param in named:
        want = _sen_rule(_sen_name(name))
        assert got[id(param)] == (pytest.approx(want[0]), want[1]), name
        fast += want[0] == pytest.approx(5e-5)

    assert fast == 2 + 2 + 4 * 6


def test_paper_sampler_is_the_authors(paper) -> None:
    config, _ = paper
    d = config.data
    sampler = build_batch_sampler(d.sampler, [i // 4 for i in range(4096)], d.batch_size, d.num_instances)
    assert isinstance(sampler, IdentityGroupSampler) and sampler.num_pids_per_batch == 64
