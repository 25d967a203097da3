"""Config files: the bundled recipes load, unknown keys and bad values are named."""

from __future__ import annotations

import pytest

from uit_reid.train import ConfigError, TrainConfig, bundled_config, load_config


@pytest.mark.parametrize("name", ["cuhk_pedes", "icfg_pedes", "rstpreid", "demo"])
def test_bundled_configs_load(name: str) -> None:
    config = load_config(name)
    assert config == TrainConfig.from_toml(bundled_config(name))
    if name != "demo":  # the paper's recipe
        assert config.model.name == "ViT-B-16-quickgelu" and tuple(config.model.image_size) == (384, 128)
        assert (config.loss.sdm, config.loss.id, config.loss.tir, config.loss.cmt) == (1.0, 1.0, 10.0, 10.0)
        assert config.optim.lr == 1e-5 and config.optim.eps == 1e-3 and config.optim.weight_decay == 4e-5
        assert config.data.batch_size == 128 and config.train.epochs == 60
        assert (config.data.sampler, config.data.num_instances) == ("identity_groups", 2)
        assert config.model.tir_layout == "sen" and config.data.token_corruption
    else:
        assert config.model.pretrained is None and config.synthetic.generate


def test_unknown_key_names_the_key_and_file(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[optim]\nlr = 1e-4\nlearning_rate = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown key 'optim.learning_rate'"):
        TrainConfig.from_toml(path)
    path.write_text("[optimiser]\nlr = 1e-4\n")
    with pytest.raises(ConfigError, match=r"unknown section \[optimiser\]"):
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
