"""How fast does the TIR decoder learn to read the caption? Decoder-alone training, text use measured as it goes.

    python benchmarks/tir_warmup.py --data runs/demo/data --steps 300 --eval-every 25 \
        --variant sen:pixels:2.5e-3 --variant sen:patch_norm:2.5e-3 --json benchmarks/results/tir_warmup.json

Builds the demo's model (`demo_uit`: the shipped `uit-tiny`, its TIR decoder fresh), then trains the
decoder alone on the frozen encoders (`uit_reid.train.tir_warmup.warm_up_decoder`) with the demo's
batches, and every ``--eval-every`` steps measures `uit_reid.evaluation.evaluate_text_use` on 512 test
images (true vs swapped / empty / another person's caption). A variant is
``layout:target:lr[:head_lr_mult]`` (`uit_reid.tir.TIR_LAYOUTS`, `uit_reid.tir.TIR_TARGETS`). Each
variant starts from the same seed. Writes one curve per variant (JSON) and prints the first step at
which text use reaches 95%.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from uit_reid.evaluation import evaluate_text_use  # noqa: E402
from uit_reid.io import atomic_write_text  # noqa: E402
from uit_reid.train import Trainer, load_config  # noqa: E402
from uit_reid.train.tir_warmup import warm_up_decoder  # noqa: E402

logger = logging.getLogger("tir_warmup")


def run_variant(data: Path, variant: str, steps: int, eval_every: int, batch: int, seed: int) -> dict:
    """One decoder-alone run; its text-use curve."""
    layout, target, lr, *rest = variant.split(":")
    head_mult = float(rest[0]) if rest else 1.0
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config("demo_uit").override([
            f"data.root={json.dumps(str(data))}", f"train.output_dir={json.dumps(tmp)}",
            f"model.tir_layout={json.dumps(layout)}", f"model.tir_target={json.dumps(target)}",
            f"data.batch_size={batch}", f"train.seed={seed}", "synthetic.generate=false",
        ])
        trainer = Trainer(config, overwrite=True)
        model, test = trainer.model, trainer.dataset.test
        curve: list[dict] = []
        start = time.perf_counter()

        def measure(step: int, loss: float) -> None:
            if step % eval_every == 0 or step == steps:
                with trainer.rng.active():
                    m = evaluate_text_use(model, test, device=trainer.device)
                curve.append({"step": step, "loss": loss, "seconds": round(time.perf_counter() - start, 1), **m})
                model.train()
                logger.info("%s step %d: loss %.4f text use %.1f (vs empty %.1f, other %.1f)",
                            variant, step, loss, m["text_use"], m["text_use_empty"], m["text_use_other"])

        with trainer.rng.active():
            zero = evaluate_text_use(model, test, device=trainer.device)
            curve.append({"step": 0, "seconds": 0.0, **zero})
            trainer.loader.batch_sampler.set_epoch(0)
            warm_up_decoder(model, trainer.loader, steps, float(lr), trainer.device, head_lr_mult=head_mult,
                            callback=measure)
    reached = next((c["step"] for c in curve if c["text_use"] >= 95.0), None)
    return {"variant": variant, "batch": batch, "seed": seed, "first_step_at_95": reached, "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the demo's dataset (runs/demo/data after `make demo`)")
    parser.add_argument("--variant", action="append", required=True, help="layout:target:lr[:head_lr_mult]")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the curves here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for variant in args.variant:
        results.append(run_variant(Path(args.data), variant, args.steps, args.eval_every, args.batch, args.seed))
        logger.info("%s: text use >= 95%% first at step %s", variant, results[-1]["first_step_at_95"])
        if args.json:
            load = os.getloadavg()
            atomic_write_text(args.json, json.dumps({"load_average": load, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
