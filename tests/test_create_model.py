"""`create_model_and_transforms` / `get_tokenizer`: transforms from the tower's own preprocessing, kept on save."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from uit_reid import create_model_and_transforms, get_tokenizer, load_model
from uit_reid.augment import CLIP_MEAN, CLIP_STD
from uit_reid.encoders import MODEL_CONFIG_DIR

SIZE = (64, 32)
# statistics no CLIP tower has, and the other resize filter (a timm-style preprocess cfg)
CUSTOM = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bilinear", "resize_mode": "squash"}
COLOUR = (200, 100, 50)


def _tower(folder) -> str:
    """An open_clip ``local-dir:`` tower whose ``open_clip_config.json`` carries its own preprocessing."""
    folder.mkdir()
    config = {"model_cfg": json.loads((MODEL_CONFIG_DIR / "uit-tiny.json").read_text()), "preprocess_cfg": CUSTOM}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return f"local-dir:{folder}"


def _step(transform, kind):
    return next(t for t in transform.transforms if isinstance(t, kind))


def _check_normalises_like(transform, mean, std, interpolation) -> None:
    pixels = transform(Image.new("RGB", (SIZE[1], SIZE[0]), COLOUR))
    expected = torch.tensor([(c / 255 - m) / s for c, m, s in zip(COLOUR, mean, std, strict=True)])
    assert torch.allclose(pixels[:, 0, 0], expected, atol=1e-5)
    assert _step(transform, T.Resize).interpolation == interpolation


def test_transforms_follow_the_towers_preprocessing_and_survive_save(tmp_path) -> None:
    model, train_t, eval_t = create_model_and_transforms(_tower(tmp_path / "tower"), image_size=SIZE, context_length=52)
    assert model.image_mean == tuple(CUSTOM["mean"]) and model.interpolation == "bilinear"
    _check_normalises_like(eval_t, CUSTOM["mean"], CUSTOM["std"], T.InterpolationMode.BILINEAR)
    assert list(_step(train_t, T.Normalize).mean) == CUSTOM["mean"]
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["image_mean"] == CUSTOM["mean"] and saved["image_std"] == CUSTOM["std"]
    assert saved["interpolation"] == "bilinear"
    loaded, _, loaded_eval = create_model_and_transforms(tmp_path / "saved")
    _check_normalises_like(loaded_eval, CUSTOM["mean"], CUSTOM["std"], T.InterpolationMode.BILINEAR)
    assert load_model(tmp_path / "saved").image_std == tuple(CUSTOM["std"])


def test_our_towers_keep_clips_statistics() -> None:
    model, train_t, eval_t = create_model_and_transforms("uit-tiny", "synthetic", image_size=SIZE, context_length=52)
    assert (model.image_mean, model.image_std, model.interpolation) == (CLIP_MEAN, CLIP_STD, "bicubic")
    _check_normalises_like(eval_t, CLIP_MEAN, CLIP_STD, T.InterpolationMode.BICUBIC)
    assert not model.training and model.tir_head is None


def test_get_tokenizer_for_a_tower_and_a_saved_model(tmp_path) -> None:
    assert get_tokenizer("uit-tiny", context_length=52)(["a man in a red coat"]).shape == (1, 52)
    model, _, _ = create_model_and_transforms("uit-tiny", image_size=SIZE, context_length=40)
    model.save_pretrained(tmp_path / "m")
    ids = get_tokenizer(tmp_path / "m")(["a man in a red coat"])
    assert torch.equal(ids, model.encoder.tokenize("a man in a red coat"))
    with pytest.raises(ValueError, match="own context length"):
        get_tokenizer(tmp_path / "m", context_length=77)
