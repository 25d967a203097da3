"""How metrics are written as text: the Markdown table (CLI, model card, examples) and the one-line log form.

One place so that every printout agrees (figures in percent to two decimals, ``-`` for a missing
one). This module imports nothing heavy, so the model card uses it without torch or FAISS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["METRIC_KEYS", "metrics_line", "metrics_table"]

METRIC_KEYS: tuple[str, ...] = ("R1", "R5", "R10", "mAP", "mINP")
"""The metrics `uit_reid.retrieval.evaluate` returns, in its order: the table's default columns."""


def metrics_table(
    rows: Mapping[str, Mapping[str, float]], label: str = "split", keys: Sequence[str] = METRIC_KEYS
) -> str:
    """A Markdown table with one row per ``{name: evaluate(...) result}`` entry, figures to 2 decimals.

    ``keys`` picks the columns (e.g. ``("R1", "R5", "mAP", "binding")``); a row without one shows ``-``.
    """
    lines = [f"| {label} | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [
        f"| {name} | " + " | ".join(f"{m[k]:.2f}" if k in m else "-" for k in keys) + " |" for name, m in rows.items()
    ]
    return "\n".join(lines)


def metrics_line(metrics: Mapping[str, float]) -> str:
    """One log line: ``R1 61.20  R5 80.10 ...``."""
    return "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())
