"""Which model a run reports: the best on val (the default) and, with ``train.select_on_test``, the
authors' protocol (the best test epoch), which is labelled as optimistic wherever it appears."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uit_reid.io import atomic_write_text
from uit_reid.model import UITModel
from uit_reid.model_card import MODEL_CARD_NAME, ModelCardInfo, render_model_card

if TYPE_CHECKING:
    from uit_reid.train.config import TrainConfig

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

    def __init__(self, run_dir: str | Path, config: TrainConfig | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.best_r1 = -math.inf
        self.best_val: dict[str, float] = {}  # metrics of the best val evaluation (for the model card)
        self.best_test: dict[str, Any] | None = None
        self.config = config

    def card(self, metrics: dict[str, dict[str, float]]) -> ModelCardInfo:
        """The model card of a model exported by this run, with the run's data, config and ``metrics``."""
        if self.config is None:
            return ModelCardInfo(metrics=metrics)
        data = f"{self.config.data.root} (format {self.config.data.format}), train split"
        return ModelCardInfo(training_data=data, training_config=self.config.to_toml(), metrics=metrics)

    def consider_val(self, metrics: dict[str, float], model: UITModel) -> None:
        if metrics["R1"] > self.best_r1:  # strictly better: a later tie keeps the earlier model
            self.best_r1, self.best_val = metrics["R1"], metrics
            model.save_pretrained(self.run_dir / "best", card=self.card({"val (best)": metrics}))

    def consider_test(self, epoch: int, metrics: dict[str, float], model: UITModel) -> None:
        if self.best_test is None or metrics["R1"] > self.best_test["R1"]:
            self.best_test = {"epoch": epoch, **metrics}
            model.save_pretrained(self.run_dir / "best_test", card=self.card({"test (best epoch on test)": metrics}))

    def write_final_card(self, model_dir: Path, model: UITModel, test: dict[str, float], has_val: bool) -> None:
        """Rewrite the exported model's card with its test metrics (and the best val figures)."""
        metrics = {"val (best)": self.best_val or {"R1": self.best_r1}} if has_val else {}
        atomic_write_text(model_dir / MODEL_CARD_NAME, render_model_card(model.config(), self.card({**metrics, "test": test})))

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint entries (plain values only: checkpoints load with ``weights_only=True``)."""
        return {"best_r1": self.best_r1, "best_val": json.dumps(self.best_val), "best_test": json.dumps(self.best_test)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_r1 = state["best_r1"]
        self.best_val = json.loads(state["best_val"])
        self.best_test = json.loads(state["best_test"])
