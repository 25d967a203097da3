"""Run real library calls one after another and report which process-wide settings each one changed.

``python tests/side_effects_probe.py WORKDIR`` prints one JSON object ``{call: [changed setting, ...]}``.
The settings: the umask, matplotlib's backend, open_clip's model registry, FAISS's OpenMP threads,
the torch / Python / NumPy global RNG states, the handlers of the ``uit_reid`` and root loggers and
the names in prometheus_client's global registry. Each is first set to a value no library default
would give it, so that a call which sets it (rather than leaves it) shows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import matplotlib
import numpy as np
import open_clip
import prometheus_client
import torch

UMASK = 0o027
BACKEND = "svg"  # not Agg, so a switch to Agg shows
FAISS_THREADS = 3


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.tobytes() if hasattr(part, "tobytes") else repr(part).encode())
    return h.hexdigest()[:16]


def _umask() -> int:
    mask = os.umask(UMASK)  # the probe may read it the only way there is: it is not library code
    os.umask(mask)
    return mask


def snapshot() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "umask": _umask(),
        "matplotlib backend": matplotlib.get_backend(),
        "open_clip registry": _digest(sorted(open_clip.list_models())),
        "faiss threads": faiss.omp_get_max_threads(),
        "torch rng": _digest(torch.get_rng_state().numpy()),
        "python rng": _digest(random.getstate()),
        "numpy rng": _digest(np_state[1], np_state[0], np_state[2:]),
        "uit_reid logger handlers": [id(h) for h in logging.getLogger("uit_reid").handlers],
        "root logger handlers": [id(h) for h in logging.getLogger().handlers],
        "prometheus global registry": sorted(m.name for m in prometheus_client.REGISTRY.collect()),
    }


def import_encoders(work: Path) -> None:
    import uit_reid.encoders  # noqa: F401


def atomic_write(work: Path) -> None:
    from uit_reid.io import atomic_write_bytes

    atomic_write_bytes(work / "atomic.bin", b"x" * 100)


def folder_lock(work: Path) -> None:
    from uit_reid.io import FolderLock

    with FolderLock(work / "locked", "probe"):
        pass


def plot_training_curve(work: Path) -> None:
    from uit_reid.demo import plot_training_curve

    lines = [{"step": s, "epoch": 0, "loss": 3.0 / s} for s in (1, 2, 3)] + [{"step": 3, "split": "val", "R1": 10.0}]
    (work / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert plot_training_curve(work / "metrics.jsonl", work / "curve.png")


def train(work: Path) -> None:
    from uit_reid.data import make_synthetic
    from uit_reid.train import TrainConfig, Trainer

    data = work / "data"
    make_synthetic(data, num_ids=16, images_per_id=2, seed=0, num_val_ids=4, num_test_ids=4, progress=False)
    config = TrainConfig.from_dict({
        "model": {"tower": "uit-tiny", "pretrained": "none", "image_size": [96, 32], "tir_head": True,
                  "tir_width": 32, "tir_depth": 1, "tir_heads": 4},
        "loss": {"sdm": 1.0, "id": 1.0, "tir": 1.0, "cmt": 1.0, "itc": 1.0, "logit_scale": 20.0},
        "data": {"root": str(data), "batch_size": 8, "num_workers": 0, "text_augment_p": 0.5},
        "train": {"epochs": 1, "max_steps": 2, "device": "cpu", "output_dir": str(work / "run"), "log_every": 1},
    })
    trainer = Trainer(config)
    trainer.evaluate(trainer.dataset.test)
    trainer.fit()


def index_search(work: Path) -> None:
    from uit_reid.retrieval import GalleryIndex

    gen = np.random.default_rng(0)
    vectors = gen.standard_normal((300, 16)).astype(np.float32)
    for kind in ("flat", "ivf"):
        index = GalleryIndex(dim=16, kind=kind, fingerprint="probe", nlist=4) if kind == "ivf" else \
            GalleryIndex(dim=16, kind=kind, fingerprint="probe")
        if kind == "ivf":
            index.train(vectors)
        index.add(vectors, [f"{i}.png" for i in range(len(vectors))])
        index.search(vectors[:5], k=3)


def service_app(work: Path) -> None:
    from uit_reid.serve.api_doc import reference_schema

    assert "/metrics" in reference_schema()["paths"]


CALLS: dict[str, Callable[[Path], None]] = {
    "import uit_reid.encoders": import_encoders,
    "atomic_write_bytes": atomic_write,
    "FolderLock": folder_lock,
    "demo.plot_training_curve": plot_training_curve,
    "Trainer build, evaluate, fit": train,
    "GalleryIndex search": index_search,
    "service app": service_app,
}


def main(work: Path) -> dict[str, list[str]]:
    os.umask(UMASK)
    matplotlib.use(BACKEND)
    faiss.omp_set_num_threads(FAISS_THREADS)
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    changed = {}
    for name, call in CALLS.items():
        before = snapshot()
        call(work)
        after = snapshot()
        changed[name] = [key for key in before if before[key] != after[key]]
    return changed


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
