"""Hostile model files: a small config.json that declares a huge model, and values that once gave raw
TypeError/KeyError/RuntimeError or were accepted silently (issue 20, findings 6 and 12).

The huge cases run the real command in a subprocess under an address-space limit (``ulimit -v``):
before the checks, building the declared model allocated until the limit killed it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
from limited_cli import run_cli_limited

from uit_reid.factory import build_model
from uit_reid.model import UITModel
from uit_reid.train.config import LossConfig, ModelConfig

TINY_CFG = {"embed_dim": 128, "vision_cfg": {"image_size": [96, 32], "layers": 4, "width": 128, "head_width": 32,
                                             "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    model = build_model(ModelConfig(tower="uit-tiny", pretrained="none", image_size=(96, 32), tir_head=False),
                        LossConfig(), num_classes=4)
    return model.save_pretrained(tmp_path_factory.mktemp("tiny") / "model")


def variant(saved: Path, tmp_path: Path, edit) -> Path:
    """A copy of the saved model whose config.json ``edit`` changed (it may also delete files)."""
    out = tmp_path / "edited"
    shutil.copytree(saved, out)
    cfg = json.loads((out / "config.json").read_text())
    edit(cfg)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def limited_load(model_dir: Path):
    """`uit-reid evaluate --model MODEL_DIR` (which loads the model first) under ``ulimit -v``."""
    return run_cli_limited(["evaluate", "--model", str(model_dir), "--dataset", str(model_dir / "no-dataset"),
                            "--device", "cpu"])


def with_model_cfg(**changes):
    def edit(cfg) -> None:
        model_cfg = json.loads(json.dumps(TINY_CFG))
        for path, value in changes.items():
            section, key = path.split("__")
            model_cfg[section][key] = value
        cfg["encoder"]["model_cfg"] = model_cfg
    return edit


def test_the_unchanged_copy_loads_under_the_same_limit(saved, tmp_path) -> None:
    """The control: a model of the size its weights hold gets past loading (to the missing dataset)."""
    run = limited_load(variant(saved, tmp_path, with_model_cfg()))
    assert run.returncode == 1 and "no-dataset" in run.stderr and "config.json" not in run.stderr, run.stderr


@pytest.mark.parametrize(("edit", "declared"), [
    (with_model_cfg(vision_cfg__width=8192, vision_cfg__layers=48, vision_cfg__head_width=64), "38,"),
    (with_model_cfg(text_cfg__width=8192, text_cfg__layers=48, text_cfg__heads=64), "39,"),
    (lambda cfg: cfg.update(num_classes=9_000_000), "1,"),
], ids=["vision-8192x48", "text-8192x48", "nine-million-classes"])
def test_a_config_declaring_a_huge_model_is_refused_before_allocating(saved, tmp_path, edit, declared) -> None:
    model_dir = variant(saved, tmp_path, edit)
    start = time.monotonic()
    run = limited_load(model_dir)
    assert time.monotonic() - start < 120
    assert run.returncode == 1, run.stderr[-2000:]
    line = run.stderr.strip().splitlines()[-1]
    weights = (model_dir / "model.safetensors").stat().st_size
    assert line.startswith(f"uit-reid: error: {model_dir / 'config.json'}: the model: its sizes declare about "
                           f"{declared}"), line
    assert line.endswith(f"but {model_dir / 'model.safetensors'} has only {weights:,} bytes; refusing to build it")
    assert "Traceback" not in run.stderr


def _set(path: str, value):
    def edit(cfg) -> None:
        *parents, key = path.split(".")
        target = cfg
        for p in parents:
            target = target[p]
        target[key] = value
    return edit


def _drop(key: str):
    return lambda cfg: cfg.pop(key)


BAD_CONFIGS = [
    (_set("num_classes", -1), "num_classes: must be from 0 to 10000000, got -1"),
    (_set("num_classes", 4.5), "num_classes: must be an integer from 0 to 10000000, got 4.5"),
    (_set("mask_ratio", 5), "mask_ratio: must be a finite number in [0, 1), got 5"),
    (_set("logit_scale", math.nan), "logit_scale: must be a finite number in (0, inf], got nan"),
    (_set("logit_scale", 0), "logit_scale: must be a finite number in (0, inf], got 0"),
    (_set("cmt_margin", math.inf), "cmt_margin: must be a finite number in [0, inf], got inf"),
    (_set("image_std", [0.2, 0.0, 0.2]), "image_std[1]: must be a finite number in (0, inf], got 0.0"),
    (_set("image_mean", [0.5]), "image_mean: must be 3 numbers (R, G, B), got [0.5]"),
    (_set("loss_weights.sdm", -1), "loss_weights.sdm: must be a finite number in [0, inf], got -1"),
    (_set("encoder.image_size", [64]), "encoder.image_size: must be (height, width), two integers, got [64]"),
    (_set("encoder.image_size", [64.5, 32]), "encoder.image_size[0]: must be an integer from 1 to 8192, got 64.5"),
    (_set("encoder.context_length", "77"), "encoder.context_length: must be an integer from 1 to 4096, got '77'"),
    (_set("encoder.name", None), "encoder.name: must be a string, got None"),
    (_set("encoder", "uit-tiny"), "encoder: must be an object, got str"),
    (_drop("num_classes"), "the field 'num_classes' is missing"),
    (with_model_cfg(text_cfg__vocab_size=10**9),
     "encoder.model_cfg.text_cfg.vocab_size: must be from 1 to 1048576, got 1000000000"),
    (with_model_cfg(vision_cfg__layers=True), "encoder.model_cfg.vision_cfg.layers: must be an integer from 1 to 256, "
                                              "got True"),
    (_set("tir", {"embed_dim": 128, "grid_size": [12, 4], "patch_size": [8, 8], "width": 10**6}),
     "tir.width: must be from 1 to 16384, got 1000000"),
]


@pytest.mark.parametrize(("edit", "message"), BAD_CONFIGS, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in
                                                                enumerate(BAD_CONFIGS)])
def test_bad_config_values_get_one_line_naming_the_file_and_field(saved, tmp_path, edit, message) -> None:
    model_dir = variant(saved, tmp_path, edit)
    with pytest.raises(ValueError) as exc:
        UITModel.from_pretrained(model_dir)
    assert str(exc.value) == f"{model_dir / 'config.json'}: {message}"


def test_a_config_without_weights_is_refused_before_building(saved, tmp_path) -> None:
    model_dir = variant(saved, tmp_path, with_model_cfg(vision_cfg__width=8192, vision_cfg__layers=48))
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors not found: .*config\.json has no weights beside it"):
        UITModel.from_pretrained(model_dir)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_classes": -1}, "num_classes: must be from 0 to 10000000, got -1"),
    ({"mask_ratio": 5.0}, "mask_ratio: must be a finite number in [0, 1), got 5.0"),
    ({"logit_scale": math.nan}, "logit_scale: must be a finite number in (0, inf], got nan"),
])
def test_the_model_refuses_the_same_values_from_code(saved, kwargs, message) -> None:
    encoder = UITModel.from_pretrained(saved).encoder
    with pytest.raises(ValueError, match=f"^{__import__('re').escape(message)}$"):
        UITModel(encoder, **{"num_classes": 4, "tir_head": False, **kwargs})
