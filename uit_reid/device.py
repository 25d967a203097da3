"""Where and in which precision to run: device names and autocast, shared by training and evaluation."""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["PRECISIONS", "amp_dtype", "autocast", "resolve_device"]

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Autocast dtypes by name (None: full fp32); ``"auto"`` picks one of them per device (`amp_dtype`)."""


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` is this process's GPU (``LOCAL_RANK`` under torchrun) when there is one, else the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (auto, fp32, bf16, fp16); None means full fp32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return PRECISIONS[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` in ``dtype``, or nothing when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
