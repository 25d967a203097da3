"""The reference trainer: the training loop with AMP, DDP (under torchrun), exact resume and evaluation.

``Trainer(config).fit()`` trains, evaluates on val every ``eval_every`` epochs, keeps the best model
by val R1 (the last one without a val split) and reports test metrics once at the end. It uses the
pieces a custom loop uses: `uit_reid.factory.build_model`, `uit_reid.data.build_train_loader`,
`uit_reid.evaluation.evaluate_model` (`uit_reid.train._setup` builds them). The run directory is described in the training docs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from uit_reid import checkpoint as ckpt
from uit_reid.data import PedesDataset, Split
from uit_reid.device import amp_dtype, autocast, resolve_device
from uit_reid.distributed import is_distributed, rank, require_process_group, world_size
from uit_reid.evaluation import evaluate_model
from uit_reid.factory import build_model
from uit_reid.io import FolderLock, atomic_write_text, remove_stale_temp_files
from uit_reid.model import UITModel
from uit_reid.tables import metrics_line
from uit_reid.train._reporting import LOG_NAME, LossWindow, RunLog, log_to_file
from uit_reid.train._selection import SELECT_ON_TEST_LABEL, ModelSelection, test_summary
from uit_reid.train._setup import optimisation, run_dataset, train_loader
from uit_reid.train.config import TrainConfig
from uit_reid.train.tir_warmup import warm_up_run

__all__ = ["NonFiniteLossError", "Trainer"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before the optimiser step."""


class Trainer:
    """Train a `UITModel` as a `TrainConfig` describes.

    Under torchrun the process group must exist before the trainer is built (`uit-reid train`
    creates it; see `uit_reid.distributed.torchrun_process_group`). The trainer draws its random
    numbers from its own streams seeded with ``train.seed + rank`` (`RngStreams`): building it,
    `fit` and `evaluate` leave the caller's torch, Python and NumPy generators as they were.

    Args:
        config: the recipe.
        resume: continue from ``<output_dir>/last.pt`` (``True``) or from a given checkpoint path.
        dataset: an already loaded dataset (otherwise ``config.data.root`` is read).
        overwrite: start a fresh run in an output folder that is not empty (otherwise refused).
    """

    def __init__(
        self, config: TrainConfig, resume: bool | str | os.PathLike = False,
        dataset: PedesDataset | None = None, overwrite: bool = False,
    ) -> None:
        require_process_group()
        self.config = config
        self.run_dir = Path(config.train.output_dir)
        # one run per folder: fit() holds the lock (so a Trainer built twice in one session does not lock
        # itself out); here it is only tried, so that a run going on in the folder is named at once
        self._lock = FolderLock(self.run_dir, "uit-reid train run") if rank() == 0 else None
        if self._lock is not None:
            self._lock.acquire().release()
        ckpt.check_run_dir(self.run_dir, bool(resume), overwrite)  # before any rank writes anything
        self._saved_step: int | None = None  # step of the last checkpoint written or resumed from
        self._setup_process()
        with self.rng.active():
            self._setup(resume, dataset)

    def _setup(self, resume: bool | str | os.PathLike, dataset: PedesDataset | None) -> None:
        """Data, model, loader, optimiser, logs and (``resume``) the saved state, in that order."""
        config = self.config
        self.dataset = run_dataset(config, self.is_main) if dataset is None else dataset
        if self.dataset.train is None:
            raise ValueError(f"{self.dataset.root}: the dataset has no train split")
        if self.is_main:
            for line in self.dataset.summary().splitlines():  # one record a line: log arguments are escaped
                logger.info("%s", line)
            if self.dataset.val is None:
                logger.info("no val split: keeping the last checkpoint only (never choosing on test)")
        self._setup_model()
        self.loader = train_loader(config, self.model, self.dataset.train, self.device)
        self.optimizer, self.scheduler, self.scaler, self.steps_per_epoch, self.total_steps = optimisation(
            config, self.model, self.loader, self.device, self.amp_dtype)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.selection = ModelSelection(self.run_dir, self.config)
        self.log = RunLog(self.run_dir, self.is_main, config.train.report_to, config.to_dict())
        if resume:
            self._restore(self.run_dir / "last.pt" if resume is True else Path(resume))

    def _setup_process(self) -> None:
        """Rank, device, precision and this trainer's random streams (the process group is the caller's)."""
        self.rank, self.world_size = rank(), world_size()
        self.is_main = self.rank == 0
        self.device = resolve_device(self.config.train.device)
        if is_distributed() and self.device.type == "cuda" and self.device.index is not None:
            current = torch.cuda.current_device()
            if current != self.device.index:  # NCCL's collectives run on the current device
                raise RuntimeError(
                    f"train.device is {self.device} but this process's current CUDA device is cuda:{current}: "
                    f"call torch.cuda.set_device({self.device.index}) before building the Trainer")
        self.amp_dtype = amp_dtype(self.config.train.precision, self.device)
        self.rng = ckpt.RngStreams(self.config.train.seed + self.rank, self.device)

    def _setup_model(self) -> None:
        """The model, its DDP wrapper and (optionally) the compiled forward."""
        c = self.config  # the model records its training resize, so evaluation and indexing resize alike
        self.model = build_model(c.model, c.loss, self.dataset.num_classes, interpolation=c.data.interpolation).to(self.device)
        self.ddp_model: torch.nn.Module = self.model
        if is_distributed():
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids)
        self.forward_model = torch.compile(self.ddp_model) if self.config.train.compile else self.ddp_model

    def _checkpoint(self) -> None:
        rng_states = ckpt.capture_rng_states_of_all_ranks()  # collective: every rank takes part
        self._saved_step = self.step
        if not self.is_main:
            return
        ckpt.save_checkpoint(
            self.run_dir / "last.pt",
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), rng=rng_states,
            step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch, **self.selection.state_dict(),
            world_size=self.world_size, config=json.dumps(self.config.to_dict()),
        )

    def _restore(self, path: Path) -> None:
        state = ckpt.restore_training_state(
            path, self.rank, self.world_size, self.device,
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
        )
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self._saved_step = self.step
        self.selection.load_state_dict(state)
        if self.is_main:
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    def fit(self) -> dict[str, Any]:
        """Train to the end, evaluate, and return ``{"test": metrics, "val_best_R1": ..., "model_dir": ...}``.

        Holds the run folder's `FolderLock` while it runs: another process's run into the same folder
        stops at once, naming this one. The ``uit_reid`` log records of the run go to ``out.log`` too.
        """
        if self._lock is not None:
            self._lock.acquire()
        try:
            with self.rng.active(), log_to_file(self.run_dir / LOG_NAME, fresh=self.step == 0, enabled=self.is_main):
                if self._lock is not None:
                    for folder in (self.run_dir, self.run_dir / "best", self.run_dir / "last"):
                        if folder.is_dir():  # what a killed run's writes left behind: nobody else writes here
                            remove_stale_temp_files(folder)
                return self._fit()
        finally:
            if self._lock is not None:
                self._lock.release()

    def _fit(self) -> dict[str, Any]:
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.toml", self.config.to_toml())
        self.log.open(fresh=self.step == 0)  # a fresh run in a used folder starts a fresh log
        if self.step == 0:  # a resumed run has its warmed decoder in the checkpoint
            warm_up_run(self.model, self.loader, self.config, self.device, self.amp_dtype, self.log.write)
        self.model.train()
        progress = tqdm(total=self.total_steps, initial=self.step, disable=not self.is_main, desc="train", dynamic_ncols=True)
        window = LossWindow()
        while self.step < self.total_steps and self.epoch < self.config.train.epochs:
            self._train_epoch(progress, window)
        progress.close()
        return self._finish()

    def _train_epoch(self, progress: tqdm, window: LossWindow) -> None:
        """The rest of the current epoch (all of it unless resumed mid-epoch), then its evaluation."""
        self.loader.batch_sampler.set_epoch(self.epoch, start=self.batch_in_epoch)
        for batch in self.loader:
            if self._forward_backward(batch, window):
                self._optimizer_step(progress, window)
                if self.step >= self.total_steps:
                    break
        stop = self.step >= self.total_steps
        if self.batch_in_epoch >= self.steps_per_epoch * self.config.optim.accum_steps or stop:
            finished, self.epoch, self.batch_in_epoch = self.epoch, self.epoch + 1, 0
            if (finished + 1) % self.config.train.eval_every == 0 or self.epoch >= self.config.train.epochs or stop:
                self._validate(finished)
            self._checkpoint()

    def _forward_backward(self, batch: dict[str, torch.Tensor], window: LossWindow) -> bool:
        """One micro-batch; True when it completes an accumulation window (time for an optimiser step)."""
        accum = self.config.optim.accum_steps
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        sync = self.batch_in_epoch % accum == accum - 1
        no_sync = self.ddp_model.no_sync if (is_distributed() and not sync) else contextlib.nullcontext
        with no_sync():
            with autocast(self.device, self.amp_dtype):
                out = self.forward_model(batch)
            self.scaler.scale(out["loss"] / accum).backward()
        # the step's one host sync, after the backward is queued (a GPU keeps working while the CPU
        # waits) and before anything reaches the optimiser
        self._check_finite(out)
        self.batch_in_epoch += 1
        window.add(out, self.config.data.batch_size * self.world_size)
        return sync

    def _optimizer_step(self, progress: tqdm, window: LossWindow) -> None:
        cfg = self.config
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
            lr = self.optimizer.param_groups[0]["lr"]
            record = {"step": self.step, "epoch": self.epoch, "lr": lr, **window.summary()}
            self.log.write(record)
            progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", img_s=f"{record['images_per_s']:.0f}")
            window.reset()
        every = cfg.train.checkpoint_every_steps
        if every and self.step % every == 0:
            self._checkpoint()

    def _check_finite(self, out: dict[str, torch.Tensor]) -> None:
        finite = torch.isfinite(out["loss"].detach()).float()
        if is_distributed():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in out.items())
            last = self.run_dir / "last.pt"
            kept = (f"{last} holds the state at step {self._saved_step} (--resume continues from there)"
                    if self._saved_step is not None else
                    f"no checkpoint of this run was written yet (nothing in {last} to resume from)")
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch}): {parts}. "
                f"Training stopped before the optimiser step; {kept}. Lower optim.lr or enable optim.grad_clip"
            )

    def evaluate(self, split: Split, model: UITModel | None = None) -> dict[str, float]:
        """Text-to-image metrics of ``model`` (default: the model being trained) on ``split``."""
        d, model = self.config.data, self.model if model is None else model
        with self.rng.active():
            return evaluate_model(model, split, d.eval_batch_size, self.device, min(d.num_workers, 4), self.amp_dtype)

    def _validate(self, epoch: int) -> None:
        if self.config.train.select_on_test and self.dataset.test is not None and self.is_main:
            # the authors' protocol: evaluate test every epoch, keep the best (labelled as such)
            metrics = self.evaluate(self.dataset.test)
            self.log.write({"step": self.step, "epoch": epoch, "split": "test_per_epoch", **metrics})
            self.selection.consider_test(epoch, metrics, self.model)
        if self.is_main and self.dataset.val is not None:
            metrics = self.evaluate(self.dataset.val)
            self.log.write({"step": self.step, "epoch": epoch, "split": "val", **metrics})
            logger.info("epoch %d val: %s", epoch, metrics_line(metrics))
            self.selection.consider_val(metrics, self.model)
        if is_distributed():
            dist.barrier()

    def _finish(self) -> dict[str, Any]:
        """Export the chosen model, evaluate it on test, close the run."""
        result: dict[str, Any] = {"steps": self.step}
        if self.is_main:
            if self.dataset.val is not None and (self.run_dir / "best").is_dir():
                model_dir = self.run_dir / "best"
                chosen = UITModel.from_pretrained(model_dir, device=self.device)
            else:
                model_dir = self.run_dir / "last"
                self.model.save_pretrained(model_dir, card=self.selection.card({}))
                chosen = self.model
            result["model_dir"] = str(model_dir)
            if self.dataset.val is not None:
                result["val_best_R1"] = self.selection.best_r1
            if self.dataset.test is not None:
                result["test"] = test = self.evaluate(self.dataset.test, chosen)
                self.log.write({"step": self.step, "epoch": self.epoch, "split": "test", **test})
                best_test = self.selection.best_test
                if best_test is not None:
                    result["test_selected_on_test"] = best_test
                    logger.info("test, best epoch on test (%s): %s", SELECT_ON_TEST_LABEL, metrics_line(best_test))
                summary = test_summary(test, best_test)
                atomic_write_text(self.run_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
                self.selection.write_final_card(model_dir, chosen, test, self.dataset.val is not None)
                logger.info("test (%s): %s", model_dir.name, metrics_line(test))
        self.log.close()
        if is_distributed():
            dist.barrier()
        return result

