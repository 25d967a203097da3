"""Checkpoints in the IRRA / SEN / OpenAI CLIP layouts, built from random weights, and an independent
forward pass written from the OpenAI CLIP formulas (for exactness tests of `uit_reid.convert`).

Only facts are used: tensor names and shapes of the peers' state dicts and what each tensor means.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

VOCAB = 49408  # the CLIP BPE vocabulary: the converted model tokenizes real captions


def _block(gen: torch.Generator, prefix: str, width: int) -> dict[str, torch.Tensor]:
    def rnd(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    return {
        f"{prefix}ln_1.weight": 1 + rnd(width, std=0.1),
        f"{prefix}ln_1.bias": rnd(width, std=0.1),
        f"{prefix}attn.in_proj_weight": rnd(3 * width, width, std=width**-0.5),
        f"{prefix}attn.in_proj_bias": rnd(3 * width, std=0.02),
        f"{prefix}attn.out_proj.weight": rnd(width, width, std=width**-0.5),
        f"{prefix}attn.out_proj.bias": rnd(width, std=0.02),
        f"{prefix}ln_2.weight": 1 + rnd(width, std=0.1),
        f"{prefix}ln_2.bias": rnd(width, std=0.1),
        f"{prefix}mlp.c_fc.weight": rnd(4 * width, width, std=width**-0.5),
        f"{prefix}mlp.c_fc.bias": rnd(4 * width, std=0.02),
        f"{prefix}mlp.c_proj.weight": rnd(width, 4 * width, std=(4 * width) ** -0.5),
        f"{prefix}mlp.c_proj.bias": rnd(width, std=0.02),
    }


def openai_clip_state(
    seed: int = 0,
    grid: tuple[int, int] = (4, 2),
    patch: int = 16,
    vision_width: int = 64,
    vision_layers: int = 2,
    text_width: int = 64,
    text_layers: int = 2,
    context_length: int = 77,
    embed_dim: int = 32,
) -> dict[str, torch.Tensor]:
    """Random CLIP weights in OpenAI naming (fp32)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    state = {
        "visual.conv1.weight": rnd(vision_width, 3, patch, patch, std=(3 * patch * patch) ** -0.5),
        "visual.class_embedding": rnd(vision_width, std=vision_width**-0.5),
        "visual.positional_embedding": rnd(1 + grid[0] * grid[1], vision_width, std=vision_width**-0.5),
        "visual.ln_pre.weight": 1 + rnd(vision_width, std=0.1),
        "visual.ln_pre.bias": rnd(vision_width, std=0.1),
        "visual.ln_post.weight": 1 + rnd(vision_width, std=0.1),
        "visual.ln_post.bias": rnd(vision_width, std=0.1),
        "visual.proj": rnd(vision_width, embed_dim, std=vision_width**-0.5),
        "token_embedding.weight": rnd(VOCAB, text_width, std=0.02),
        "positional_embedding": rnd(context_length, text_width, std=0.01),
        "ln_final.weight": 1 + rnd(text_width, std=0.1),
        "ln_final.bias": rnd(text_width, std=0.1),
        "text_projection": rnd(text_width, embed_dim, std=text_width**-0.5),
    }
    for i in range(vision_layers):
        state.update(_block(gen, f"visual.transformer.resblocks.{i}.", vision_width))
    for i in range(text_layers):
        state.update(_block(gen, f"transformer.resblocks.{i}.", text_width))
    return state


def as_irra_dtypes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """IRRA/SEN store conv, linear and attention weights and the projections in fp16, the rest in fp32."""
    half = ("conv1.weight", "in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias",
            "c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias", "text_projection", "visual.proj")
    return {k: v.half() if k.endswith(half) else v for k, v in state.items()}


# ----------------------------------------------------------------------------- reference forward
def _layer_norm(x: torch.Tensor, s: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * s[prefix + "weight"].float() + s[prefix + "bias"].float()


def _attention(q_in: torch.Tensor, kv_in: torch.Tensor, s: dict[str, torch.Tensor], prefix: str, heads: int,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    w, b = s[prefix + "in_proj_weight"].float(), s[prefix + "in_proj_bias"].float()
    width = q_in.shape[-1]
    q = q_in @ w[:width].T + b[:width]
    k = kv_in @ w[width : 2 * width].T + b[width : 2 * width]
    v = kv_in @ w[2 * width :].T + b[2 * width :]

    def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, W) -> (B, H, L, W/H)
        return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], width)
    return out @ s[prefix + "out_proj.weight"].float().T + s[prefix + "out_proj.bias"].float()


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _residual_block(x: torch.Tensor, s: dict[str, torch.Tensor], prefix: str, heads: int,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    h = _layer_norm(x, s, prefix + "ln_1.")
    x = x + _attention(h, h, s, prefix + "attn.", heads, mask)
    h = _layer_norm(x, s, prefix + "ln_2.")
    h = _quick_gelu(h @ s[prefix + "mlp.c_fc.weight"].float().T + s[prefix + "mlp.c_fc.bias"].float())
    return x + h @ s[prefix + "mlp.c_proj.weight"].float().T + s[prefix + "mlp.c_proj.bias"].float()


def _num_blocks(s: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in s if k.startswith(prefix)})


def reference_image_tokens(s: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Projected image tokens ``(B, 1 + N, D)`` by the OpenAI CLIP ViT formulas (heads = width / 64)."""
    conv = s["visual.conv1.weight"].float()
    width, patch = conv.shape[0], conv.shape[-1]
    x = F.conv2d(images, conv, stride=patch).flatten(2).transpose(1, 2)
    x = torch.cat([s["visual.class_embedding"].float().expand(x.shape[0], 1, -1), x], dim=1)
    x = _layer_norm(x + s["visual.positional_embedding"].float(), s, "visual.ln_pre.")
    for i in range(_num_blocks(s, "visual.transformer.resblocks.")):
        x = _residual_block(x, s, f"visual.transformer.resblocks.{i}.", width // 64)
    return _layer_norm(x, s, "visual.ln_post.") @ s["visual.proj"].float()


def reference_text_tokens(s: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Projected caption tokens ``(B, L, D)`` with CLIP's causal mask."""
    width = s["ln_final.weight"].shape[0]
    length = ids.shape[1]
    x = s["token_embedding.weight"].float()[ids] + s["positional_embedding"].float()
    mask = torch.full((length, length), float("-inf")).triu(1)
    for i in range(_num_blocks(s, "transformer.resblocks.")):
        x = _residual_block(x, s, f"transformer.resblocks.{i}.", width // 64, mask)
    return _layer_norm(x, s, "ln_final.") @ s["text_projection"].float()


def reference_features(s: dict[str, torch.Tensor], images: torch.Tensor, ids: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Image feature = projected CLS token; text feature = projected token at the EOT (argmax id)."""
    image = reference_image_tokens(s, images)[:, 0]
    text = reference_text_tokens(s, ids)
    return image, text[torch.arange(ids.shape[0]), ids.argmax(-1)]


# ----------------------------------------------------------------------------- SEN's restoration decoder
def mae_sincos_table(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table ``(1, 1 + gh*gw, dim)`` as SEN stores it: CLS row zero; the first
    half of the channels encodes the column, the second half the row; each half is [sin, cos]."""
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64),
                                torch.arange(grid[1], dtype=torch.float64), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def one_d(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([one_d(cols), one_d(rows)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float().unsqueeze(0)


def sen_decoder_state(seed: int, dim: int, grid: tuple[int, int], patch: int, depth: int = 2,
                      unused: bool = True) -> dict[str, torch.Tensor]:
    """SEN's decoder tensors (``mae`` in loss_names), plus the modules it builds and never calls."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    def norm(name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": 1 + rnd(dim, std=0.1), f"{name}.bias": rnd(dim, std=0.1)}

    def attn(name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.in_proj_weight": rnd(3 * dim, dim, std=dim**-0.5),
                f"{name}.in_proj_bias": rnd(3 * dim, std=0.02),
                f"{name}.out_proj.weight": rnd(dim, dim, std=dim**-0.5),
                f"{name}.out_proj.bias": rnd(dim, std=0.02)}

    state = {
        "decoder_embed.weight": rnd(dim, dim, std=dim**-0.5), "decoder_embed.bias": rnd(dim, std=0.02),
        "mask_token": rnd(1, 1, dim, std=0.02),
        "decoder_pos_embed": mae_sincos_table(dim, grid),
        **attn("cross_attn_Text"),
        **norm("norm_1"), **norm("norm_2"), **norm("norm_4"), **norm("norm_6"), **norm("norm_7"),
        "decoder_pred.weight": rnd(patch * patch * 3, dim, std=dim**-0.5),
        "decoder_pred.bias": rnd(patch * patch * 3, std=0.02),
    }
    for i in range(depth):
        state.update(_block(gen, f"cross_modal_transformer_mae.resblocks.{i}.", dim))
    if unused:
        state.update({**attn("cross_attn_TextImage"), **attn("cross_attn_Image"), **norm("norm_3"), **norm("norm_5")})
    return state


def reference_sen_decoder(s: dict[str, torch.Tensor], image_tokens: torch.Tensor, text_tokens: torch.Tensor,
                          ids_restore: torch.Tensor) -> torch.Tensor:
    """SEN's decoder from its description: norms, embedding, mask tokens put back in patch order,
    positions, cross-attention to the caption with no residual, CLIP blocks, norm, pixel map."""
    dim = s["decoder_embed.weight"].shape[0]
    heads = dim // 64
    x = _layer_norm(image_tokens, s, "norm_1.")
    text = _layer_norm(text_tokens, s, "norm_2.")
    x = x @ s["decoder_embed.weight"].T + s["decoder_embed.bias"]
    batch, patches = ids_restore.shape
    fill = s["mask_token"].expand(batch, patches + 1 - x.shape[1], dim)
    rest = torch.cat([x[:, 1:], fill], dim=1)
    rest = torch.stack([rest[b, ids_restore[b]] for b in range(batch)])
    x = torch.cat([x[:, :1], rest], dim=1) + s["decoder_pos_embed"]
    x = _layer_norm(_attention(_layer_norm(x, s, "norm_4."), text, s, "cross_attn_Text.", heads), s, "norm_6.")
    for i in range(_num_blocks(s, "cross_modal_transformer_mae.resblocks.")):
        x = _residual_block(x, s, f"cross_modal_transformer_mae.resblocks.{i}.", heads)
    x = _layer_norm(x, s, "norm_7.") @ s["decoder_pred.weight"].T + s["decoder_pred.bias"]
    return x[:, 1:]
