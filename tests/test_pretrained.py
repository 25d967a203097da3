"""The weights shipped in the package: loaded by tag offline, checksum-verified, and scoring what the card says."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

import uit_reid.pretrained as shipped
from uit_reid import CLIPDualEncoder, TIRHead
from uit_reid.data import load_dataset, make_synthetic
from uit_reid.encoders import load_state_dict_file
from uit_reid.evaluation import evaluate_binding, evaluate_text_use
from uit_reid.factory import build_model, save_tir_head
from uit_reid.io import file_sha256
from uit_reid.train import load_config

ENTRY = shipped.SHIPPED[("uit-tiny", "synthetic")]
CARD = shipped.SHIPPED_DIR / "uit-tiny-synthetic.md"


def test_shipped_file_is_small_fp16_and_matches_its_record() -> None:
    path = shipped.SHIPPED_DIR / ENTRY.file
    assert path.stat().st_size <= 20 * 2**20
    assert file_sha256(path) == ENTRY.sha256
    state = load_state_dict_file(path)
    assert {v.dtype for v in state.values()} == {torch.float16}
    assert state["positional_embedding"].shape[0] == 77  # any context length up to CLIP's loads
    assert ENTRY.sha256 in CARD.read_text()  # the card names the file it describes


def test_tag_loads_the_shipped_weights_offline() -> None:
    enc = CLIPDualEncoder.from_open_clip("uit-tiny", pretrained="synthetic", image_size=(64, 32), context_length=52)
    state = load_state_dict_file(shipped.SHIPPED_DIR / ENTRY.file)
    own = enc.clip.state_dict()
    assert torch.equal(own["visual.proj"], state["visual.proj"].float())
    assert torch.equal(own["positional_embedding"], state["positional_embedding"][:52].float())
    # the default input size resizes the position grid, as for any open_clip file
    assert CLIPDualEncoder.from_open_clip("uit-tiny", pretrained="synthetic").image_size == (384, 128)


def test_config_tag_builds_the_same_encoder() -> None:
    demo = load_config("demo_uit")
    assert demo.model.pretrained == "synthetic"
    model = build_model(demo.model, demo.loss, num_classes=3)
    direct = CLIPDualEncoder.from_open_clip("uit-tiny", pretrained="synthetic", image_size=(64, 32), context_length=52)
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.clip.state_dict().values(), direct.clip.state_dict().values()))


def test_unknown_tag_is_named() -> None:
    with pytest.raises(ValueError, match=r"^unknown pretrained tag 'openai' for uit-tiny; shipped tags: \['synthetic', 'synthetic-bag'\]$"):
        CLIPDualEncoder.from_open_clip("uit-tiny", pretrained="openai")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_altered_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    copy = tmp_path / ENTRY.file
    shutil.copyfile(shipped.SHIPPED_DIR / ENTRY.file, copy)
    data = bytearray(copy.read_bytes())
    if damage == "flip":
        data[-100] ^= 0x01  # one bit of one weight: still a valid safetensors file
        copy.write_bytes(bytes(data))
    else:
        copy.write_bytes(bytes(data[: len(data) // 2]))
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path)
    message = rf"^{re.escape(str(copy))}: SHA-256 [0-9a-f]{{16}}\.\.\. differs from the shipped {ENTRY.sha256[:16]}\.\.\.; "
    with pytest.raises(ValueError, match=message):
        CLIPDualEncoder.from_open_clip("uit-tiny", pretrained="synthetic")
    with pytest.raises(ValueError, match=message):  # the config path goes through the same check
        demo = load_config("demo_uit")
        build_model(demo.model, demo.loss, num_classes=3)
    copy.unlink()
    with pytest.raises(ValueError, match=r"shipped weights for uit-tiny pretrained='synthetic' are missing"):
        CLIPDualEncoder.from_open_clip("uit-tiny", pretrained="synthetic")


def _card_figures() -> dict[str, float]:
    """The zero-shot row for the fixed check split, as the model card documents it."""
    row = re.search(r"^\| fixed check split[^|]*\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", CARD.read_text(), re.M)
    assert row, f"{CARD} has no 'fixed check split' row"
    return dict(zip(("R1", "R5", "mAP"), map(float, row.groups())))


def test_shipped_weights_reproduce_the_documented_zero_shot_figures(tmp_path: Path, independent_metrics) -> None:
    make_synthetic(tmp_path, **shipped.CHECK_SPLIT, progress=False)
    split = load_dataset(tmp_path).test
    demo = load_config("demo_uit")
    model = build_model(demo.model, demo.loss, num_classes=1, interpolation=demo.data.interpolation).eval()
    measured = independent_metrics(model, split, interpolation=demo.data.interpolation)
    documented = _card_figures()
    for key, value in documented.items():
        assert measured[key] == pytest.approx(value, abs=0.5), key
    # the figures say something: far above chance on 60 identities (R1 chance ~1.7%)
    assert documented["R1"] > 5 * 100 / 60


# ---------------------------------------------------------------------------------------------------
# The TIR decoder shipped beside the weights (model.tir_pretrained = "synthetic" in the demo config)
TIR_ENTRY = shipped.SHIPPED_TIR_HEADS[("uit-tiny", "synthetic")]


def test_shipped_decoder_matches_its_record_and_loads_into_the_demo_model() -> None:
    path = shipped.SHIPPED_DIR / TIR_ENTRY.file
    assert path.stat().st_size <= 2 * 2**20
    assert file_sha256(path) == TIR_ENTRY.sha256
    assert TIR_ENTRY.sha256 in CARD.read_text()
    demo = load_config("demo_uit")
    assert demo.model.tir_pretrained == "synthetic"
    model = build_model(demo.model, demo.loss, num_classes=1)
    state = load_state_dict_file(path)
    own = model.tir_head.state_dict()
    assert state.keys() == own.keys() and all(torch.equal(own[k], v.float()) for k, v in state.items())


def test_shipped_decoder_reads_the_caption_and_a_fresh_one_does_not(tmp_path: Path) -> None:
    """On people it never saw (the demo's world, another seed), before any fine-tuning."""
    make_synthetic(tmp_path, num_ids=80, images_per_id=2, seed=7, num_val_ids=0, num_test_ids=80, progress=False)
    split = load_dataset(tmp_path).test
    demo = load_config("demo_uit")
    model = build_model(demo.model, demo.loss, num_classes=1, interpolation=demo.data.interpolation).eval()
    reads = evaluate_text_use(model, split)
    assert reads["text_use_n"] >= 100
    assert reads["text_use"] >= 80 and reads["text_use_empty"] >= 80 and reads["text_use_other"] >= 80, reads
    fresh_cfg = demo.override(['model.tir_pretrained="none"']).model
    fresh = build_model(fresh_cfg, demo.loss, num_classes=1, interpolation=demo.data.interpolation).eval()
    assert evaluate_text_use(fresh, split)["text_use"] < 70


def test_a_decoder_file_of_another_shape_or_an_unknown_tag_is_refused(tmp_path: Path) -> None:
    demo = load_config("demo_uit")
    other = TIRHead(128, (8, 4), 8, width=64, depth=1, heads=4)
    save_tir_head(other, tmp_path / "narrow.safetensors")
    cfg = demo.override([f'model.tir_pretrained="{tmp_path / "narrow.safetensors"}"']).model
    with pytest.raises(ValueError, match=r"narrow\.safetensors: a TIR decoder trained as \{.*'width': 64.*\}; "
                                         r"this model's decoder is \{.*'width': 128"):
        build_model(cfg, demo.loss, num_classes=1)
    cfg = demo.override(['model.tir_pretrained="openai"']).model
    with pytest.raises(ValueError, match=r"^model.tir_pretrained: 'openai' is neither a TIR decoder shipped for "
                                         r"uit-tiny \(\['synthetic'\]\) nor a file$"):
        build_model(cfg, demo.loss, num_classes=1)


# ---------------------------------------------------------------------------------------------------
# The second shipped checkpoint: bag-of-words captions, so colours are read but not bound
BAG = shipped.SHIPPED[("uit-tiny", "synthetic-bag")]
BAG_CARD = shipped.SHIPPED_DIR / "uit-tiny-synthetic-bag.md"


def test_bag_file_is_small_fp16_and_matches_its_record() -> None:
    path = shipped.SHIPPED_DIR / BAG.file
    assert path.stat().st_size <= 20 * 2**20
    assert file_sha256(path) == BAG.sha256 and BAG.sha256 in BAG_CARD.read_text()
    state = load_state_dict_file(path)
    assert {v.dtype for v in state.values()} == {torch.float16}
    assert BAG.sha256 != ENTRY.sha256


def test_bag_weights_read_the_colours_but_do_not_bind_them(tmp_path: Path) -> None:
    """The card's check-split figures, measured again: presence high, binding near chance."""
    make_synthetic(tmp_path, **shipped.CHECK_SPLIT, progress=False)
    split = load_dataset(tmp_path).test
    demo = load_config("demo_uit").override(['model.pretrained="synthetic-bag"', "model.tir_head=false"])
    model = build_model(demo.model, demo.loss, num_classes=1, interpolation=demo.data.interpolation).eval()
    got = evaluate_binding(model, split)
    card = BAG_CARD.read_text()
    assert got["binding"] <= 65 and got["presence"] >= 95, got
    assert f"binding {got['binding']:.2f} and presence {got['presence']:.2f}" in card, got
