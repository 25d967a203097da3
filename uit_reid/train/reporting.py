"""Where a run's numbers go: ``metrics.jsonl`` always, TensorBoard when it is installed (main process only)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["LossWindow", "RunLog", "format_metrics"]

logger = logging.getLogger(__name__)


class RunLog:
    """Append one JSON object per record to ``<run_dir>/metrics.jsonl`` and mirror numbers to TensorBoard.

    Records carry ``step`` and ``epoch``; evaluation records also a ``split`` (val, test), which
    prefixes their TensorBoard tags (training records use ``train/``). On ranks other than 0
    (``enabled=False``) every call is a no-op.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self._tb: Any = None

    def open(self, fresh: bool) -> None:
        """Start logging; ``fresh`` drops a log left by an earlier run in the same folder (a resumed run appends)."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.path.unlink(missing_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed
            return
        self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            prefix = record.get("split", "train")
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class LossWindow:
    """Loss sums and image counts between two log lines, kept on the device (no sync per step)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.images = 0
        self.count = 0
        self.losses: dict[str, torch.Tensor] = {}

    def add(self, out: dict[str, torch.Tensor], images: int) -> None:
        """Add one micro-batch's losses (``UITModel`` output) and its global image count."""
        self.images += images
        self.count += 1
        for k, v in out.items():
            self.losses[k] = self.losses[k] + v.detach() if k in self.losses else v.detach()

    def summary(self) -> dict[str, float]:
        """Throughput and the mean of each loss over the window."""
        elapsed = time.perf_counter() - self.start
        return {
            "images_per_s": self.images / max(elapsed, 1e-9),
            **{k: float(v) / self.count for k, v in self.losses.items()},
        }


def format_metrics(metrics: dict[str, float]) -> str:
    """One log line: ``R1 61.20  R5 80.10 ...``."""
    return "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())
