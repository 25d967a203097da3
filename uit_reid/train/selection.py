"""Which model a run reports: the best on val (the default) and, with ``train.select_on_test``, the
authors' protocol (the best test epoch), which is labelled as optimistic wherever it appears."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from uit_reid.model import UITModel

__all__ = ["SELECT_ON_TEST_KEY", "SELECT_ON_TEST_LABEL", "ModelSelection", "test_summary"]

SELECT_ON_TEST_KEY = "selected_on_test"
SELECT_ON_TEST_LABEL = "authors' protocol: best test R1 over epochs (optimistic; not a held-out figure)"


def test_summary(test: dict[str, float], best_test: dict[str, Any] | None) -> dict[str, Any]:
    """``metrics.json``: the chosen model's test metrics, plus the labelled best-test-epoch figures if any."""
    summary: dict[str, Any] = dict(test)
    if best_test is not None:
        summary[SELECT_ON_TEST_KEY] = {"protocol": SELECT_ON_TEST_LABEL, **best_test}
    return summary


class ModelSelection:
    """Best-so-far bookkeeping of a run: the best val R1 (its model saved to ``<run_dir>/best``) and,
    with ``train.select_on_test``, the best test epoch (``<run_dir>/best_test``)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.best_r1 = -math.inf
        self.best_test: dict[str, Any] | None = None

    def consider_val(self, metrics: dict[str, float], model: UITModel) -> None:
        if metrics["R1"] > self.best_r1:  # strictly better: a later tie keeps the earlier model
            self.best_r1 = metrics["R1"]
            model.save_pretrained(self.run_dir / "best")

    def consider_test(self, epoch: int, metrics: dict[str, float], model: UITModel) -> None:
        if self.best_test is None or metrics["R1"] > self.best_test["R1"]:
            self.best_test = {"epoch": epoch, **metrics}
            model.save_pretrained(self.run_dir / "best_test")

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint entries (plain values only: checkpoints load with ``weights_only=True``)."""
        return {"best_r1": self.best_r1, "best_test": json.dumps(self.best_test)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_r1 = state["best_r1"]
        self.best_test = json.loads(state.get("best_test", "null"))
