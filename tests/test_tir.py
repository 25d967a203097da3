"""TIR pieces: patch layout, masking, grayscale, the decoder head and the masked-only loss."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid.augment import CLIP_MEAN, CLIP_STD
from uit_reid.tir import (
    TIRHead,
    patchify,
    random_masking,
    sincos_2d_position_embedding,
    tir_loss,
    to_grayscale,
    unpatchify,
)


@pytest.mark.parametrize(("size", "patch"), [((384, 128), 16), ((96, 32), 8), ((128, 48), (16, 8))])
def test_patchify_round_trip_and_grid_order(size, patch) -> None:
    images = torch.randn(2, 3, *size)
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    grid = (size[0] // ph, size[1] // pw)
    patches = patchify(images, patch)
    assert patches.shape == (2, grid[0] * grid[1], ph * pw * 3)
    assert torch.equal(unpatchify(patches, grid, patch), images)
    # patch n is the pixel block at row n // gw, column n % gw, laid out (ph, pw, C)
    n = grid[1] + 1
    r, c = divmod(n, grid[1])
    block = images[1, :, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[1, n], block)


def test_patchify_rejects_sizes_off_the_patch_grid() -> None:
    with pytest.raises(ValueError, match="not a multiple"):
        patchify(torch.randn(1, 3, 100, 32), 16)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(2, 200), st.floats(0.0, 0.95), st.integers(0, 10_000))
def test_random_masking_keeps_the_expected_count(batch, tokens, ratio, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    ids_keep, ids_restore, mask = random_masking(batch, tokens, ratio, generator=gen)
    n_keep = max(1, round(tokens * (1 - ratio)))
    assert ids_keep.shape == (batch, n_keep)
    assert (mask.sum(dim=1) == tokens - n_keep).all()
    for b in range(batch):
        assert sorted(ids_restore[b].tolist()) == list(range(tokens))
        assert not mask[b, ids_keep[b]].any()


def test_grayscale_uses_the_luma_weights() -> None:
    torch.manual_seed(0)
    raw = torch.rand(2, 3, 8, 4)
    gray = to_grayscale(raw)
    want = 0.2989 * raw[:, 0] + 0.5870 * raw[:, 1] + 0.1140 * raw[:, 2]
    for ch in range(3):
        assert torch.allclose(gray[:, ch], want, atol=1e-6)
    # normalised input: de-normalising the output gives three equal channels
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    out = to_grayscale((raw - mean) / std, CLIP_MEAN, CLIP_STD) * std + mean
    for ch in range(3):
        assert torch.allclose(out[:, ch], want, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(2, 30))
def test_tir_loss_ignores_visible_patches(seed, batch, patches) -> None:
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(batch, patches, 12, generator=gen)
    target = torch.randn(batch, patches, 12, generator=gen)
    mask = torch.rand(batch, patches, generator=gen) < 0.6
    mask[0, 0] = True
    base = tir_loss(pred, target, mask)
    changed = torch.where(mask.unsqueeze(-1), pred, pred + 100 * torch.randn_like(pred))
    assert torch.allclose(tir_loss(changed, target, mask), base)
    want = ((pred - target) ** 2).mean(-1)[mask].mean()
    assert torch.allclose(base, want, atol=1e-6)


def test_sincos_positions_are_distinct_and_cls_is_zero() -> None:
    pos = sincos_2d_position_embedding(64, (24, 8))
    assert pos.shape == (1 + 24 * 8, 64)
    assert torch.count_nonzero(pos[0]) == 0
    assert torch.unique(pos[1:], dim=0).shape[0] == 24 * 8


def test_tir_head_shapes_and_padding_is_ignored() -> None:
    torch.manual_seed(0)
    head = TIRHead(32, grid_size=(6, 4), patch_size=(4, 2), width=32, depth=1, heads=4).eval()
    _, ids_restore, _ = random_masking(2, 24, 0.7)
    visible = torch.randn(2, 1 + 7, 32)
    text = torch.randn(2, 10, 32)
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[:, 6:] = True
    out = head(visible, ids_restore, text, padding)
    assert out.shape == (2, 24, 4 * 2 * 3)
    noisy = text.clone()
    noisy[:, 6:] += 50 * torch.randn(2, 4, 32)
    assert torch.allclose(head(visible, ids_restore, noisy, padding), out, atol=1e-5)
    # ...while the words themselves matter
    assert not torch.allclose(head(visible, ids_restore, noisy, None), out, atol=1e-3)


def test_tir_head_rejects_a_foreign_grid() -> None:
    head = TIRHead(32, grid_size=(6, 4), patch_size=4, width=32, depth=1, heads=4)
    _, ids_restore, _ = random_masking(1, 30, 0.5)
    with pytest.raises(ValueError, match="expects 24"):
        head(torch.randn(1, 16, 32), ids_restore, torch.randn(1, 5, 32))
