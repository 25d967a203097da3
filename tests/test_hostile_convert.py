"""`uit-reid convert` against hostile inputs (issue 20, findings 6, 11 and 12): shapes that declare a huge
model, its own input as --out, bad configs.yaml values and a dataset name that is Markdown."""

from __future__ import annotations

import pytest
import torch
import yaml
from limited_cli import run_cli_limited
from test_convert import SIZE, irra_state, write_irra

from uit_reid import convert_model
from uit_reid.cli import main


def test_shapes_declaring_a_huge_model_are_refused_before_building(tmp_path) -> None:
    """Empty tensors cost nothing on disk but their shapes size the model: weighed against the file first."""
    state = irra_state(mlm=False)
    width = 8192
    def huge(*shape: int) -> torch.Tensor:  # one stored element, any shape (stride 0)
        return torch.zeros(1).as_strided(shape, (0,) * len(shape))

    state["base_model.visual.conv1.weight"] = huge(width, 3, 16, 16)
    state["base_model.visual.proj"] = huge(width, 32)
    state["base_model.visual.transformer.resblocks.0.mlp.c_fc.weight"] = huge(4 * width, width)
    for i in range(48):
        state[f"base_model.visual.transformer.resblocks.{i}.ln_1.weight"] = torch.zeros(1).expand(width)
    path = write_irra(tmp_path / "huge", state)

    out = tmp_path / "out"
    run = run_cli_limited(["convert", str(path), "--out", str(out)])
    assert run.returncode == 1, run.stderr[-2000:]
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith(f"uit-reid: error: {path}: its sizes declare about ") and "refusing to build it" in line, line
    assert list(out.iterdir()) == []  # the --out check made the folder; nothing was written into it


def test_convert_never_writes_over_its_own_input(tmp_path, capsys) -> None:
    model = convert_model(write_irra(tmp_path / "irra", irra_state(mlm=False)))
    folder = tmp_path / "mine"
    model.save_pretrained(folder)
    weights = folder / "model.safetensors"
    (folder / "model.safetensors").rename(folder / "keep.bin")
    (folder / "keep.bin").rename(weights)
    before = weights.read_bytes()
    assert main(["convert", str(weights), "--format", "open_clip", "--model", "ViT-B-16", "--out", str(folder),
                 "--force"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"uit-reid: error: --out {folder} would replace the input {weights} with its model.safetensors; "
        "choose another --out")
    assert weights.read_bytes() == before


def test_convert_checks_out_before_converting(tmp_path, capsys) -> None:
    path = write_irra(tmp_path / "irra", irra_state(mlm=False))
    blocked = tmp_path / "file"
    blocked.write_text("a file where --out's folder would be")
    assert main(["convert", str(path), "--out", str(blocked / "model")]) == 1
    err = capsys.readouterr().err
    assert f"cannot write {blocked / 'model' / 'config.json'}" in err
    assert "converted" not in err  # refused before the conversion


@pytest.mark.parametrize(("img_size", "message"), [
    ([64], "img_size: must be (height, width), two integers, got [64]"),
    ([64.5, 32], "img_size[0]: must be an integer from 1 to 8192, got 64.5"),
    (["a", 32], "img_size[0]: must be an integer from 1 to 8192, got 'a'"),
    ([10**9, 32], "img_size[0]: must be from 1 to 8192, got 1000000000"),
])
def test_configs_yaml_errors_name_the_file_and_field(tmp_path, img_size, message) -> None:
    path = write_irra(tmp_path / "irra", irra_state(mlm=False))
    configs = path.parent / "configs.yaml"
    configs.write_text(yaml.dump({"img_size": img_size, "stride_size": 16}))
    with pytest.raises(ValueError) as exc:
        convert_model(path)
    assert str(exc.value) == f"{configs}: {message}"


@pytest.mark.parametrize(("image_size", "message"), [
    ((64,), "image_size: must be (height, width), two integers, got (64,)"),
    ((64.5, 32), "image_size[0]: must be an integer from 1 to 8192, got 64.5"),
])
def test_image_size_argument_is_checked(tmp_path, image_size, message) -> None:
    path = write_irra(tmp_path / "irra", irra_state(mlm=False), configs=False)
    with pytest.raises(ValueError, match=f"^{__import__('re').escape(message)}$"):
        convert_model(path, image_size=image_size)


def test_dataset_name_from_configs_yaml_is_plain_text_in_the_model_card(tmp_path) -> None:
    path = write_irra(tmp_path / "irra", irra_state(mlm=False))
    configs = path.parent / "configs.yaml"
    hostile = "CUHK](http://evil.example)<script>x</script>\n# Owned ![i](http://evil.example/p.png)"
    configs.write_text(yaml.dump({"img_size": list(SIZE), "stride_size": 16, "dataset_name": hostile}))
    card = (convert_model(path).save_pretrained(tmp_path / "out") / "README.md").read_text()
    line = next(li for li in card.splitlines() if li.startswith("- Training data:"))
    assert line == ("- Training data: CUHK\\](http://evil.example)\\<script\\>x\\</script\\> \\# Owned "
                    "\\!\\[i\\](http://evil.example/p.png) (from configs.yaml)")
    assert "\n# Owned" not in card
