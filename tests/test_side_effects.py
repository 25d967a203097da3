"""A library call leaves the process as it found it: umask, matplotlib backend, open_clip's registry,
FAISS's threads, the global RNG states, the loggers' handlers and prometheus_client's global registry.

The calls run for real, one after another, in a fresh subprocess (`side_effects_probe.py`), which
first sets each of those settings to a value no library default would give it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SETTINGS = ("umask", "matplotlib backend", "open_clip registry", "faiss threads", "torch rng", "python rng",
            "numpy rng", "uit_reid logger handlers", "root logger handlers", "prometheus global registry")
CALLS = ("import uit_reid.encoders", "atomic_write_bytes", "FolderLock", "demo.plot_training_curve",
         "Trainer build, evaluate, fit", "GalleryIndex search", "service app")


@pytest.fixture(scope="module")
def changed(tmp_path_factory) -> dict[str, list[str]]:
    work = tmp_path_factory.mktemp("side_effects")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(HERE / "side_effects_probe.py"), str(work)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert tuple(report) == CALLS
    return report


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_a_library_call_leaves_the_setting_as_it_was(changed, call, setting) -> None:
    assert setting not in changed[call], f"{call} changed the process's {setting}"


def test_rng_streams_draw_what_seeding_the_globals_drew_and_give_the_globals_back() -> None:
    """`RngStreams(seed)` in two blocks draws the numbers ``torch.manual_seed`` + ``random.seed`` +
    ``np.random.seed`` then two runs of draws would give; outside the blocks the caller's generators do
    not move (the Trainer's promise: same seed, same weights, and the notebook's sequence untouched)."""
    import random

    import numpy as np
    import torch

    from uit_reid.checkpoint import RngStreams

    def draws() -> list[float]:
        return [*torch.rand(3).tolist(), random.random(), float(np.random.rand()), float(torch.randn(1))]

    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    expected = draws() + draws()
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    caller = draws()
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    streams = RngStreams(7)
    with streams.active():
        got = draws()
    with streams.active(), streams.active():  # nested: one block
        got += draws()
    assert got == expected
    assert draws() == caller
