"""Text-guided image restoration (TIR).

The image is turned to grayscale, 70% of its patch tokens are dropped, and a light decoder must
restore the RGB pixels of the dropped patches from the visible ones and the caption's tokens.
Colour is only available through the text, so the restoration ties words ("red jacket") to image
regions. Used at training time only; inference pays nothing for it.

Pieces, each usable alone: `to_grayscale`, `patchify` / `unpatchify`,
`random_masking`, `TIRHead` and `tir_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["TIRHead", "patchify", "random_masking", "sincos_2d_position_embedding", "tir_loss", "to_grayscale", "unpatchify"]

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
    """Fixed 2-D sine-cosine positions ``(cls + gh*gw, dim)``: half the channels encode the row,
    half the column; the CLS slot is zeros."""
    gh, gw = _pair(grid_size)
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    emb = torch.cat([encode(rows), encode(cols)], dim=1).float()
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb


class TIRHead(nn.Module):
    """Decoder that restores masked RGB patches from visible grayscale tokens and the caption.

    Pipeline: LayerNorm + Linear on the encoder's visible tokens, a learned mask token at dropped
    positions, fixed 2-D sin-cos positions, one cross-attention layer (image tokens attend to the
    caption's tokens; padding after EOT is masked out), ``depth`` pre-norm transformer layers,
    LayerNorm and a linear map to ``ph*pw*3`` pixels per patch.

    Args:
        embed_dim: dimension of the encoder's projected image tokens.
        text_dim: dimension of the text tokens (defaults to ``embed_dim``).
        grid_size: patch grid (rows, cols), e.g. ``(24, 8)`` for 384x128 at patch 16.
        patch_size: patch (height, width) in pixels.
        width: decoder transformer width (UIT: 512).
        depth: decoder transformer layers (UIT: 4).
        heads: decoder attention heads (UIT: 8).
        cross_heads: heads of the cross-attention layer (default: ``heads``).
        mlp_ratio: hidden width of the decoder MLPs relative to ``width``.
    """

    def __init__(
        self,
        embed_dim: int,
        grid_size: Sequence[int],
        patch_size: int | Sequence[int],
        text_dim: int | None = None,
        width: int = 512,
        depth: int = 4,
        heads: int = 8,
        cross_heads: int | None = None,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
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
        }
        self.grid_size = _pair(grid_size)
        self.patch_size = _pair(patch_size)
        text_dim = embed_dim if text_dim is None else text_dim
        self.embed = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, width))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.register_buffer(
            "pos_embed", sincos_2d_position_embedding(width, self.grid_size).unsqueeze(0), persistent=False
        )
        self.text_norm = nn.LayerNorm(text_dim)
        self.query_norm = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(
            width, cross_heads or heads, kdim=text_dim, vdim=text_dim, batch_first=True
        )
        layer = nn.TransformerEncoderLayer(
            width, heads, int(width * mlp_ratio), dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.pred = nn.Linear(width, self.patch_size[0] * self.patch_size[1] * 3)  # RGB
        self.num_patches = num_patches
        self._init_weights()

    def config(self) -> dict[str, Any]:
        """The constructor arguments (what ``TIRHead(**head.config())`` needs to rebuild this head)."""
        return dict(self._config)

    def _init_weights(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

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
            text_padding_mask: ``(B, L)`` bool, True at padding to ignore.

        Returns:
            ``(B, N, ph*pw*C)`` predicted (normalised) pixels in patch order.
        """
        b, n = ids_restore.shape
        if n != self.num_patches:
            raise ValueError(f"ids_restore has {n} patches, the head expects {self.num_patches}")
        x = self.embed(visible_tokens)
        cls, visible = x[:, :1], x[:, 1:]
        masks = self.mask_token.to(x.dtype).expand(b, n - visible.shape[1], -1)
        patches = torch.cat([visible, masks], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([cls, patches], dim=1) + self.pos_embed.to(x.dtype)
        text = self.text_norm(text_tokens)
        attended, _ = self.cross_attn(
            self.query_norm(x), text, text, key_padding_mask=text_padding_mask, need_weights=False
        )
        x = self.blocks(x + attended)
        return self.pred(self.norm(x))[:, 1:]


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
