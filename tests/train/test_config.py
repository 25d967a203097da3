"""Config files: the bundled recipes load, unknown keys and bad values are named."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

from uit_reid.train import ConfigError, TrainConfig, bundled_config, load_config


@pytest.mark.parametrize("name", ["paper", "cuhk_pedes", "icfg_pedes", "rstpreid", "demo", "demo_uit"])
def test_bundled_configs_load(name: str) -> None:
    config = load_config(name)
    assert config == TrainConfig.from_toml(bundled_config(name))
    if not name.startswith("demo"):  # the paper's recipe
        assert config.model.tower == "ViT-B-16-quickgelu" and tuple(config.model.image_size) == (384, 128)
        assert (config.loss.sdm, config.loss.id, config.loss.tir, config.loss.cmt) == (1.0, 1.0, 10.0, 10.0)
        assert config.optim.lr == 1e-5 and config.optim.eps == 1e-3 and config.optim.weight_decay == 4e-5
        assert config.data.batch_size == 128 and config.train.epochs == 60
        assert (config.data.sampler, config.data.num_instances) == ("identity_groups", 2)
        assert config.model.tir_layout == "sen" and config.data.token_corruption
    elif name == "demo_uit":
        assert config.model.pretrained == "synthetic" and config.synthetic.generate
    else:  # make demo: from random init with InfoNCE (docs/demo.md says why)
        assert config.model.pretrained is None and config.loss.itc > 0 and config.synthetic.generate


def test_demo_config_fine_tunes_with_all_four_uit_losses(tiny_dataset, tmp_path) -> None:
    """The UIT demo is UIT: SDM, ID, CMT and TIR all weighted and all trained, with the recipe's data side."""
    import json

    from uit_reid.train import Trainer

    config = load_config("demo_uit")
    weights = {k: getattr(config.loss, k) for k in ("sdm", "id", "cmt", "tir")}
    assert all(v > 0 for v in weights.values()), weights
    assert config.loss.itc == 0 and config.model.tir_head and config.model.tir_layout == "sen"
    assert config.data.sampler == "identity_groups" and config.data.text_augment_p > 0
    # the authors' caption corruption is off at the demo's scale (the ablation: it costs mAP and teaches the
    # decoder to restore without the colour words); the paper configs keep it
    assert not config.data.token_corruption and load_config("paper").data.token_corruption
    run = config.override([
        f"data.root={json.dumps(str(tiny_dataset))}", f"train.output_dir={json.dumps(str(tmp_path / 'run'))}",
        "train.max_steps=2", "data.batch_size=8", "train.log_every=1", "synthetic.generate=false",
    ])
    Trainer(run).fit()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "split" not in r]
    assert steps and all(r[k] > 0 for r in steps for k in weights)  # each loss computed and non-zero
    assert all(r["loss"] == pytest.approx(sum(weights[k] * r[k] for k in weights), rel=1e-4) for r in steps)


def test_unknown_key_names_the_key_and_file(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[optim]\nlr = 1e-4\nlearning_rate = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown key 'optim.learning_rate'"):
        TrainConfig.from_toml(path)
    path.write_text("[optimiser]\nlr = 1e-4\n")
    with pytest.raises(ConfigError, match=r"unknown section \[optimiser\]"):
        TrainConfig.from_toml(path)


def test_renamed_key_names_the_new_one(tmp_path) -> None:
    path = tmp_path / "old.toml"
    path.write_text("[model]\ntir = false\n")
    with pytest.raises(ConfigError, match=r"old.toml: 'model.tir' is now 'model.tir_head'"):
        TrainConfig.from_toml(path)
    with pytest.raises(ConfigError, match=r"--set model.tir=false: 'model.tir' is now 'model.tir_head'"):
        TrainConfig().override(["model.tir=false"])
    assert TrainConfig.from_dict({"loss": {"tir": 2.0}}).loss.tir == 2.0  # [loss] tir is the TIR weight
    path.write_text('[model]\nname = "uit-tiny"\n')
    with pytest.raises(ConfigError, match=r"old.toml: 'model.name' is now 'model.tower'"):
        TrainConfig.from_toml(path)


def test_invalid_files_and_values(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "broken.toml"
    bad.write_text("[train\nepochs = 3")
    with pytest.raises(ConfigError, match="broken.toml: invalid TOML"):
        TrainConfig.from_toml(bad)
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig.from_dict({"train": {"precision": "fp8"}})
    with pytest.raises(ConfigError, match="no bundled config 'nope'"):
        load_config("nope")


def test_overrides_and_toml_round_trip(tmp_path) -> None:
    config = TrainConfig().override(["optim.lr=3e-4", "data.root=/data/x", "model.image_size=[128, 48]"])
    assert config.optim.lr == 3e-4 and config.data.root == "/data/x" and config.model.image_size == (128, 48)
    path = tmp_path / "round.toml"
    path.write_text(config.to_toml())
    assert TrainConfig.from_toml(path) == config
    with pytest.raises(ConfigError, match="unknown key 'optim.lrate'"):
        config.override(["optim.lrate=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        config.override(["lr=1"])


def test_config_module_imports_without_torch() -> None:
    code = "import uit_reid.train.config, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("key", "module", "registry"),
    [
        ("data.sampler", "uit_reid.data.samplers", "SAMPLERS"),
        ("model.tir_layout", "uit_reid.tir", "TIR_LAYOUTS"),
        ("data.interpolation", "uit_reid.images", "INTERPOLATIONS"),
        ("data.erasing_fill", "uit_reid.augment", "ERASING_FILLS"),
        ("synthetic.world", "uit_reid.data.synthetic", "WORLD_NAMES"),
        ("train.precision", "uit_reid.device", "PRECISIONS"),
    ],
)
def test_choices_are_the_registry_keys(key, module, registry, monkeypatch) -> None:
    section, name = key.split(".")
    table = getattr(importlib.import_module(module), registry)
    with pytest.raises(ConfigError, match=rf"^<dict>: {key} must be one of \[.*\], got 'novel'$") as refused:
        TrainConfig.from_dict({section: {name: "novel"}})
    assert all(repr(k) in str(refused.value) for k in table)  # the message lists the registry's keys
    if isinstance(table, dict):
        monkeypatch.setitem(table, "novel", next(iter(table.values())))
    else:
        monkeypatch.setattr(importlib.import_module(module), registry, (*table, "novel"))
    assert getattr(getattr(TrainConfig.from_dict({section: {name: "novel"}}), section), name) == "novel"


def test_defaults_are_the_recipe() -> None:
    from uit_reid import recipe
    from uit_reid.tir import TIRHead

    config = TrainConfig()
    assert {k: getattr(config.loss, k) for k in recipe.LOSS_WEIGHTS} == recipe.LOSS_WEIGHTS
    assert (config.model.tir_width, config.model.tir_depth, config.model.tir_heads, config.model.tir_layout) == (
        recipe.TIR_WIDTH, recipe.TIR_DEPTH, recipe.TIR_HEADS, recipe.TIR_LAYOUT)
    head = inspect.signature(TIRHead).parameters
    assert (head["width"].default, head["depth"].default, head["heads"].default, head["layout"].default) == (
        recipe.TIR_WIDTH, recipe.TIR_DEPTH, recipe.TIR_HEADS, recipe.TIR_LAYOUT)


def test_report_to_accepts_known_reporters_only() -> None:
    assert TrainConfig().train.report_to == ()  # nothing is reported anywhere unless asked
    assert TrainConfig.from_dict({"train": {"report_to": ["tensorboard", "wandb"]}}).train.report_to == (
        "tensorboard", "wandb")
    with pytest.raises(ConfigError, match="train.report_to must be a list of strings, got 'wandb'"):
        TrainConfig.from_dict({"train": {"report_to": "wandb"}})
    with pytest.raises(ConfigError, match=r"train.report_to must be any of \['tensorboard', 'wandb'\], got \['mlflow'\]"):
        TrainConfig.from_dict({"train": {"report_to": ["mlflow"]}})


# configs/cuhk_pedes.toml as it was before the paper configs extended one base (issue 30, item 7)
OLD_CUHK_PEDES = """# UIT on CUHK-PEDES with CLIP ViT-B/16 (the paper's recipe; see docs). Run:
#   uit-reid train --config cuhk_pedes --set data.root=/path/to/CUHK-PEDES
# or under torchrun for several GPUs (data.batch_size is per process).

[model]
tower = "ViT-B-16-quickgelu"  # OpenAI weights were trained with QuickGELU
pretrained = "openai"
image_size = [384, 128]
context_length = 77
tir_head = true
tir_width = 512
tir_depth = 4
tir_heads = 8
mask_ratio = 0.7
tir_layout = "sen"
tir_grayscale = "normalised"  # the authors' grayscale: weights applied to the normalised tensor

[loss]
sdm = 1.0
id = 1.0
tir = 10.0
cmt = 10.0
itc = 0.0
logit_scale = 50.0
cmt_margin = 0.05

[data]
root = "data/CUHK-PEDES"
format = "cuhk-pedes"
batch_size = 128
sampler = "identity_groups"  # the authors' sampler: identity groups of 1-2 samples
num_instances = 2
num_workers = 8
text_augment_p = 0.2
token_corruption = true  # the authors' caption corruption (see docs/training.md)
padding = 10
erasing_p = 0.5
erasing_fill = "clip_mean"  # the authors' fill: CLIP's mean written after normalisation
interpolation = "bilinear"

[optim]
lr = 1e-5
head_lr_mult = 5.0
bias_lr_mult = 2.0
weight_decay = 4e-5
betas = [0.9, 0.999]
eps = 1e-3
warmup_epochs = 5
warmup_factor = 0.1

[train]
epochs = 60
precision = "auto"
eval_every = 1
checkpoint_every_steps = 1000
log_every = 50
output_dir = "runs/cuhk_pedes"
"""
OLD_LINES = {"cuhk_pedes": ('"data/CUHK-PEDES"', '"cuhk-pedes"'), "icfg_pedes": ('"data/ICFG-PEDES"', '"icfg-pedes"'),
             "rstpreid": ('"data/RSTPReid"', '"rstpreid"')}


@pytest.mark.parametrize("name", list(OLD_LINES))
def test_paper_configs_extend_one_base_and_load_as_before(name, tmp_path) -> None:
    """Each benchmark config states only its dataset and output folder; resolved, it equals the old
    57-line file key for key."""
    root, fmt = OLD_LINES[name]
    old = (OLD_CUHK_PEDES.replace('"data/CUHK-PEDES"', root).replace('"cuhk-pedes"', fmt)
           .replace('"runs/cuhk_pedes"', f'"runs/{name}"'))
    (tmp_path / "old.toml").write_text(old)
    want, got = TrainConfig.from_toml(tmp_path / "old.toml").to_dict(), load_config(name).to_dict()
    assert list(got) == list(want)
    for section in want:
        assert list(got[section]) == list(want[section])
        for key in want[section]:
            assert got[section][key] == want[section][key], f"{section}.{key}"
    own = [line for line in bundled_config(name).read_text().splitlines() if line and not line.startswith("#")]
    assert own == ['extends = "paper"', "[data]", f"root = {root}", f"format = {fmt}", "[train]",
                   f'output_dir = "runs/{name}"']


def test_extends_a_file_beside_it_and_names_bad_bases(tmp_path) -> None:
    (tmp_path / "base.toml").write_text('[train]\nepochs = 3\nlog_every = 7\n')
    (tmp_path / "child.toml").write_text('extends = "base.toml"\n[train]\nepochs = 5\n')
    config = load_config(tmp_path / "child.toml")
    assert (config.train.epochs, config.train.log_every) == (5, 7)  # a key of the child wins, the rest is the base's
    (tmp_path / "loop_a.toml").write_text('extends = "loop_b.toml"\n')
    (tmp_path / "loop_b.toml").write_text('extends = "loop_a.toml"\n')
    with pytest.raises(ConfigError, match=r"loop_b.toml: extends 'loop_a.toml' makes a cycle: .*loop_a.toml -> .*loop_b.toml -> .*loop_a.toml$"):
        load_config(tmp_path / "loop_a.toml")
    (tmp_path / "bad.toml").write_text("extends = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml: extends: must be a config name or a .toml path, got 3$"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "nobase.toml").write_text('extends = "nothing"\n')
    with pytest.raises(ConfigError, match=r"no bundled config 'nothing'; available: \[.*'paper'"):
        load_config(tmp_path / "nobase.toml")
