"""TIR pieces: patch layout, masking, grayscale, the decoder head and the masked-only loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid.images import CLIP_MEAN, CLIP_STD
from uit_reid.tir import (
    SEN_TIR_KEY_MAP,
    SEN_TIR_UNUSED_PREFIXES,
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


def test_sincos_positions_follow_mae_channel_order() -> None:
    # MAE / SEN (model/pos_embed.py): meshgrid(w, h), so the first half of the channels encodes the
    # column and the second half the row; each half is [sin(p w_k), cos(p w_k)], w_k = 1e4^(-k/(D/4)).
    dim, (gh, gw) = 512, (24, 8)
    pos = sincos_2d_position_embedding(dim, (gh, gw))
    for r, c in [(0, 3), (5, 0), (23, 7), (10, 2)]:
        row = pos[1 + r * gw + c]
        assert row[0].item() == pytest.approx(math.sin(c), abs=1e-6)  # channel 0: sin(column * 1)
        assert row[128].item() == pytest.approx(math.cos(c), abs=1e-6)  # channel D/4: cos(column)
        assert row[256].item() == pytest.approx(math.sin(r), abs=1e-6)  # channel D/2: sin(row)
        assert row[384].item() == pytest.approx(math.cos(r), abs=1e-6)
        assert row[1].item() == pytest.approx(math.sin(c * 10000 ** (-1 / 128)), abs=1e-6)


def test_residual_tir_head_shapes_and_padding_is_ignored() -> None:
    torch.manual_seed(0)
    head = TIRHead(32, grid_size=(6, 4), patch_size=(4, 2), width=32, depth=1, heads=4, layout="residual").eval()
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


# --------------------------------------------------------------------------- the authors' decoder
# SEN's TIR decoder state dict for ViT-B/16 at 384x128 (model/build.py, 'mae' branch): names and
# shapes written out from its constructor (embed_dim 512, cmt_depth 4, heads 512 // 64, patch 16).
def _sen_block(i: int) -> dict[str, tuple[int, ...]]:
    p = f"cross_modal_transformer_mae.resblocks.{i}."
    return {
        p + "attn.in_proj_weight": (1536, 512), p + "attn.in_proj_bias": (1536,),
        p + "attn.out_proj.weight": (512, 512), p + "attn.out_proj.bias": (512,),
        p + "ln_1.weight": (512,), p + "ln_1.bias": (512,),
        p + "mlp.c_fc.weight": (2048, 512), p + "mlp.c_fc.bias": (2048,),
        p + "mlp.c_proj.weight": (512, 2048), p + "mlp.c_proj.bias": (512,),
        p + "ln_2.weight": (512,), p + "ln_2.bias": (512,),
    }


def _sen_attn(prefix: str) -> dict[str, tuple[int, ...]]:
    return {
        prefix + "in_proj_weight": (1536, 512), prefix + "in_proj_bias": (1536,),
        prefix + "out_proj.weight": (512, 512), prefix + "out_proj.bias": (512,),
    }


SEN_USED = {
    "decoder_embed.weight": (512, 512), "decoder_embed.bias": (512,), "mask_token": (1, 1, 512),
    **{f"norm_{k}.{p}": (512,) for k in (1, 2, 4, 6, 7) for p in ("weight", "bias")},
    **_sen_attn("cross_attn_Text."),
    **{k: v for i in range(4) for k, v in _sen_block(i).items()},
    "decoder_pred.weight": (768, 512), "decoder_pred.bias": (768,),
}
SEN_UNUSED = {
    "decoder_pos_embed": (1, 193, 512),
    **_sen_attn("cross_attn_TextImage."), **_sen_attn("cross_attn_Image."),
    **{f"norm_{k}.{p}": (512,) for k in (3, 5) for p in ("weight", "bias")},
}


def _rename(name: str) -> str:
    for sen, ours in SEN_TIR_KEY_MAP.items():
        if name.startswith(sen):
            return ours + name[len(sen):]
    raise AssertionError(f"{name} is not in SEN_TIR_KEY_MAP")


def test_sen_decoder_loads_by_renaming() -> None:
    head = TIRHead(512, (24, 8), 16)
    own = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert own == {_rename(k): v for k, v in SEN_USED.items()}
    for name in SEN_UNUSED:
        assert name.startswith(SEN_TIR_UNUSED_PREFIXES)
        assert not name.startswith(tuple(SEN_TIR_KEY_MAP))
    gen = torch.Generator().manual_seed(0)
    sen_state = {k: torch.randn(shape, generator=gen) for k, shape in {**SEN_USED, **SEN_UNUSED}.items()}
    renamed = {_rename(k): v for k, v in sen_state.items() if not k.startswith(SEN_TIR_UNUSED_PREFIXES)}
    head.load_state_dict(renamed, strict=True)
    assert torch.equal(head.cross_attn.in_proj_weight, sen_state["cross_attn_Text.in_proj_weight"])
    # SEN's fixed table (built with MAE's get_2d_sincos_pos_embed) is the head's own position buffer
    assert head.pos_embed.shape == SEN_UNUSED["decoder_pos_embed"]


def _sen_reference_forward(state: dict[str, torch.Tensor], visible, ids_restore, text) -> torch.Tensor:
    """SEN's cross_former_mae, written out in plain tensor operations on SEN's parameter names."""

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"], eps=1e-5)

    def mha(q, kv, prefix, heads=8):
        w, b = state[prefix + "in_proj_weight"], state[prefix + "in_proj_bias"]
        d = q.shape[-1]
        qh, kh, vh = (F.linear(t, w[i * d:(i + 1) * d], b[i * d:(i + 1) * d]) for i, t in enumerate((q, kv, kv)))
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(qh) @ split(kh).transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        out = (att @ split(vh)).transpose(1, 2).reshape(q.shape)
        return F.linear(out, state[prefix + "out_proj.weight"], state[prefix + "out_proj.bias"])

    image, text = ln(visible, "norm_1"), ln(text, "norm_2")
    x = F.linear(image, state["decoder_embed.weight"], state["decoder_embed.bias"])
    masks = state["mask_token"].repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    rest = torch.gather(torch.cat([x[:, 1:], masks], 1), 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1], rest], 1) + state["decoder_pos_embed"]
    x = ln(mha(ln(x, "norm_4"), text, "cross_attn_Text."), "norm_6")  # no residual
    for i in range(4):
        p = f"cross_modal_transformer_mae.resblocks.{i}."
        x = x + mha(ln(x, p + "ln_1"), ln(x, p + "ln_1"), p + "attn.")
        h = F.linear(ln(x, p + "ln_2"), state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"])
        x = x + F.linear(h * torch.sigmoid(1.702 * h), state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
    return F.linear(ln(x, "norm_7"), state["decoder_pred.weight"], state["decoder_pred.bias"])[:, 1:]


def test_sen_layout_computes_the_authors_decoder() -> None:
    gen = torch.Generator().manual_seed(1)
    sen_state = {k: 0.05 * torch.randn(shape, generator=gen) for k, shape in SEN_USED.items()}
    for k in sen_state:
        if k.startswith("norm_") and k.endswith(".weight") or ".ln_" in k and k.endswith(".weight"):
            sen_state[k] = 1.0 + sen_state[k]
    head = TIRHead(512, (24, 8), 16).eval()
    head.load_state_dict({_rename(k): v for k, v in sen_state.items()})
    sen_state["decoder_pos_embed"] = head.pos_embed.clone()
    _, ids_restore, _ = random_masking(2, 192, 0.7, generator=gen)
    visible = torch.randn(2, 1 + 58, 512, generator=gen)
    text = torch.randn(2, 77, 512, generator=gen)
    with torch.no_grad():
        want = _sen_reference_forward(sen_state, visible, ids_restore, text)
        got = head(visible, ids_restore, text, torch.ones(2, 77, dtype=torch.bool))  # padding mask unused
    assert got.shape == (2, 192, 768)
    assert torch.allclose(got, want, atol=1e-4)


def test_sen_layout_defaults_match_the_authors_code() -> None:
    head = TIRHead(512, (24, 8), 16)
    assert not head.residual and not head.mask_padding
    assert torch.count_nonzero(head.mask_token) == 0  # never initialised in SEN: stays zero
    blocks = head.decoder.resblocks
    assert len(blocks) == 4 and all(type(b.mlp.gelu).__name__ == "QuickGELU" for b in blocks)
    assert all(b.attn.num_heads == 8 for b in blocks) and head.cross_attn.num_heads == 8
    # CLIP's scaled init (SEN: in_proj std width^-0.5, out_proj std width^-0.5 * (2 depth)^-0.5)
    assert head.cross_attn.in_proj_weight.std().item() == pytest.approx(512**-0.5, rel=0.02)
    assert blocks[0].mlp.c_fc.weight.std().item() == pytest.approx(1024**-0.5, rel=0.02)
    assert blocks[0].attn.out_proj.weight.std().item() == pytest.approx(512**-0.5 * 8**-0.5, rel=0.02)


def test_sen_layout_restores_only_through_the_caption() -> None:
    torch.manual_seed(0)
    _, ids_restore, _ = random_masking(2, 24, 0.5)
    text = torch.randn(2, 1, 32).expand(2, 10, 32)  # one repeated token: attention output is that token's value
    a, b = torch.randn(2, 13, 32), torch.randn(2, 13, 32)
    sen = TIRHead(32, (6, 4), 4, width=32, depth=1, heads=4).eval()
    assert torch.allclose(sen(a, ids_restore, text), sen(b, ids_restore, text), atol=1e-5)
    res = TIRHead(32, (6, 4), 4, width=32, depth=1, heads=4, layout="residual").eval()
    assert not torch.allclose(res(a, ids_restore, text), res(b, ids_restore, text), atol=1e-3)


def test_tir_head_rejects_an_unknown_layout() -> None:
    with pytest.raises(ValueError, match="unknown TIR layout 'mae'; known: \\['residual', 'sen', 'sen_masked'\\]"):
        TIRHead(32, (6, 4), 4, width=32, depth=1, heads=4, layout="mae")
