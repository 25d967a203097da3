"""`convert_model` / `uit-reid convert`: IRRA-, SEN- and OpenAI-layout checkpoints built from random
weights give models whose features equal an independent OpenAI-CLIP forward pass."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from peer_layouts import (
    as_irra_dtypes,
    openai_clip_state,
    reference_features,
    reference_sen_decoder,
    sen_decoder_state,
)
from PIL import Image

from uit_reid import UITModel, convert_model
from uit_reid.cli import main
from uit_reid.convert import clip_config_from_state_dict, detect_layout

GRID = (4, 2)  # 64x32 pixels at patch 16
SIZE = (64, 32)
CAPTIONS = ["a man in a red shirt and blue jeans", "a woman carrying a black backpack", "white shoes"]


def irra_state(seed: int = 0, classes: int = 7, mlm: bool = True) -> dict[str, torch.Tensor]:
    """IRRA's ``model.state_dict()``: CLIP under ``base_model.``, ID classifier, MLM heads (embed 32)."""
    gen = torch.Generator().manual_seed(seed + 100)
    state = {"base_model." + k: v for k, v in as_irra_dtypes(openai_clip_state(seed, grid=GRID)).items()}
    state["classifier.weight"] = torch.randn(classes, 32, generator=gen).half()
    state["classifier.bias"] = torch.randn(classes, generator=gen).half()
    if mlm:
        state["cross_attn.in_proj_weight"] = torch.randn(96, 32, generator=gen)
        state["cross_modal_transformer.resblocks.0.ln_1.weight"] = torch.ones(32)
        state["ln_pre_t.weight"] = torch.ones(32)
        state["ln_pre_i.weight"] = torch.ones(32)
        state["ln_post.weight"] = torch.ones(32)
        state["mlm_head.fc.weight"] = torch.randn(49408, 32, generator=gen).half()
    return state


def write_irra(folder: Path, state: dict[str, torch.Tensor], image_size=SIZE, configs: bool = True) -> Path:
    """IRRA's output folder: ``best.pth`` ({"model", "optimizer", epochs}) and ``configs.yaml``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "best.pth"
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0]}]},
                "num_epoch": 60, "iteration": 0, "epoch": 37}, path)
    if configs:  # yaml.dump(vars(args)): the tuple gets a !!python/tuple tag, as in IRRA's files
        (folder / "configs.yaml").write_text(yaml.dump({
            "img_size": tuple(image_size), "stride_size": 16, "dataset_name": "CUHK-PEDES",
            "loss_names": "sdm+id+mlm", "lr": 1e-5,
        }))
    return path


def clip_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("base_model."):]: v.float() for k, v in state.items() if k.startswith("base_model.")}


def inputs(model: UITModel, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(3, 3, *model.encoder.image_size, generator=torch.Generator().manual_seed(seed))
    return images, model.encoder.tokenize(CAPTIONS)


def assert_features_match(model: UITModel, clip_state: dict[str, torch.Tensor]) -> None:
    images, ids = inputs(model)
    want_image, want_text = reference_features(clip_state, images, ids)
    with torch.no_grad():
        got_image = model.encoder.encode_image(images)
        got_text = model.encoder.encode_text(ids)
    torch.testing.assert_close(got_image, want_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_text, want_text, atol=1e-5, rtol=0)


def test_irra_checkpoint_features_equal_reference(tmp_path, caplog) -> None:
    state = irra_state()
    path = write_irra(tmp_path / "irra", state)
    with caplog.at_level(logging.INFO, logger="uit_reid"):
        model = convert_model(path)
    assert not model.training and model.encoder.image_size == SIZE and model.encoder.grid_size == GRID
    assert model.interpolation == "bilinear"  # IRRA resizes with torchvision's default
    assert model.encoder.clip.visual.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"
    assert_features_match(model, clip_part(state))
    # the ID classifier carries over: logits = W f + b
    images, _ = inputs(model)
    with torch.no_grad():
        feats = model.encoder.encode_image(images)
        torch.testing.assert_close(
            model.classifier(feats), feats @ state["classifier.weight"].float().T + state["classifier.bias"].float()
        )
    assert model.tir_head is None and model.num_classes == 7
    messages = caplog.text
    assert "ignored the MLM head (cross_attn, cross_modal_transformer, ln_pre_t, ln_pre_i, ln_post, mlm_head)" in messages
    assert "from " + str(path.parent / "configs.yaml") in messages


def test_explicit_image_size_without_configs(tmp_path) -> None:
    state = irra_state(seed=1, mlm=False)
    path = write_irra(tmp_path / "bare", state, configs=False)
    model = convert_model(path, format="irra", image_size=SIZE)
    assert_features_match(model, clip_part(state))


def test_geometry_errors_are_one_line(tmp_path) -> None:
    path = write_irra(tmp_path / "bare", irra_state(mlm=False), configs=False)
    with pytest.raises(ValueError) as exc:
        convert_model(path)
    assert str(exc.value) == (
        f"{path}: the position embedding has 8 patch positions, which fits several image sizes at patch 16 "
        "(128x16, 64x32); pass image_size (--image-size H W) or keep the configs.yaml written with the "
        "checkpoint beside it"
    )
    with pytest.raises(ValueError, match=r"image size 96x32 at patch 16 gives a 6x2 grid \(12 patches\) but the "
                                         r"checkpoint has 8 patch positions"):
        convert_model(path, image_size=(96, 32))
    with pytest.raises(ValueError, match="stride 12 differs from patch size 16 .overlapping patches.; uit_reid's ViT "
                                         "supports stride == patch size only"):
        convert_model(path, image_size=SIZE, stride=12)


def test_unknown_layout_names_what_it_found(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"backbone.stem.weight": torch.zeros(2), "head.fc.weight": torch.zeros(2)}}, path)
    with pytest.raises(ValueError) as exc:
        convert_model(path)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: no known checkpoint layout (2 tensors, top-level names backbone, head); "
                              "known layouts: irra (IRRA/RDE: base_model.visual.conv1.weight, ...), sen (")
    assert "openai (visual.conv1.weight, token_embedding.weight, ...), open_clip (pass the architecture name)" in message
    with pytest.raises(ValueError, match="the keys do not follow the irra layout .detected: none."):
        convert_model(path, format="irra")


def test_the_old_function_name_names_the_new_one() -> None:
    import uit_reid

    with pytest.raises(AttributeError, match=r"^uit_reid.convert_checkpoint is now uit_reid.convert_model$"):
        uit_reid.convert_checkpoint  # noqa: B018
    assert uit_reid.convert_model is convert_model


def test_own_model_files_need_no_conversion(tmp_path, tiny_encoder) -> None:
    UITModel(tiny_encoder, num_classes=0, tir_head=False).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is a uit_reid model file: load its folder with UITModel.from_pretrained"):
        convert_model(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="is a folder; convert reads one checkpoint file"):
        convert_model(tmp_path)


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_pickled_code_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "evil.pth"
    with path.open("wb") as fh:
        pickle.dump({"model": _Payload()}, fh, protocol=2)
    with pytest.raises(ValueError, match=r"could not read checkpoint .*evil\.pth"):
        convert_model(path)
    assert "unpickled code ran" not in capsys.readouterr().out


def test_openai_weights_square_and_resized(tmp_path) -> None:
    from safetensors.torch import save_file

    state = openai_clip_state(seed=3, grid=(2, 2))
    state["logit_scale"] = torch.tensor(4.6052)
    path = tmp_path / "clip.safetensors"
    save_file(state, str(path))
    model = convert_model(path)
    assert model.encoder.image_size == (32, 32) and model.num_classes == 0
    assert_features_match(model, state)
    # person-shaped input: the 2x2 grid is resized to 4x2, nothing else changes
    tall = convert_model(path, format="openai", image_size=SIZE)
    assert tall.encoder.grid_size == GRID
    with torch.no_grad():
        torch.testing.assert_close(tall.encoder.encode_text(tall.encoder.tokenize(CAPTIONS)),
                                   model.encoder.encode_text(model.encoder.tokenize(CAPTIONS)))


def test_clip_config_reads_every_dimension_from_shapes() -> None:
    state = openai_clip_state(grid=(3, 2), vision_width=128, vision_layers=3, text_width=64, text_layers=1,
                              context_length=20, embed_dim=48)
    cfg = clip_config_from_state_dict(state, image_size=(48, 32))
    assert cfg == {
        "embed_dim": 48, "quick_gelu": True,
        "vision_cfg": {"image_size": [48, 32], "layers": 3, "width": 128, "head_width": 64, "mlp_ratio": 4.0,
                       "patch_size": 16},
        "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1,
                     "mlp_ratio": 4.0},
    }


def test_detect_layout() -> None:
    clip = list(openai_clip_state())
    irra = ["base_model." + k for k in clip]
    assert detect_layout(clip) == "openai"
    assert detect_layout(irra + ["classifier.weight"]) == "irra"
    assert detect_layout(irra + ["decoder_embed.weight", "cross_attn_Text.in_proj_weight"]) == "sen"
    assert detect_layout(["visual.trunk.patch_embed.proj.weight"]) is None


def test_cli_convert_then_evaluate_index_search(tmp_path, capsys) -> None:
    state = irra_state(seed=2)
    path = write_irra(tmp_path / "irra", state)
    out = tmp_path / "model"
    assert main(["convert", str(path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model = UITModel.from_pretrained(out).eval()
    assert_features_match(model, clip_part(state))
    card = (out / "README.md").read_text()
    assert "CUHK-PEDES (from configs.yaml)" in card and "irra layout, sha256" in card and "QuickGELU" in card
    assert json.loads((out / "config.json").read_text())["num_classes"] == 7

    # an existing, non-empty folder is not written into without --force
    assert main(["convert", str(path), "--out", str(out)]) == 1
    assert f"{out} already exists and is not empty; pass --force" in capsys.readouterr().err
    assert main(["convert", str(path), "--out", str(out), "--force"]) == 0

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (32, 64), colour).save(photos / f"p{i}.jpg")
    index = tmp_path / "gallery.faiss"
    assert main(["index", "build", "--model", str(out), "--images", str(photos), "--out", str(index),
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["search", "a person in red", "--index", str(index), "--k", "2", "--device", "cpu"]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if line.strip()]) == 2


# ----------------------------------------------------------------------------- SEN
SEN_DIM = 64  # SEN's decoder is as wide as the joint space, with width // 64 heads


def sen_state(seed: int = 4) -> dict[str, torch.Tensor]:
    clip = as_irra_dtypes(openai_clip_state(seed, grid=GRID, embed_dim=SEN_DIM))
    state = {"base_model." + k: v for k, v in clip.items()}
    gen = torch.Generator().manual_seed(seed)
    state["classifier.weight"] = torch.randn(5, SEN_DIM, generator=gen)
    state["classifier.bias"] = torch.randn(5, generator=gen)
    state.update(sen_decoder_state(seed, SEN_DIM, GRID, patch=16))
    return state


def test_sen_checkpoint_encoder_classifier_and_log(tmp_path, caplog) -> None:
    state = sen_state()
    path = write_irra(tmp_path / "sen", state)
    with caplog.at_level(logging.INFO, logger="uit_reid"):
        model = convert_model(path)
    assert_features_match(model, clip_part(state))
    assert model.num_classes == 5
    assert ("ignored modules SEN builds but never uses: cross_attn_TextImage, cross_attn_Image, norm_3, norm_5"
            in caplog.text)
    assert "differs from the 2-D sin-cos table" not in caplog.text
    assert model.tir_head is not None and model.tir_head.config()["layout"] == "sen"


def test_sen_tir_head_predicts_sens_pixels(tmp_path) -> None:
    state = sen_state(seed=5)
    decoder = {k: v for k, v in state.items() if not k.startswith(("base_model.", "classifier."))}
    out = tmp_path / "model"
    assert main(["convert", str(write_irra(tmp_path / "sen", state)), "--out", str(out), "--format", "sen"]) == 0
    model = UITModel.from_pretrained(out).eval()
    gen = torch.Generator().manual_seed(0)
    batch, patches, keep = 3, GRID[0] * GRID[1], 3
    ids_restore = torch.stack([torch.randperm(patches, generator=gen) for _ in range(batch)])
    visible = torch.randn(batch, 1 + keep, SEN_DIM, generator=gen)
    text = torch.randn(batch, 77, SEN_DIM, generator=gen)
    padding = torch.zeros(batch, 77, dtype=torch.bool)
    with torch.no_grad():
        got = model.tir_head(visible, ids_restore, text, padding)
    torch.testing.assert_close(got, reference_sen_decoder(decoder, visible, text, ids_restore), atol=1e-5, rtol=0)


def test_open_clip_checkpoint_needs_and_uses_the_architecture(tmp_path, tiny_encoder) -> None:
    path = tmp_path / "tiny.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in tiny_encoder.clip.state_dict().items()}}, path)
    with pytest.raises(ValueError, match=r"format open_clip needs the architecture name \(model_name / --model\)"):
        convert_model(path, format="open_clip")
    model = convert_model(path, format="open_clip", model_name="uit-tiny", image_size=(96, 32))
    images = torch.randn(2, 3, 96, 32)
    ids = tiny_encoder.tokenize(CAPTIONS[:2])
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.encode_image(images), tiny_encoder.encode_image(images))
        torch.testing.assert_close(model.encoder.encode_text(ids), tiny_encoder.encode_text(ids))
