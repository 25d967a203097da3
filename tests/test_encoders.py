"""CLIPDualEncoder against open_clip itself, checkpoints on disk, masked forward."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import uit_reid
from uit_reid import CLIPDualEncoder
from uit_reid.encoders import resize_position_embedding


def test_pooled_outputs_equal_open_clip(tiny_encoder) -> None:
    images = torch.randn(3, 3, 96, 32)
    ids = tiny_encoder.tokenize(["a man in a blue shirt", "a woman with a red bag", "x"])
    with torch.no_grad():
        v, v_tokens = tiny_encoder.encode_image(images, return_tokens=True)
        t, t_tokens = tiny_encoder.encode_text(ids, return_tokens=True)
        assert torch.allclose(v, tiny_encoder.clip.encode_image(images), atol=1e-6)
        assert torch.allclose(t, tiny_encoder.clip.encode_text(ids), atol=1e-6)
    assert v.shape == (3, 128) and v_tokens.shape == (3, 1 + 12 * 4, 128)
    assert t.shape == (3, 128) and t_tokens.shape == (3, 77, 128)
    # the pooled text feature is the token feature at the EOT position
    eot = ids.argmax(dim=-1)
    assert torch.equal(t, t_tokens[torch.arange(3), eot])
    assert torch.equal(v, v_tokens[:, 0])


_WORDS = ["a", "man", "woman", "in", "red", "blue", "jacket", "jeans", "with", "black", "bag", "walking", "street"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_WORDS), min_size=0, max_size=40).map(" ".join), min_size=1, max_size=6))
def test_trimmed_padding_gives_the_full_length_features(tiny_encoder, captions) -> None:
    """Retrieval drops the padding after the batch's last EOT: the features must not change."""
    ids = tiny_encoder.tokenize(captions)
    trimmed = tiny_encoder.trim_padding(ids)
    longest = int(ids.argmax(dim=-1).max()) + 1  # the EOT of the longest caption, counted independently
    assert trimmed.shape == (len(captions), longest)
    assert torch.equal(trimmed, ids[:, :longest])
    with torch.no_grad():
        full = tiny_encoder.clip.encode_text(ids)  # open_clip itself, all 77 positions
        assert torch.allclose(tiny_encoder.encode_text(trimmed), full, atol=1e-5)


def test_tokenize_marks_padding_after_eot(tiny_encoder) -> None:
    ids = tiny_encoder.tokenize(["a man", "a man in a long grey coat"])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    pad = CLIPDualEncoder.text_padding_mask(ids)
    assert pad[0].tolist().index(True) == 4  # <sot> a man <eot> | pad
    assert not pad[1, : int(ids[1].argmax()) + 1].any()


def test_masked_forward_keeps_exactly_the_expected_tokens(tiny_encoder) -> None:
    images = torch.randn(2, 3, 96, 32)
    out = tiny_encoder.encode_masked_image(images, mask_ratio=0.7)
    n_keep = round(48 * 0.3)
    assert out.tokens.shape == (2, 1 + n_keep, 128)
    assert out.mask.shape == (2, 48) and (out.mask.sum(1) == 48 - n_keep).all()
    # with nothing dropped, the tokens are the full forward's, shuffled
    with torch.no_grad():
        full = tiny_encoder.encode_masked_image(images, mask_ratio=0.0)
        _, tokens = tiny_encoder.encode_image(images, return_tokens=True)
    restored = torch.gather(full.tokens[:, 1:], 1, full.ids_restore.unsqueeze(-1).expand(-1, -1, 128))
    assert torch.allclose(restored, tokens[:, 1:], atol=1e-5)
    assert torch.allclose(full.tokens[:, 0], tokens[:, 0], atol=1e-5)


def test_wrong_image_size_is_an_error(tiny_encoder) -> None:
    with pytest.raises(ValueError, match=r"\(96, 32\)"):
        tiny_encoder.encode_image(torch.randn(1, 3, 64, 32))


def test_non_square_sizes_build(tiny_encoder_factory) -> None:
    enc = tiny_encoder_factory(image_size=(128, 48))
    assert enc.grid_size == (16, 6)
    assert enc.encode_image(torch.randn(1, 3, 128, 48)).shape == (1, 128)


@pytest.mark.slow
def test_vit_b16_checkpoint_at_224_loads_at_384x128(tmp_path) -> None:
    torch.manual_seed(0)
    square = open_clip.create_model("ViT-B-16", pretrained=None)
    state = square.state_dict()
    path = tmp_path / "vit_b16_224.pt"
    torch.save(state, path)
    enc = CLIPDualEncoder.from_open_clip("ViT-B-16", pretrained=str(path), image_size=(384, 128))
    assert enc.grid_size == (24, 8)
    loaded = enc.clip.state_dict()
    pos = loaded["visual.positional_embedding"]
    assert pos.shape == (1 + 24 * 8, 768)
    assert torch.equal(pos, resize_position_embedding(state["visual.positional_embedding"], (24, 8)))
    assert torch.equal(pos[0], state["visual.positional_embedding"][0])
    for key in ("visual.conv1.weight", "token_embedding.weight", "text_projection", "visual.proj"):
        assert torch.equal(loaded[key], state[key])
    with torch.no_grad():
        ids = enc.tokenize(["a person"])
        assert torch.allclose(enc.encode_text(ids), square.encode_text(ids), atol=1e-5)
        image = torch.randn(1, 3, 384, 128)
        assert torch.allclose(enc.encode_image(image), enc.clip.encode_image(image), atol=1e-5)


def test_resize_position_embedding_preserves_a_constant_field() -> None:
    pos = torch.cat([torch.randn(1, 8), torch.full((14 * 14, 8), 0.5)])
    out = resize_position_embedding(pos, (24, 8))
    assert out.shape == (1 + 192, 8)
    assert torch.allclose(out[1:], torch.full((192, 8), 0.5), atol=1e-5)
    with pytest.raises(ValueError, match="cannot infer"):
        resize_position_embedding(torch.randn(1 + 12, 8), (4, 4))


def test_missing_checkpoint_names_the_file(tmp_path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        CLIPDualEncoder.from_open_clip("uit-tiny", pretrained=str(missing), image_size=(96, 32))


def test_foreign_architecture_names_file_and_keys(tmp_path, tiny_encoder_factory) -> None:
    other = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=(96, 32)).clip
    state = other.state_dict()
    state["visual.conv1.weight"] = torch.randn(128, 3, 16, 16)  # another patch size
    state.pop("ln_final.weight")
    state["extra.head.weight"] = torch.randn(2, 2)
    path = tmp_path / "foreign.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="foreign.pt") as err:
        CLIPDualEncoder.from_open_clip("uit-tiny", pretrained=path, image_size=(96, 32))
    message = str(err.value)
    assert "visual.conv1.weight" in message and "ln_final.weight" in message and "extra.head.weight" in message


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Payload()}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        CLIPDualEncoder.from_open_clip("uit-tiny", pretrained=path, image_size=(96, 32))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_own_checkpoint_round_trip(tmp_path, tiny_encoder_factory, suffix) -> None:
    enc = tiny_encoder_factory(seed=3)
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".pt":
        torch.save(enc.state_dict(), path)  # keys prefixed "clip."
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in enc.clip.state_dict().items()}, str(path))
    again = CLIPDualEncoder.from_open_clip("uit-tiny", pretrained=path, image_size=(96, 32))
    for key, value in enc.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert again.fingerprint() == enc.fingerprint()
    assert tiny_encoder_factory(seed=4).fingerprint() != enc.fingerprint()


def test_logit_scale_is_frozen(tiny_encoder) -> None:
    assert not tiny_encoder.clip.logit_scale.requires_grad


def test_activation_follows_the_weights_and_shows_in_the_name() -> None:
    from uit_reid.encoders import resolve_activation

    # OpenAI's ViT-B/16 was trained with QuickGELU (open_clip's registry records it for the tag)
    assert resolve_activation("ViT-B-16", "openai") == "ViT-B-16-quickgelu"
    assert resolve_activation("ViT-B-16-quickgelu", "openai") == "ViT-B-16-quickgelu"
    assert resolve_activation("ViT-B-16", "laion2b_s34b_b88k") == "ViT-B-16"
    # a local file has no record: the name (or an explicit choice) decides
    assert resolve_activation("ViT-B-16") == "ViT-B-16"
    assert resolve_activation("ViT-B-16", None, quick_gelu=True) == "ViT-B-16-quickgelu"
    assert resolve_activation("ViT-B-16-quickgelu", None, quick_gelu=False) == "ViT-B-16"
    with pytest.raises(ValueError, match=r"no QuickGELU variant of open_clip model 'uit-tiny' is registered"):
        resolve_activation("uit-tiny", None, quick_gelu=True)


@pytest.mark.slow
def test_local_openai_style_file_loads_with_quick_gelu_when_asked(tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "clip_vit_b16.pt"
    torch.save(open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).state_dict(), path)
    enc = CLIPDualEncoder.from_open_clip("ViT-B-16", pretrained=str(path), quick_gelu=True)
    assert enc.model_name == "ViT-B-16-quickgelu" and enc.quick_gelu
    assert not CLIPDualEncoder.from_open_clip("ViT-B-16", pretrained=str(path)).quick_gelu


def test_uit_reid_leaves_open_clips_registry_alone(tmp_path) -> None:
    """Importing uit_reid, building, saving and loading ``uit-tiny`` register nothing with open_clip."""
    code = f"""
import open_clip
before = open_clip.list_models()
import uit_reid
from uit_reid import CLIPDualEncoder, UITModel
enc = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=(64, 32), context_length=52)
UITModel(enc, num_classes=0, tir_head=False).save_pretrained({str(tmp_path)!r})
UITModel.from_pretrained({str(tmp_path)!r})
CLIPDualEncoder.from_open_clip("uit-tiny", pretrained="synthetic", image_size=(64, 32))
assert open_clip.list_models() == before, sorted(set(open_clip.list_models()) - set(before))
assert open_clip.get_model_config("uit-tiny") is None
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(uit_reid.__file__).parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def _resample_grid(table: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """An independent bicubic resample of a ``(1 + H*W, C)`` table (CLS first), written here, not imported."""
    grid = table[1:].reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1)])


def _saved(encoder: CLIPDualEncoder, path: Path) -> Path:
    torch.save(encoder.clip.state_dict(), path)
    return path


def test_non_square_position_table_loads_resampled(tmp_path) -> None:
    """A 12x4 source (96x32) loads at 24x8 (grid read from the target's shape) and at 8x4 (grid given)."""
    source = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=(96, 32))
    table = source.clip.visual.positional_embedding.detach()
    path = _saved(source, tmp_path / "nonsquare.pt")
    bigger = CLIPDualEncoder.from_open_clip("uit-tiny", pretrained=path, image_size=(192, 64))
    assert torch.allclose(bigger.clip.visual.positional_embedding, _resample_grid(table, (12, 4), (24, 8)), atol=1e-6)
    other_shape = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=(64, 32))
    with pytest.raises(ValueError, match="nonsquare.pt: cannot infer the grid"):
        other_shape.load_clip_weights(path)
    other_shape.load_clip_weights(path, grid=(12, 4))
    assert torch.allclose(other_shape.clip.visual.positional_embedding, _resample_grid(table, (12, 4), (8, 4)), atol=1e-6)


def test_text_context_77_to_52_and_back(tmp_path) -> None:
    """77 -> 52 keeps the first rows (the causal mask's trained positions); 52 -> 77 resamples linearly."""
    long = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=(64, 32), context_length=77)
    short = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=(64, 32), context_length=52)
    to52 = CLIPDualEncoder.from_open_clip(
        "uit-tiny", pretrained=_saved(long, tmp_path / "c77.pt"), image_size=(64, 32), context_length=52
    )
    assert torch.equal(to52.clip.positional_embedding, long.clip.positional_embedding[:52])
    to77 = CLIPDualEncoder.from_open_clip(
        "uit-tiny", pretrained=_saved(short, tmp_path / "c52.pt"), image_size=(64, 32), context_length=77
    )
    table = short.clip.positional_embedding.detach().T.unsqueeze(0)
    expected = F.interpolate(table, size=77, mode="linear", align_corners=False)[0].T
    assert torch.allclose(to77.clip.positional_embedding, expected, atol=1e-6)
