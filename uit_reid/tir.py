"""Text-guided image restoration (TIR).

The image is turned to grayscale, 70% of its patch tokens are dropped, and a light decoder must
restore the RGB pixels of the dropped patches from the visible ones and the caption's tokens.
Colour is only available through the text, so the restoration ties words ("red jacket") to image
regions. Used at training time only; inference pays nothing for it.

Pieces, each usable alone: `to_grayscale`, `patchify` / `unpatchify`,
`random_masking`, `TIRHead`, `tir_target`, `tir_loss` and `tir_errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from open_clip.transformer import LayerNorm, QuickGELU, Transformer
from torch import nn

from uit_reid import recipe

__all__ = [
    "SEN_TIR_KEY_MAP",
    "SEN_TIR_UNUSED_PREFIXES",
    "TIR_GRAYSCALES",
    "TIR_LAYOUTS",
    "TIR_TARGETS",
    "TIRHead",
    "patchify",
    "random_masking",
    "sincos_2d_position_embedding",
    "tir_errors",
    "tir_loss",
    "tir_target",
    "to_grayscale",
    "unpatchify",
]

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def to_grayscale(
    images: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """Weighted grayscale ``0.2989 R + 0.5870 G + 0.1140 B`` repeated to 3 channels.

    When ``mean``/``std`` are given the input is taken as normalised: it is de-normalised, converted
    and normalised again with the same statistics, so the result is what normalising a grayscale
    picture would give.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    weights = images.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    if mean is None or std is None:
        gray = (images * weights).sum(dim=1, keepdim=True)
        return gray.expand(-1, 3, -1, -1).contiguous()
    mean_t = images.new_tensor(mean).view(1, 3, 1, 1)
    std_t = images.new_tensor(std).view(1, 3, 1, 1)
    gray = ((images * std_t + mean_t) * weights).sum(dim=1, keepdim=True)
    return (gray - mean_t) / std_t


def patchify(images: torch.Tensor, patch_size: int | Sequence[int]) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, N, ph*pw*C)``, patches in the ViT's row-major grid order."""
    ph, pw = _pair(patch_size)
    b, c, h, w = images.shape
    if h % ph or w % pw:
        raise ValueError(f"image size {(h, w)} is not a multiple of patch size {(ph, pw)}")
    gh, gw = h // ph, w // pw
    x = images.reshape(b, c, gh, ph, gw, pw)
    x = x.permute(0, 2, 4, 3, 5, 1)  # b, gh, gw, ph, pw, c
    return x.reshape(b, gh * gw, ph * pw * c)


def unpatchify(
    patches: torch.Tensor, grid_size: Sequence[int], patch_size: int | Sequence[int], channels: int = 3
) -> torch.Tensor:
    """Inverse of `patchify`: ``(B, N, ph*pw*C)`` → ``(B, C, gh*ph, gw*pw)``."""
    ph, pw = _pair(patch_size)
    gh, gw = _pair(grid_size)
    b, n, d = patches.shape
    if n != gh * gw or d != ph * pw * channels:
        raise ValueError(
            f"patches {tuple(patches.shape)} do not fit grid {(gh, gw)}, patch {(ph, pw)}, {channels} channels"
        )
    x = patches.reshape(b, gh, gw, ph, pw, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, gh * ph, gw * pw)


def random_masking(
    batch: int,
    num_tokens: int,
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random choice of tokens to keep (MAE-style).

    Returns ``ids_keep (B, n_keep)``, ``ids_restore (B, N)`` (puts ``[kept, dropped]`` back into
    token order) and ``mask (B, N)`` bool, True where dropped. ``n_keep = round(N (1 - ratio))``,
    at least 1.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n_keep = max(1, int(round(num_tokens * (1.0 - mask_ratio))))
    noise = torch.rand(batch, num_tokens, device=device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(batch, num_tokens, dtype=torch.bool, device=device)
    mask[:, :n_keep] = False
    return ids_shuffle[:, :n_keep], ids_restore, torch.gather(mask, 1, ids_restore)


def sincos_2d_position_embedding(dim: int, grid_size: Sequence[int], cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions ``(cls + gh*gw, dim)`` in MAE's channel order: the first
    half of the channels encodes the column, the second half the row; the CLS slot is zeros.

    Each half is ``[sin(p * w_k), cos(p * w_k)]`` with ``w_k = 10000^(-k / (dim/4))``; rows are
    patches in the ViT's row-major order. This is the table the authors' TIR decoder uses.
    """
    gh, gw = _pair(grid_size)
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    emb = torch.cat([encode(cols), encode(rows)], dim=1).float()
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb


TIR_LAYOUTS: dict[str, dict[str, bool]] = {
    "sen": {"residual": False, "mask_padding": False},
    "residual": {"residual": True, "mask_padding": True},
    "sen_masked": {"residual": False, "mask_padding": True},
}
"""Decoder variants by name. ``"sen"`` is the authors' released decoder (the paper configs):
restoration must pass through the caption. ``"residual"`` adds the image tokens back after the
cross-attention and hides caption padding from it (this library's earlier variant). ``"sen_masked"`` is
the authors' decoder with caption padding (the positions after the end-of-text token) hidden from the
cross-attention: restoration still passes through the caption, but only through its words."""

TIR_TARGETS: tuple[str, ...] = ("pixels", "patch_norm")
"""What the decoder restores (`tir_target`): ``"pixels"``, the normalised RGB pixels of each patch (the
authors' code), or ``"patch_norm"``, each patch's pixels standardised by the patch's own mean and
standard deviation (MAE's ``norm_pix_loss``). The hidden patch's brightness, which no caption carries,
is most of the ``"pixels"`` error; ``"patch_norm"`` removes it, leaving colour and texture."""

TIR_GRAYSCALES: tuple[str, ...] = ("normalised", "pixels")
"""How `UITModel` forms TIR's grayscale input from a normalised batch (`to_grayscale`): ``"normalised"``
(the authors' code) weighs the normalised channels; ``"pixels"`` converts the de-normalised pixels."""

SEN_TIR_KEY_MAP: dict[str, str] = {
    "norm_1.": "image_norm.",
    "norm_2.": "text_norm.",
    "decoder_embed.": "embed.",
    "mask_token": "mask_token",
    "norm_4.": "query_norm.",
    "cross_attn_Text.": "cross_attn.",
    "norm_6.": "attn_norm.",
    "cross_modal_transformer_mae.": "decoder.",
    "norm_7.": "norm.",
    "decoder_pred.": "pred.",
}
"""Name prefixes of the TIR decoder in a SEN checkpoint (``model/build.py``) → `TIRHead` names.

Loading a SEN decoder into ``TIRHead(512, (24, 8), 16, layout="sen")`` is a rename of these
prefixes (the tensors keep their shapes; ``cross_attn`` and every ``decoder.resblocks.N.attn``
are `torch.nn.MultiheadAttention` with the same ``in_proj_weight``/``in_proj_bias``/``out_proj``
layout). In SEN's order of use: ``norm_1`` normalises the visible image tokens, ``norm_2`` the
caption tokens, ``norm_4`` the cross-attention's queries, ``norm_6`` the attention output and
``norm_7`` the decoder output."""

SEN_TIR_UNUSED_PREFIXES: tuple[str, ...] = (
    "decoder_pos_embed",
    "cross_attn_TextImage.",
    "cross_attn_Image.",
    "norm_3.",
    "norm_5.",
)
"""SEN decoder entries with no counterpart here: ``decoder_pos_embed`` is the fixed sin-cos table
(rebuilt, not stored), the others are built in SEN's model but never called in its forward pass."""


class TIRHead(nn.Module):
    """Decoder that restores masked RGB patches from visible grayscale tokens and the caption.

    Pipeline (the authors' decoder, ``layout="sen"``): LayerNorm on the visible image tokens and
    another on the caption tokens; Linear embedding of the image tokens; a zero-initialised mask
    token at dropped positions; fixed 2-D sin-cos positions (zero for CLS); one cross-attention
    (queries: LayerNorm of the image tokens; keys/values: every caption token); LayerNorm of the
    attention output, with no residual, so the restoration has to pass through the caption;
    ``depth`` pre-norm CLIP residual blocks with QuickGELU; LayerNorm; Linear to ``ph*pw*3``
    pixels per patch; the CLS slot is dropped. `SEN_TIR_KEY_MAP` maps the authors' parameter
    names to these.

    ``layout="residual"`` adds the image tokens back before the attention-output LayerNorm and
    hides caption padding from the cross-attention; ``residual`` / ``mask_padding`` set either
    choice on its own.

    Args:
        embed_dim: dimension of the encoder's projected image tokens.
        grid_size: patch grid (rows, cols), e.g. ``(24, 8)`` for 384x128 at patch 16.
        patch_size: patch (height, width) in pixels.
        text_dim: dimension of the text tokens (defaults to ``embed_dim``).
        width: decoder width (UIT: 512).
        depth: decoder transformer blocks (UIT: 4).
        heads: decoder attention heads (UIT: 8).
        cross_heads: heads of the cross-attention (default: ``heads``).
        mlp_ratio: hidden width of the decoder MLPs relative to ``width``.
        layout: ``"sen"`` or ``"residual"`` (see `TIR_LAYOUTS`).
        residual: override the layout's residual connection around the cross-attention.
        mask_padding: override whether caption padding (after EOT) is hidden from the cross-attention.
    """

    def __init__(
        self,
        embed_dim: int,
        grid_size: Sequence[int],
        patch_size: int | Sequence[int],
        text_dim: int | None = None,
        width: int = recipe.TIR_WIDTH,
        depth: int = recipe.TIR_DEPTH,
        heads: int = recipe.TIR_HEADS,
        cross_heads: int | None = None,
        mlp_ratio: float = 4.0,
        layout: str = recipe.TIR_LAYOUT,
        residual: bool | None = None,
        mask_padding: bool | None = None,
    ) -> None:
        super().__init__()
        if layout not in TIR_LAYOUTS:
            raise ValueError(f"unknown TIR layout {layout!r}; known: {sorted(TIR_LAYOUTS)}")
        self.residual = TIR_LAYOUTS[layout]["residual"] if residual is None else bool(residual)
        self.mask_padding = TIR_LAYOUTS[layout]["mask_padding"] if mask_padding is None else bool(mask_padding)
        self._config = {
            "embed_dim": embed_dim,
            "grid_size": list(_pair(grid_size)),
            "patch_size": list(_pair(patch_size)),
            "text_dim": text_dim,
            "width": width,
            "depth": depth,
            "heads": heads,
            "cross_heads": cross_heads,
            "mlp_ratio": mlp_ratio,
            "layout": layout,
            "residual": self.residual,
            "mask_padding": self.mask_padding,
        }
        self.grid_size = _pair(grid_size)
        self.patch_size = _pair(patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        text_dim = embed_dim if text_dim is None else text_dim
        self.image_norm = LayerNorm(embed_dim)
        self.text_norm = LayerNorm(text_dim)
        self.embed = nn.Linear(embed_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer(
            "pos_embed", sincos_2d_position_embedding(width, self.grid_size).unsqueeze(0), persistent=False
        )
        self.query_norm = LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(
            width, cross_heads or heads, kdim=text_dim, vdim=text_dim, batch_first=True
        )
        self.attn_norm = LayerNorm(width)
        self.decoder = Transformer(width, depth, heads, mlp_ratio=mlp_ratio, act_layer=QuickGELU, batch_first=True)
        self.norm = LayerNorm(width)
        self.pred = nn.Linear(width, self.patch_size[0] * self.patch_size[1] * 3)  # RGB
        self._init_weights(width, depth)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (what ``TIRHead(**head.config())`` needs to rebuild this head)."""
        return dict(self._config)

    def _init_weights(self, width: int, depth: int) -> None:
        """SEN's initialisation: CLIP's scaled normal for attention and MLP weights, PyTorch's
        defaults for the two Linear maps and LayerNorms, a zero mask token."""
        attn_std = width**-0.5
        proj_std = attn_std * (2 * depth) ** -0.5
        fc_std = (2 * width) ** -0.5
        attentions = [self.cross_attn] + [block.attn for block in self.decoder.resblocks]
        for attn in attentions:
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                weight = getattr(attn, name, None)
                if weight is not None:
                    nn.init.normal_(weight, std=attn_std)
            nn.init.normal_(attn.out_proj.weight, std=proj_std)
        for block in self.decoder.resblocks:
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(
        self,
        visible_tokens: torch.Tensor,
        ids_restore: torch.Tensor,
        text_tokens: torch.Tensor,
        text_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict pixels for every patch.

        Args:
            visible_tokens: ``(B, 1 + n_keep, D)`` CLS plus visible patch tokens from the encoder.
            ids_restore: ``(B, N)`` from `random_masking`.
            text_tokens: ``(B, L, Dt)`` caption token features.
            text_padding_mask: ``(B, L)`` bool, True at padding; used only when ``mask_padding``.

        Returns:
            ``(B, N, ph*pw*C)`` predicted (normalised) pixels in patch order.
        """
        b, n = ids_restore.shape
        if n != self.num_patches:
            raise ValueError(f"ids_restore has {n} patches, the head expects {self.num_patches}")
        x = self.embed(self.image_norm(visible_tokens))
        cls, visible = x[:, :1], x[:, 1:]
        masks = self.mask_token.to(x.dtype).expand(b, n - visible.shape[1], -1)
        patches = torch.cat([visible, masks], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([cls, patches], dim=1) + self.pos_embed.to(x.dtype)
        text = self.text_norm(text_tokens)
        padding = text_padding_mask if self.mask_padding else None
        attended, _ = self.cross_attn(self.query_norm(x), text, text, key_padding_mask=padding, need_weights=False)
        x = self.attn_norm(x + attended if self.residual else attended)
        x = self.decoder(x)
        return self.pred(self.norm(x))[:, 1:]


def tir_target(images: torch.Tensor, patch_size: int | Sequence[int], kind: str = "pixels") -> torch.Tensor:
    """What the decoder must restore for ``images`` ``(B, 3, H, W)``: ``(B, N, ph*pw*3)`` (see `TIR_TARGETS`).

    ``"patch_norm"`` standardises every patch over all its values (MAE: mean and variance over the
    patch's pixels and channels, ``eps`` 1e-6 inside the square root).
    """
    if kind not in TIR_TARGETS:
        raise ValueError(f"unknown TIR target {kind!r}; known: {list(TIR_TARGETS)}")
    patches = patchify(images, patch_size)
    if kind == "pixels":
        return patches
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + 1e-6).sqrt()


def tir_errors(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Restoration error of each image: ``(B,)``, the per-patch mean squared error averaged over that
    image's masked patches (`tir_loss` of a batch whose images hide equally many patches is their mean)."""
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} do not fit")
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    weights = mask.float()
    return (per_patch * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def tir_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Mean squared error per patch, averaged over the masked patches only.

    :math:`L = \sum_{b,n} m_{bn}\,\overline{(\hat x_{bn} - x_{bn})^2} / \sum_{b,n} m_{bn}` with
    ``pred``/``target`` ``(B, N, P)`` and ``mask`` ``(B, N)`` (True or 1 = masked).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask must be {tuple(pred.shape[:2])}, got {tuple(mask.shape)}")
    with torch.autocast(device_type=pred.device.type, enabled=False):
        per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
        weights = mask.float()
        return (per_patch * weights).sum() / weights.sum().clamp_min(1.0)
