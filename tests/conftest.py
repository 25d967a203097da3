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


@pytest.fixture(scope="session")
def independent_metrics():
    """Evaluate a model on a split without `uit_reid.evaluation`: one image and one caption at a time.

    R1 is also computed by hand (arg-max gallery pid == query pid) and checked against
    `uit_reid.retrieval.evaluate`, whose other figures are tested against the field's evaluator.
    """
    from uit_reid.augment import build_eval_transform
    from uit_reid.images import load_image
    from uit_reid.retrieval import evaluate

    def run(model, split, interpolation: str = "bicubic") -> dict[str, float]:
        transform = build_eval_transform(model.image_size, interpolation=interpolation)
        with torch.no_grad():
            g = torch.cat([model.encode_image(transform(load_image(r.image_path))[None], normalize=True) for r in split.records])
            q = torch.cat([model.encode_text(model.encoder.tokenize([c]), normalize=True) for c in split.queries.captions])
        q_pids, g_pids = torch.tensor(split.queries.pids), torch.tensor([r.pid for r in split.records])
        similarity = q @ g.t()
        metrics = evaluate(similarity, q_pids, g_pids)
        r1 = (g_pids[similarity.argmax(dim=1)] == q_pids).double().mean().item() * 100
        assert metrics["R1"] == pytest.approx(r1)
        return metrics

    return run
