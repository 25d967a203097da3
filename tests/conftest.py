"""Shared fixtures. Tests never reach the network: a mistaken hub call fails fast."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_SIZE = (96, 32)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_encoder_factory():
    """Build fresh tiny encoders (random init, seeded) without repeating the boilerplate."""
    from uit_reid import CLIPDualEncoder

    def make(seed: int = 0, image_size: tuple[int, int] = TINY_SIZE) -> CLIPDualEncoder:
        torch.manual_seed(seed)
        return CLIPDualEncoder.from_open_clip("uit-tiny", image_size=image_size)

    return make


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_factory):
    """One shared tiny encoder in eval mode (do not train it: use the factory for that)."""
    return tiny_encoder_factory().eval()
