"""UITModel composes the losses; a tiny model can overfit one batch."""

from __future__ import annotations

import pytest
import torch

from uit_reid import TIRHead, UITModel


def _batch(encoder, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    colours = ["red", "blue", "green", "black"]
    captions = [f"a person in a {colours[i // 2]} shirt, number {i}" for i in range(8)]
    return {
        "images": torch.randn(8, 3, 96, 32, generator=gen),
        "text_ids": encoder.tokenize(captions),
        "pids": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
        "image_ids": torch.arange(8),
    }


def _tiny_head(encoder) -> TIRHead:
    return TIRHead(encoder.embed_dim, encoder.grid_size, encoder.patch_size, width=64, depth=1, heads=4)


def test_forward_returns_each_enabled_loss_and_the_weighted_total(tiny_encoder_factory) -> None:
    enc = tiny_encoder_factory()
    model = UITModel(enc, num_classes=4, tir_head=_tiny_head(enc), loss_weights={"itc": 0.5})
    out = model(_batch(enc))
    assert set(out) == {"sdm", "id", "cmt", "tir", "itc", "loss"}
    weights = model.loss_weights
    total = sum(weights[k] * out[k] for k in ("sdm", "id", "cmt", "tir", "itc"))
    assert torch.allclose(out["loss"], total)
    assert weights == {"sdm": 1.0, "id": 1.0, "tir": 10.0, "cmt": 10.0, "itc": 0.5}


def test_disabled_losses_are_not_computed(tiny_encoder_factory) -> None:
    enc = tiny_encoder_factory()
    model = UITModel(enc, num_classes=0, tir_head=False, loss_weights={"cmt": 0.0})
    out = model(_batch(enc))
    assert set(out) == {"sdm", "loss"}
    assert model.classifier is None and model.tir_head is None


def test_bad_configuration_is_named(tiny_encoder_factory) -> None:
    enc = tiny_encoder_factory()
    with pytest.raises(ValueError, match="'triplet'"):
        UITModel(enc, num_classes=4, tir_head=False, loss_weights={"triplet": 1.0})
    with pytest.raises(ValueError, match="do not match"):
        UITModel(enc, num_classes=4, tir_head=TIRHead(128, (24, 8), 16, width=64, depth=1, heads=4))


def test_classifier_init_follows_uit() -> None:
    from uit_reid import CLIPDualEncoder

    torch.manual_seed(0)
    enc = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=(96, 32))
    model = UITModel(enc, num_classes=500, tir_head=False)
    w = model.classifier.weight.detach()
    assert torch.count_nonzero(model.classifier.bias) == 0
    assert 0.0008 < float(w.std()) < 0.0012


def test_tiny_model_overfits_one_batch(tiny_encoder_factory) -> None:
    enc = tiny_encoder_factory(seed=1)
    model = UITModel(enc, num_classes=4, tir_head=_tiny_head(enc))
    batch = _batch(enc)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    history = []
    for _ in range(30):
        out = model(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append(out["loss"].item())
    assert all(torch.isfinite(torch.tensor(history)))
    assert min(history[-5:]) < history[0] / 2


def test_inference_features_are_normalised_and_skip_tir(tiny_encoder_factory) -> None:
    enc = tiny_encoder_factory()
    model = UITModel(enc, num_classes=4, tir_head=_tiny_head(enc)).eval()
    calls: list[str] = []
    model.tir_head.register_forward_hook(lambda *_: calls.append("tir_head"))
    masked_forward = enc.encode_masked_image
    enc.encode_masked_image = lambda *a, **k: calls.append("masked") or masked_forward(*a, **k)
    batch = _batch(enc)
    with torch.no_grad():
        v = model.encode_image(batch["images"], normalize=True)
        t = model.encode_text(batch["text_ids"], normalize=True)
    assert calls == []  # retrieval features never run the masked forward or the TIR decoder
    assert torch.allclose(v.norm(dim=-1), torch.ones(8), atol=1e-5)
    assert torch.allclose(t.norm(dim=-1), torch.ones(8), atol=1e-5)
    assert torch.allclose(v, torch.nn.functional.normalize(enc.encode_image(batch["images"]), dim=-1), atol=1e-6)
    assert not v.requires_grad
    model.train()(batch)  # the training forward does use both: the hooks see it
    assert calls == ["masked", "tir_head"]


def test_feature_calls_follow_open_clip(tiny_encoder_factory) -> None:
    """``encode_image``/``encode_text``: the raw tower's features (gradients flow), or exactly the tower's
    features through ``F.normalize`` with ``normalize=True``; the old plural names say what replaced them."""
    enc = tiny_encoder_factory()
    model = UITModel(enc, num_classes=0, tir_head=False).eval()
    batch = _batch(enc)
    assert model.encode_image(batch["images"]).requires_grad and model.encode_text(batch["text_ids"]).requires_grad
    with torch.no_grad():
        raw_v, raw_t = model.encode_image(batch["images"]), model.encode_text(batch["text_ids"])
        v = model.encode_image(batch["images"], normalize=True)
        t = model.encode_text(batch["text_ids"], normalize=True)
        tower_v = enc.encode_image(batch["images"])
        tower_t = enc.encode_text(enc.trim_padding(batch["text_ids"]))
    assert torch.equal(raw_v, tower_v) and torch.equal(raw_t, tower_t)
    assert torch.equal(v, torch.nn.functional.normalize(tower_v.float(), dim=-1))
    assert torch.equal(t, torch.nn.functional.normalize(tower_t.float(), dim=-1))
    for old, new in (("encode_images", "encode_image"), ("encode_texts", "encode_text")):
        with pytest.raises(AttributeError, match=rf"UITModel.{old} is now {new}\(.*normalize=True\), called under torch.no_grad\(\)"):
            getattr(model, old)
    with pytest.raises(AttributeError, match="has no attribute 'nonsense'"):
        model.nonsense  # noqa: B018
    with pytest.raises(TypeError, match=r"^UITModel\(tir=...\) is now UITModel\(tir_head=...\)$"):
        UITModel(enc, num_classes=0, tir=False)


def test_one_encode_convention_on_model_and_encoder(tiny_encoder_factory) -> None:
    """open_clip's default (``normalize=False``) on every encode call of the model and the encoder, with the
    same keyword on both; ``encode_captions`` is ``encode_text`` of the tokenized captions, as it is."""
    import inspect

    import open_clip

    enc = tiny_encoder_factory()
    model = UITModel(enc, num_classes=0, tir_head=False).eval()
    want = inspect.signature(open_clip.CLIP.encode_image).parameters["normalize"].default
    for owner, name in [(model, "encode_image"), (model, "encode_text"), (model, "encode_captions"),
                        (enc, "encode_image"), (enc, "encode_text")]:
        assert inspect.signature(getattr(owner, name)).parameters["normalize"].default is want is False, name
    batch = _batch(enc)
    captions = ["a man in a red coat", "a woman with a black bag"]
    with torch.no_grad():
        assert torch.equal(model.encode_captions(captions), model.encode_text(enc.tokenize(captions)))
        assert torch.equal(model.encode_captions(captions, normalize=True),
                           model.encode_text(enc.tokenize(captions), normalize=True))
        for call, inputs in [(enc.encode_image, batch["images"]), (enc.encode_text, batch["text_ids"])]:
            raw, raw_tokens = call(inputs, return_tokens=True)
            unit, unit_tokens = call(inputs, normalize=True, return_tokens=True)
            assert torch.equal(unit, torch.nn.functional.normalize(raw.float(), dim=-1))
            assert torch.equal(unit_tokens, raw_tokens)  # tokens are never normalised
            assert torch.equal(call(inputs, normalize=True), unit)


def test_tir_weight_zero_skips_the_head(tiny_encoder_factory) -> None:
    enc = tiny_encoder_factory()
    model = UITModel(enc, num_classes=4, tir_head=_tiny_head(enc), loss_weights={"tir": 0.0})
    calls: list[int] = []
    model.tir_head.register_forward_hook(lambda *_: calls.append(1))
    out = model(_batch(enc))
    assert "tir" not in out and calls == []
    out["loss"].backward()
    assert all(p.grad is None for p in model.tir_head.parameters())
    assert any(p.grad is not None for p in model.encoder.parameters())


def test_training_resize_travels_with_the_model(tiny_encoder, tmp_path) -> None:
    """A model records the resize it was trained with; a saved and reloaded model keeps it, and
    evaluation resizes with it unless told otherwise."""
    model = UITModel(tiny_encoder, num_classes=0, tir_head=False, interpolation="bilinear")
    assert model.config()["interpolation"] == "bilinear"
    again = UITModel.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert again.interpolation == "bilinear"
    with pytest.raises(ValueError, match=r"interpolation must be one of \['bilinear', 'bicubic'\], got 'nearest'"):
        UITModel(tiny_encoder, num_classes=0, tir_head=False, interpolation="nearest")
