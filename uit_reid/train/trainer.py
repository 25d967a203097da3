"""The reference trainer: one consumer of the public API, with AMP, DDP, exact resume and evaluation.

``Trainer(config).fit()`` trains, evaluates every ``eval_every`` epochs on the **val** split,
keeps the best model by val R1 (or, with no val split, the last one), and reports test metrics
once at the end. Under ``torchrun`` it uses DDP (NCCL on GPU, gloo on CPU); the batch-level
losses see the global batch through `uit_reid.distributed.gather_with_grad`.

Run directory (``config.train.output_dir``): ``config.toml``, ``metrics.jsonl`` (one JSON object
per log step and evaluation), ``last.pt`` (full training state), ``best/`` or ``last/`` (the chosen
model, `UITModel.save_pretrained` format) and ``metrics.json`` (final test metrics).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from uit_reid import augment, retrieval
from uit_reid.data import (
    JSONL_NAME,
    IdentitySampler,
    PedesDataset,
    RandomBatchSampler,
    Split,
    TrainCollate,
    TrainDataset,
    build_batch_sampler,
    build_eval_loaders,
    load_dataset,
    make_synthetic,
)
from uit_reid.distributed import all_reduce_mean, is_distributed, rank, world_size
from uit_reid.encoders import CLIPDualEncoder
from uit_reid.io import atomic_write_text
from uit_reid.model import UITModel
from uit_reid.tir import TIRHead
from uit_reid.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    check_run_dir,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from uit_reid.train.config import TrainConfig
from uit_reid.train.optim import build_optimizer, warmup_cosine

__all__ = ["NonFiniteLossError", "Trainer", "build_model", "encode_split", "evaluate_model", "load_model"]

logger = logging.getLogger(__name__)


SELECT_ON_TEST_KEY = "selected_on_test"
SELECT_ON_TEST_LABEL = "authors' protocol: best test R1 over epochs (optimistic; not a held-out figure)"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before the optimiser step."""


def build_model(config: TrainConfig, num_classes: int) -> UITModel:
    """The `UITModel` a config describes (weights from ``model.pretrained``)."""
    m, lw = config.model, config.loss
    encoder = CLIPDualEncoder.from_open_clip(
        m.name, pretrained=m.pretrained, image_size=tuple(m.image_size), context_length=m.context_length
    )
    tir: bool | TIRHead = False
    if m.tir and lw.tir > 0:
        tir = TIRHead(
            encoder.embed_dim,
            encoder.grid_size,
            encoder.patch_size,
            width=m.tir_width,
            depth=m.tir_depth,
            heads=m.tir_heads,
            layout=m.tir_layout,
        )
    weights = {"sdm": lw.sdm, "id": lw.id, "tir": lw.tir, "cmt": lw.cmt, "itc": lw.itc}
    return UITModel(
        encoder,
        num_classes=num_classes if lw.id > 0 else 0,
        tir=tir,
        loss_weights=weights,
        logit_scale=lw.logit_scale,
        cmt_margin=lw.cmt_margin,
        mask_ratio=m.mask_ratio,
        tir_grayscale=m.tir_grayscale,
    )


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[UITModel, Sequence[int]]:
    """Load a trained model from a ``save_pretrained`` directory or a trainer's ``last.pt``.

    Returns the model (in eval mode) and its input image size (height, width).
    """
    path = Path(path)
    if path.is_dir():
        model = UITModel.from_pretrained(path, device=device)
    elif path.is_file():
        state = load_checkpoint(path)
        if not isinstance(state.get("config"), str) or not isinstance(state.get("model"), dict):
            raise CheckpointError(f"{path} is a training checkpoint without a model and its config")
        config = TrainConfig.from_dict(json.loads(state["config"]), source=str(path))
        config.model.pretrained = None
        classifier = state["model"].get("classifier.weight")
        model = build_model(config, int(classifier.shape[0]) if classifier is not None else 0)
        model.load_state_dict(state["model"])
        model = model.to(device)
    else:
        raise FileNotFoundError(f"checkpoint not found: {path} (a model directory or a last.pt file)")
    return model.eval(), model.encoder.image_size


@torch.no_grad()
def encode_split(
    model: UITModel,
    split: Split,
    image_size: Sequence[int],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    interpolation: str = "bicubic",
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised (query features, query pids, gallery features, gallery pids) of an eval split.

    Gallery images are decoded by ``num_workers`` loader processes while the model encodes;
    ``progress`` shows a bar over the gallery batches (on a terminal).
    """
    tokenizer = model.encoder.tokenize
    gallery_loader, query_loader = build_eval_loaders(
        split, tokenizer, tuple(image_size), batch_size=batch_size, num_workers=num_workers,
        transform=augment.build_eval_transform(image_size, interpolation=interpolation),
    )
    device = torch.device(device)
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()
    g_feats, g_pids, q_feats, q_pids = [], [], [], []
    with autocast:
        for batch in tqdm(gallery_loader, desc="encoding gallery", unit="batch", disable=None if progress else True):
            g_feats.append(model.encode_images(batch["images"].to(device, non_blocking=True)).float().cpu())
            g_pids.append(batch["pids"])
        for batch in query_loader:
            q_feats.append(model.encode_texts(batch["text_ids"].to(device, non_blocking=True)).float().cpu())
            q_pids.append(batch["pids"])
    model.train(was_training)
    return torch.cat(q_feats), torch.cat(q_pids), torch.cat(g_feats), torch.cat(g_pids)


def evaluate_model(
    model: UITModel,
    split: Split,
    image_size: Sequence[int],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    interpolation: str = "bicubic",
) -> dict[str, float]:
    """Text-to-image R1/R5/R10/mAP/mINP (percent) of ``model`` on an evaluation split."""
    q, q_pids, g, g_pids = encode_split(
        model, split, image_size, batch_size, device, num_workers, amp_dtype, interpolation
    )
    return retrieval.evaluate(q @ g.t(), q_pids, g_pids)


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix-style), so per-sample seeds do not collide."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class _SeededItems(Dataset):
    """Give every (epoch, index) its own RNG stream for augmentation.

    The random flips, crops, erasing and text augmentation of a sample then depend only on
    ``(seed, epoch, index)``, not on which worker loads it or whether the run was resumed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        sample_seed = _mix_seed(self.seed, epoch, index)
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            random.seed(sample_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)


class _EpochBatches:
    """Batch sampler view: one epoch's batches of ``sampler`` from ``start`` on, tagged with the epoch."""

    def __init__(self, sampler: IdentitySampler | RandomBatchSampler, epoch: int, start: int, limit: int) -> None:
        sampler.set_epoch(epoch)
        self.batches = list(sampler)[:limit][start:]
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batches:
            yield [(self.epoch, i) for i in batch]

    def __len__(self) -> int:
        return len(self.batches)


def _resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Trainer:
    """Train a `UITModel` as a `TrainConfig` describes.

    Args:
        config: the recipe.
        resume: continue from ``<output_dir>/last.pt`` (``True``) or from a given checkpoint path.
        dataset: an already loaded dataset (otherwise ``config.data.root`` is read).
        overwrite: start a fresh run in an output folder that is not empty (otherwise refused).
    """

    def __init__(
        self,
        config: TrainConfig,
        resume: bool | str | os.PathLike = False,
        dataset: PedesDataset | None = None,
        overwrite: bool = False,
    ) -> None:
        self.config = config
        self.run_dir = Path(config.train.output_dir)
        check_run_dir(self.run_dir, bool(resume), overwrite)  # before any rank writes anything
        self._saved_step: int | None = None  # step of the last checkpoint written or resumed from
        self._owns_process_group = False
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and config.train.device != "cpu" else "gloo"
            dist.init_process_group(backend=backend)
            self._owns_process_group = True
        self.rank, self.world_size = rank(), world_size()
        self.is_main = self.rank == 0
        self.device = _resolve_device(config.train.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.amp_dtype = _amp_dtype(config.train.precision, self.device)
        self._seed_everything(config.train.seed + self.rank)

        if dataset is None and config.synthetic.generate:
            self._ensure_synthetic()
        self.dataset = dataset or load_dataset(
            config.data.root, format=config.data.format, on_missing=config.data.on_missing
        )
        if self.dataset.train is None:
            raise ValueError(f"{self.dataset.root}: the dataset has no train split")
        if self.is_main:
            logger.info("%s", self.dataset.summary())
            if self.dataset.val is None:
                logger.info("no val split: keeping the last checkpoint only (never choosing on test)")

        self.model = build_model(config, self.dataset.num_classes).to(self.device)
        self.tokenizer = self.model.encoder.tokenize
        self.ddp_model: torch.nn.Module = self.model
        if is_distributed():
            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.forward_model = torch.compile(self.ddp_model) if config.train.compile else self.ddp_model

        d, o = config.data, config.optim
        transform = augment.build_train_transform(
            tuple(config.model.image_size), padding=d.padding, erasing_p=d.erasing_p,
            erasing_fill=d.erasing_fill, interpolation=d.interpolation,
        )
        text_aug = augment.TextAugment(p=d.text_aug_p) if d.text_aug_p > 0 else None
        self.token_augment = (
            augment.TokenCorruption.for_tokenizer(self.model.encoder.tokenizer) if d.token_corruption else None
        )
        self.train_items = _SeededItems(TrainDataset(self.dataset.train, transform, text_aug), config.train.seed)
        self.sampler = build_batch_sampler(
            d.sampler, self.train_items.dataset.pids, d.batch_size, d.num_instances, seed=config.train.seed
        )
        self.batches_per_epoch = len(self.sampler)
        if self.batches_per_epoch < o.accum_steps:
            raise ValueError(
                f"an epoch has {self.batches_per_epoch} batches of {d.batch_size}; fewer than "
                f"optim.accum_steps={o.accum_steps}"
            )
        self.steps_per_epoch = self.batches_per_epoch // o.accum_steps
        self.total_steps = config.train.epochs * self.steps_per_epoch
        if config.train.max_steps:
            self.total_steps = min(self.total_steps, config.train.max_steps)
        self.optimizer = build_optimizer(
            self.model, o.lr, o.weight_decay, tuple(o.betas), o.eps, o.head_lr_mult, o.bias_lr_mult
        )
        self.scheduler = warmup_cosine(
            self.optimizer,
            self.total_steps,
            int(round(o.warmup_epochs * self.steps_per_epoch)),
            o.warmup_factor,
            o.min_lr_factor,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_r1 = -math.inf
        self.best_test: dict[str, Any] | None = None  # train.select_on_test: best test epoch so far
        self.history: list[dict[str, Any]] = []
        self._tb = None
        if resume:
            path = self.run_dir / "last.pt" if resume is True else Path(resume)
            self._restore(path)

    # ------------------------------------------------------------------ helpers
    def _ensure_synthetic(self) -> None:
        """Write the synthetic dataset into ``data.root`` once (rank 0; the others wait)."""
        root, syn = Path(self.config.data.root), self.config.synthetic
        if self.is_main and not (root / JSONL_NAME).is_file():
            logger.info("generating the synthetic dataset in %s", root)
            make_synthetic(
                root, num_ids=syn.num_ids, images_per_id=syn.images_per_id, seed=syn.seed,
                num_val_ids=syn.num_val_ids, num_test_ids=syn.num_test_ids, workers=syn.workers,
            )
        if is_distributed():
            dist.barrier()

    @staticmethod
    def _seed_everything(seed: int) -> None:
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.history.append(record)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            prefix = record.get("split", "train")
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])

    def _open_tensorboard(self) -> None:
        if not self.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed
            return
        self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def _checkpoint(self) -> None:
        rng_states = [capture_rng_state()]
        if is_distributed():
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        self._saved_step = self.step
        if not self.is_main:
            return
        save_checkpoint(
            self.run_dir / "last.pt",
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=rng_states,
            step=self.step,
            epoch=self.epoch,
            batch_in_epoch=self.batch_in_epoch,
            best_r1=self.best_r1,
            best_test=json.dumps(self.best_test),
            world_size=self.world_size,
            config=json.dumps(self.config.to_dict()),
        )

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        if state["world_size"] != self.world_size:
            raise ValueError(f"{path} was written by {state['world_size']} processes; this run has {self.world_size}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"][self.rank]
        rng["torch"] = rng["torch"].cpu()
        restore_rng_state(rng)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self._saved_step = self.step
        self.best_r1 = state["best_r1"]
        self.best_test = json.loads(state.get("best_test", "null"))
        if self.is_main:
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    def _loader(self, epoch: int, start: int) -> DataLoader:
        d = self.config.data
        return DataLoader(
            self.train_items,
            batch_sampler=_EpochBatches(self.sampler, epoch, start, self.steps_per_epoch * self.config.optim.accum_steps),
            collate_fn=TrainCollate(self.tokenizer, self.token_augment),
            num_workers=d.num_workers,
            pin_memory=self.device.type == "cuda",
            # a private generator: creating the iterator must not draw from the global RNG, or a
            # resumed run (which creates one mid-epoch) would drift from an uninterrupted one
            generator=torch.Generator().manual_seed(_mix_seed(self.config.train.seed, epoch, start)),
        )

    def _check_finite(self, out: dict[str, torch.Tensor]) -> None:
        finite = torch.isfinite(out["loss"].detach()).float()
        if is_distributed():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in out.items())
            last = self.run_dir / "last.pt"
            kept = (
                f"{last} holds the state at step {self._saved_step} (--resume continues from there)"
                if self._saved_step is not None
                else f"no checkpoint of this run was written yet (nothing in {last} to resume from)"
            )
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch}): {parts}. "
                f"Training stopped before the optimiser step; {kept}. Lower optim.lr or enable optim.grad_clip"
            )

    # ------------------------------------------------------------------ public
    def evaluate(self, split: Split) -> dict[str, float]:
        """Text-to-image metrics of the current model on ``split``."""
        return evaluate_model(
            self.model,
            split,
            self.config.model.image_size,
            self.config.data.eval_batch_size,
            self.device,
            num_workers=min(self.config.data.num_workers, 4),
            amp_dtype=self.amp_dtype,
            interpolation=self.config.data.interpolation,
        )

    def fit(self) -> dict[str, Any]:
        """Train to the end, evaluate, and return ``{"test": metrics, "val": best val metrics, "model_dir": ...}``."""
        cfg = self.config
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.toml", cfg.to_toml())
            if self.step == 0:  # a fresh run in a used folder starts a fresh log; a resumed one appends
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            self._open_tensorboard()
        accum = cfg.optim.accum_steps
        batch_images = cfg.data.batch_size * self.world_size
        self.model.train()
        progress = tqdm(
            total=self.total_steps, initial=self.step, disable=not self.is_main, desc="train", dynamic_ncols=True
        )
        window_start, window_images = time.perf_counter(), 0
        window_losses: dict[str, torch.Tensor] = {}  # summed on the device: no sync per step
        window_count = 0
        stop = self.step >= self.total_steps
        while not stop and self.epoch < cfg.train.epochs:
            loader = self._loader(self.epoch, self.batch_in_epoch)
            for batch in loader:
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                micro = self.batch_in_epoch % accum
                sync = micro == accum - 1
                no_sync = self.ddp_model.no_sync if (is_distributed() and not sync) else contextlib.nullcontext
                with no_sync():
                    autocast = (
                        torch.autocast(self.device.type, dtype=self.amp_dtype)
                        if self.amp_dtype is not None
                        else contextlib.nullcontext()
                    )
                    with autocast:
                        out = self.forward_model(batch)
                    self.scaler.scale(out["loss"] / accum).backward()
                # the step's one host sync, after the backward is queued (a GPU keeps working while
                # the CPU waits) and before anything reaches the optimiser
                self._check_finite(out)
                self.batch_in_epoch += 1
                window_images += batch_images
                for k, v in out.items():
                    window_losses[k] = window_losses.get(k, 0.0) + v.detach()
                window_count += 1
                if not sync:
                    continue
                if cfg.optim.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.step += 1
                progress.update(1)
                if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - window_start
                    # ID and TIR are means over this rank's rows: average them over ranks (one collective)
                    means = all_reduce_mean({k: v / window_count for k, v in window_losses.items()})
                    record = {
                        "step": self.step,
                        "epoch": self.epoch,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "images_per_s": window_images / max(elapsed, 1e-9),
                        **{k: float(v) for k, v in means.items()},
                    }
                    self._log(record)
                    progress.set_postfix(
                        loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", img_s=f"{record['images_per_s']:.0f}"
                    )
                    window_start, window_images, window_losses, window_count = time.perf_counter(), 0, {}, 0
                every = cfg.train.checkpoint_every_steps
                if every and self.step % every == 0:
                    self._checkpoint()
                if self.step >= self.total_steps:
                    stop = True
                    break
            if self.batch_in_epoch >= self.steps_per_epoch * accum or stop:
                finished_epoch = self.epoch
                self.epoch += 1
                self.batch_in_epoch = 0
                if (finished_epoch + 1) % cfg.train.eval_every == 0 or self.epoch >= cfg.train.epochs or stop:
                    self._validate(finished_epoch)
                self._checkpoint()
        progress.close()
        return self._finish()

    def _validate(self, epoch: int) -> None:
        if self.config.train.select_on_test and self.dataset.test is not None and self.is_main:
            self._select_on_test(epoch)
        if self.dataset.val is None:
            if is_distributed():
                dist.barrier()
            return
        if self.is_main:
            metrics = self.evaluate(self.dataset.val)
            self._log({"step": self.step, "epoch": epoch, "split": "val", **metrics})
            logger.info("epoch %d val: %s", epoch, _format_metrics(metrics))
            if metrics["R1"] > self.best_r1:
                self.best_r1 = metrics["R1"]
                self.model.save_pretrained(self.run_dir / "best")
        if is_distributed():
            dist.barrier()

    def _select_on_test(self, epoch: int) -> None:
        """The authors' protocol (``train.select_on_test``): evaluate test every epoch, keep the best."""
        metrics = self.evaluate(self.dataset.test)
        self._log({"step": self.step, "epoch": epoch, "split": "test_per_epoch", **metrics})
        if self.best_test is None or metrics["R1"] > self.best_test["R1"]:
            self.best_test = {"epoch": epoch, **metrics}
            self.model.save_pretrained(self.run_dir / "best_test")

    def _finish(self) -> dict[str, Any]:
        result: dict[str, Any] = {"steps": self.step}
        if self.is_main:
            if self.dataset.val is not None and (self.run_dir / "best").is_dir():
                model_dir = self.run_dir / "best"
                chosen = UITModel.from_pretrained(model_dir, device=self.device)
            else:
                model_dir = self.run_dir / "last"
                self.model.save_pretrained(model_dir)
                chosen = self.model
            result["model_dir"] = str(model_dir)
            if self.dataset.val is not None:
                result["val_best_R1"] = self.best_r1
            if self.dataset.test is not None:
                trainer_model, self.model = self.model, chosen
                try:
                    test = self.evaluate(self.dataset.test)
                finally:
                    self.model = trainer_model
                result["test"] = test
                self._log({"step": self.step, "epoch": self.epoch, "split": "test", **test})
                summary: dict[str, Any] = dict(test)
                if self.best_test is not None:
                    result["test_selected_on_test"] = self.best_test
                    summary[SELECT_ON_TEST_KEY] = {"protocol": SELECT_ON_TEST_LABEL, **self.best_test}
                    logger.info("test, best epoch on test (%s): %s", SELECT_ON_TEST_LABEL, _format_metrics(self.best_test))
                atomic_write_text(self.run_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
                logger.info("test (%s): %s", model_dir.name, _format_metrics(test))
        if self._tb is not None:
            self._tb.close()
        if is_distributed():
            dist.barrier()
        if self._owns_process_group:
            dist.destroy_process_group()
        return result


def _format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())
