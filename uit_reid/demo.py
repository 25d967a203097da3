"""The demo: synthetic pedestrians → zero-shot shipped `uit-tiny` → fine-tune with UIT → evaluate → index.

The default bundled config, ``demo_uit``, starts from the pre-trained tiny CLIP shipped in the package
(``model.pretrained = "synthetic"``, see `uit_reid.pretrained`), measures it zero-shot on the test
split, fine-tunes it with the paper's losses and evaluates again. Writes into the output folder:
``data/`` (the synthetic dataset), the trainer's run files, ``metrics.json`` (the fine-tuned test
R1/R5/R10/mAP/mINP and binding accuracy, with the zero-shot row under ``"zero_shot"``),
``results.png`` (three queries with their top-5), ``tir.png`` (six test people restored from grey by the
TIR decoder, from the true caption and from the colours swapped), ``training_curve.png`` and ``gallery.faiss`` (the
test gallery's index, which ``uit-reid serve`` can serve: the demo ends by printing that command).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from uit_reid.data import Split
from uit_reid.evaluation import encode_split
from uit_reid.factory import load_model
from uit_reid.io import atomic_write_text
from uit_reid.retrieval import GalleryIndex, ranked_hits, render_results
from uit_reid.tables import metrics_line
from uit_reid.tir_figure import restoration_figure
from uit_reid.train import TrainConfig, Trainer, load_config

__all__ = ["DEMO_COLUMNS", "ZERO_SHOT_KEY", "run_demo", "plot_training_curve"]

logger = logging.getLogger(__name__)

NUM_QUERIES = 3
ZERO_SHOT_KEY = "zero_shot"
"""Where ``metrics.json`` keeps the shipped checkpoint's test metrics before fine-tuning."""
DEMO_COLUMNS = ("R1", "R5", "mAP", "binding", "presence", "text_use")
"""The columns the demo prints for its two rows (zero-shot, fine-tuned); ``text_use``: the TIR decoder's
(`uit_reid.evaluation.evaluate_text_use`), absent without one."""
DEMO_MARKER = ".uit_reid_demo"
"""File the demo leaves in its output folder: running the demo again may replace that folder's run."""


def run_demo(
    out: Path, quick: bool = False, device: str = "cpu", config: str | Path = "demo_uit"
) -> dict[str, dict[str, float]]:
    """Run the whole demo into ``out``; return the test metrics ``{"zero_shot": ..., "fine_tuned": ...}``.

    ``config`` is a bundled config name or a TOML file: ``"demo_uit"`` (the default, what ``make demo``
    runs) fine-tunes the shipped pre-trained ``uit-tiny`` with the UIT recipe; ``"demo"`` trains the
    tiny model from random initialisation with InfoNCE (its "zero-shot" row is the untrained model, at
    chance), the baseline. ``out`` must be empty, missing
    or an earlier demo's output; any other folder is refused, naming it.
    """
    start = time.perf_counter()
    out = Path(out)
    previous = (out / DEMO_MARKER).is_file()
    if out.is_dir() and not previous and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and is not an earlier demo's output: choose an empty folder (--out)")
    config = _demo_config(config, out, device, quick)
    trainer = Trainer(config, overwrite=previous)
    atomic_write_text(out / DEMO_MARKER, "written by uit-reid demo\n")
    test = trainer.dataset.test
    if test is None:
        raise ValueError(f"{config.data.root}: the demo dataset has no test split")
    zero_shot = trainer.evaluate(test)
    logger.info("zero-shot (%s weights): %s", config.model.pretrained, metrics_line(zero_shot))
    result = trainer.fit()
    logger.info("trained in %.0f s", time.perf_counter() - start)
    fine_tuned = result["test"]
    summary = json.loads((out / "metrics.json").read_text())  # the trainer's: fine-tuned test metrics
    atomic_write_text(out / "metrics.json", json.dumps({**summary, ZERO_SHOT_KEY: zero_shot}, indent=2) + "\n")

    _index_and_show(out, result["model_dir"], test, device)
    logger.info("demo finished in %.0f s; results in %s", time.perf_counter() - start, out)
    return {ZERO_SHOT_KEY: zero_shot, "fine_tuned": fine_tuned}


def _demo_config(config: str | Path, out: Path, device: str, quick: bool) -> TrainConfig:
    """The demo's config: data and run folders under ``out``; ``quick``: a few steps on a small dataset."""
    overrides = [
        f"data.root={json.dumps(str(out / 'data'))}",
        f"train.output_dir={json.dumps(str(out))}",
        f"train.device={json.dumps(device)}",
    ]
    if quick:
        overrides += [
            "train.max_steps=4",
            "train.epochs=1",
            "train.log_every=1",
            "synthetic.num_ids=48",
            "synthetic.images_per_id=2",
            "synthetic.num_val_ids=8",
            "synthetic.num_test_ids=8",
            "data.batch_size=16",
        ]
    return load_config(config).override(overrides)


def _index_and_show(out: Path, model_dir: Path, test: Split, device: str) -> None:
    """Index the test gallery with the trained model (``gallery.faiss``), draw a few queries' top 5
    (``results.png``) and the training curve (``training_curve.png``)."""
    model = load_model(model_dir, device=device)
    q, q_pids, g, g_pids = encode_split(model, test, device=device)
    paths = [str(Path(r.image_path).resolve()) for r in test.records]
    index = GalleryIndex(dim=g.shape[1], kind="flat", fingerprint=model.encoder.fingerprint())
    index.add(g.numpy(), paths)
    pid_of = dict(zip(paths, g_pids.tolist()))

    queries = test.queries
    picks = np.linspace(0, len(queries.captions) - 1, NUM_QUERIES).astype(int).tolist()
    panels = []
    for qi in picks:
        text, pid = queries.captions[qi], int(queries.pids[qi])
        scores, ids = index.search(q[qi : qi + 1].numpy(), k=5)
        hits = ranked_hits(scores[0], ids[0], pid_of=pid_of.get, query_pid=pid)
        marks = " ".join("+" if h.correct else "-" for h in hits)
        logger.info("query: %s\n  top-5 (+ right person, - wrong): [%s]", text, marks)
        panels.append(render_results(text, hits))
    _stack_vertically(panels).save(out / "results.png")
    if model.tir_head is not None:
        restoration_figure(model, test).save(out / "tir.png")
    plot_training_curve(out / "metrics.jsonl", out / "training_curve.png")
    index.save(out / "gallery.faiss")


def _stack_vertically(images: list[Image.Image]) -> Image.Image:
    width = max(im.width for im in images)
    canvas = Image.new("RGB", (width, sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        canvas.paste(im, (0, y))
        y += im.height
    return canvas


def plot_training_curve(metrics_path: Path, out_path: Path) -> bool:
    """Loss and val R1 against steps from a run's ``metrics.jsonl``; False when matplotlib is missing.

    Draws on a `matplotlib.figure.Figure` with its own Agg canvas, never through pyplot: the caller's
    backend (a notebook's, say) and pyplot's figure list stay as they were.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: no training curve (pip install 'uit_reid[plot]')")
        return False
    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    train = [r for r in records if "split" not in r]
    val = [r for r in records if r.get("split") == "val"]
    fig = Figure(figsize=(7, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [r["R1"] for r in val], "o-", color="tab:red", label="val R1")
        ax2.set_ylabel("val R1 (%)", color="tab:red")
    ax.set_title("uit-reid demo: training curve")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    return True
