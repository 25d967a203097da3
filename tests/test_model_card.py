"""The model card `save_pretrained` writes: what the folder holds, where it came from, how it scored,
and what it must not be used for."""

from __future__ import annotations

import yaml

from uit_reid import UITModel, __version__
from uit_reid.model_card import ModelCardInfo, render_model_card
from uit_reid.tables import metrics_table


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card[4 : card.index("\n---\n", 4)])


def test_card_states_architecture_origin_metrics_and_uses(tiny_encoder, tmp_path) -> None:
    model = UITModel(tiny_encoder, num_classes=11, tir_head=True)
    info = ModelCardInfo(training_data="CUHK-PEDES train split", training_config={"lr": 1e-5, "epochs": 60},
                         metrics={"test": {"R1": 75.004, "R5": 90.0, "R10": 94.1, "mAP": 67.23, "mINP": 50.5}})
    model.save_pretrained(tmp_path, card=info)
    card = (tmp_path / "README.md").read_text()
    assert _front_matter(card)["library_name"] == "uit_reid"
    assert f"Written by `uit_reid` {__version__}" in card
    assert "- Encoder: `uit-tiny` (open_clip CLIP dual encoder), input 96x32 pixels" in card
    assert "Identity classifier over 11 training identities" in card
    assert "- Training data: CUHK-PEDES train split" in card and '"epochs": 60' in card
    assert "| test | 75.00 | 90.00 | 94.10 | 67.23 | 50.50 |" in card
    assert metrics_table(info.metrics) in card  # the one table the CLI prints too
    for heading in ("## Intended use", "## Limitations", "## Prohibited uses"):
        assert heading in card
    assert "no covert surveillance" in card


def test_card_without_information_says_so(tiny_encoder) -> None:
    card = render_model_card(UITModel(tiny_encoder, num_classes=0, tir_head=False).config())
    assert "- Training data: not recorded" in card and "Not measured for this folder." in card
    assert "Identity classifier" not in card and "restoration head" not in card


def test_model_card_attribute_is_the_default(tiny_encoder, tmp_path) -> None:
    model = UITModel(tiny_encoder, num_classes=0, tir_head=False)
    model.model_card = ModelCardInfo(source="`best.pth` (irra layout)")
    model.save_pretrained(tmp_path)
    assert "- Converted from: `best.pth` (irra layout)" in (tmp_path / "README.md").read_text()
