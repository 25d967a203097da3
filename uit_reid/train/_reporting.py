"""Where a run's numbers go: ``metrics.jsonl`` always, TensorBoard and W&B when asked (main process only);
its log lines go to ``out.log`` beside them."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from uit_reid._display import ShownFormatter
from uit_reid._errors import missing_extra
from uit_reid.distributed import all_reduce_mean

__all__ = ["LOG_FORMAT", "LOG_NAME", "REPORTERS", "LossWindow", "RunLog", "log_to_file"]

logger = logging.getLogger(__name__)

REPORTERS = ("tensorboard", "wandb")
"""The services ``train.report_to`` can name."""


LOG_NAME = "out.log"
"""The run's text log, beside ``metrics.jsonl``."""
LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


@contextlib.contextmanager
def log_to_file(path: str | Path, fresh: bool, enabled: bool = True) -> Iterator[None]:
    """Copy the records of the ``uit_reid`` loggers to ``path`` (`LOG_FORMAT`) for the block.

    The handler is attached to the package logger for the block only and removed after it, however
    the block ends; it takes what that logger lets through (INFO under ``uit-reid train``) and sets no
    level. ``fresh`` starts the file anew (a resumed run appends); ``enabled=False`` does nothing.
    """
    if not enabled:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w" if fresh else "a", encoding="utf-8")
    handler.setFormatter(ShownFormatter(LOG_FORMAT))  # a path with a newline cannot forge a record
    package = logging.getLogger("uit_reid")
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)
        handler.close()


class RunLog:
    """Append one JSON object per record to ``<run_dir>/metrics.jsonl``; mirror numbers to the reporters.

    Records carry ``step`` and ``epoch``; evaluation records also a ``split`` (val, test), which
    prefixes their names in the reporters (training records use ``train/``). ``report_to`` names any
    of `REPORTERS`; one that is not installed is an error naming the ``report`` extra. W&B honours its own
    environment (``WANDB_MODE=offline`` writes under ``<run_dir>/wandb`` without a network). On ranks
    other than 0 (``enabled=False``) every call is a no-op.
    """

    def __init__(
        self, run_dir: str | Path, enabled: bool = True, report_to: Iterable[str] = (), config: dict | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.report_to = tuple(report_to)
        unknown = set(self.report_to) - set(REPORTERS)
        if unknown:
            raise ValueError(f"unknown reporter(s) {sorted(unknown)}; known: {list(REPORTERS)}")
        self.config = config or {}
        self.records: list[dict[str, Any]] = []
        self._tb: Any = None
        self._wandb: Any = None

    def open(self, fresh: bool) -> None:
        """Start logging; ``fresh`` drops a log left by an earlier run in the same folder (a resumed run appends)."""
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.path.unlink(missing_ok=True)
        if "tensorboard" in self.report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise missing_extra("train.report_to = ['tensorboard']", "report", "tensorboard, wandb") from exc
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        if "wandb" in self.report_to:
            try:
                import wandb
            except ImportError as exc:
                raise missing_extra("train.report_to = ['wandb']", "report", "tensorboard, wandb") from exc
            self._wandb = wandb.init(project="uit-reid", name=self.run_dir.name, dir=str(self.run_dir), config=self.config)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        prefix = record.get("split", "train")
        scalars = {
            f"{prefix}/{k}": v for k, v in record.items() if isinstance(v, int | float) and k not in ("step", "epoch")
        }
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, record["step"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


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
        # ID and TIR are means over this rank's rows: average them over ranks (one collective)
        means = all_reduce_mean({k: v / self.count for k, v in self.losses.items()})
        return {"images_per_s": self.images / max(elapsed, 1e-9), **{k: float(v) for k, v in means.items()}}

