"""UIT's training recipe (ViT-B/16 on CUHK-PEDES, the paper's and the authors' code's values), declared once.

The training config's defaults (`uit_reid.train.config`), `UITModel`'s and `TIRHead`'s default
arguments, the encoder's and the datasets' input sizes and the identity sampler's all read from here. This module imports nothing, so the
config reads it without torch.
"""

from __future__ import annotations

__all__ = [
    "CMT_MARGIN",
    "CONTEXT_LENGTH",
    "IMAGE_SIZE",
    "LOGIT_SCALE",
    "LOSS_WEIGHTS",
    "MASK_RATIO",
    "NUM_INSTANCES",
    "SAMPLER",
    "TIR_DEPTH",
    "TIR_GRAYSCALE",
    "TIR_HEADS",
    "TIR_LAYOUT",
    "TIR_TARGET",
    "TIR_WIDTH",
]

IMAGE_SIZE: tuple[int, int] = (384, 128)
"""Input (height, width) of a person crop: 24x8 patches of 16 px for ViT-B/16."""
CONTEXT_LENGTH = 77
"""Caption length in tokens (CLIP's; also what a tower config without ``context_length`` means)."""
LOSS_WEIGHTS: dict[str, float] = {"sdm": 1.0, "id": 1.0, "tir": 10.0, "cmt": 10.0, "itc": 0.0}
"""Loss weights: ``1·SDM + 1·ID + 10·TIR + 10·CMT``; ``itc`` (symmetric InfoNCE) is off."""
LOGIT_SCALE = 50.0
"""Fixed inverse temperature of SDM and ITC."""
CMT_MARGIN = 0.05
"""Margin of the cross-modal triplet loss."""
MASK_RATIO = 0.7
"""Fraction of image patches TIR drops."""
TIR_WIDTH = 512
"""Width of the TIR decoder."""
TIR_DEPTH = 4
"""Transformer layers of the TIR decoder."""
TIR_HEADS = 8
"""Attention heads of the TIR decoder."""
TIR_LAYOUT = "sen"
"""The TIR decoder variant (`uit_reid.tir.TIR_LAYOUTS`): the authors' released one."""
TIR_TARGET = "pixels"
"""What the TIR decoder restores (`uit_reid.tir.TIR_TARGETS`): the patches' normalised RGB pixels, as the authors' code."""
TIR_GRAYSCALE = "normalised"
"""How TIR's grayscale input is formed (`uit_reid.tir.TIR_GRAYSCALES`): as the authors' code does."""
SAMPLER = "identity_groups"
"""The batch sampler (`uit_reid.data.samplers.SAMPLERS`): SEN's identity groups."""
NUM_INSTANCES = 2
"""The largest identity group in a batch (SEN's ``num_instance``)."""
