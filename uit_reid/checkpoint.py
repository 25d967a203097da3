"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds model, optimiser, scheduler and grad-scaler state, the RNG states of torch
(CPU and CUDA), Python and NumPy, the position in the epoch and the global step. It is read back
with ``torch.load(weights_only=True)``: only tensors and plain containers, never code.

Integrity: torch writes checkpoints as zip archives with a CRC-32 of every record; `load_checkpoint`
verifies all of them before unpickling, so a flipped byte is reported (naming the file) instead of
resuming from silently wrong weights. `save_checkpoint` keeps the checkpoint it replaces as
``<name>.prev<suffix>`` (a hard link: no copy, no extra time) so there is a good one to go back to.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from uit_reid._bounds import check_torch_zip
from uit_reid.distributed import is_distributed, world_size
from uit_reid.io import atomic_torch_save, folder_contents, remove_stale_temp_files

__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "RngStreams",
    "capture_rng_state",
    "capture_rng_states_of_all_ranks",
    "check_run_dir",
    "load_checkpoint",
    "previous_checkpoint",
    "restore_rng_state",
    "restore_training_state",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1

_EXPECTED = "a last.pt written by uit-reid train (or a model folder written by save_pretrained)"


class CheckpointError(ValueError):
    """A checkpoint file that is corrupted or not a uit_reid checkpoint (the file is named)."""


def previous_checkpoint(path: str | os.PathLike) -> Path:
    """Where `save_checkpoint` keeps the checkpoint it replaced: ``last.pt`` -> ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def check_run_dir(run_dir: str | os.PathLike, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run in a folder that already holds files, unless told to.

    A fresh run would replace ``last.pt``, ``best/`` and ``metrics.json`` and restart the log.
    """
    run_dir = Path(run_dir)
    if resume or overwrite or not run_dir.is_dir():
        return
    shown = folder_contents(run_dir, 4)
    if shown:
        raise FileExistsError(
            f"run folder {run_dir} is not empty ({shown}); pass --resume to continue that run or "
            "--overwrite to replace it (Trainer(resume=True) / Trainer(overwrite=True))"
        )


class RngStreams:
    """Random streams a library object owns: torch's CPU generator (and ``device``'s when it is a GPU),
    Python's `random` and NumPy's global generator, seeded with ``seed`` as ``torch.manual_seed``,
    ``random.seed`` and ``np.random.seed`` would seed them, without touching the global ones.

    Code inside `active` draws from these streams through the usual global functions (model
    initialisation, dropout, DataLoader seeds, augmentation); on leaving, the streams are kept where
    they stopped and the caller's generators are put back as they were. So a `Trainer` draws exactly
    the numbers it drew when it seeded the globals itself, and a notebook's own random sequence does
    not move when it builds or fits one. Nested `active` blocks are one block.
    """

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        self.device = device if device.type == "cuda" else None
        np_state = np.random.RandomState(seed % 2**32).get_state()
        self._state: dict[str, Any] = {
            "torch": torch.Generator().manual_seed(seed).get_state(),
            "python": random.Random(seed).getstate(),
            "numpy": np_state,
        }
        if self.device is not None:  # seeded through the device's own generator, then given back
            caller = torch.cuda.get_rng_state(self.device)
            with torch.cuda.device(self.device):
                torch.cuda.manual_seed(seed)
            self._state["cuda"] = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(caller, self.device)
        self._active = False

    def _current(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
        if self.device is not None:
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _install(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        if self.device is not None:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Draw from these streams inside the block; the caller's generators are restored after it."""
        if self._active:  # inside an outer block: its streams are already in place
            yield
            return
        caller = self._current()
        self._install(self._state)
        self._active = True
        try:
            yield
        finally:
            self._active = False
            self._state = self._current()
            self._install(caller)


def capture_rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain lists (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def capture_rng_states_of_all_ranks() -> list[dict[str, Any]]:
    """`capture_rng_state` of every rank, in rank order (a collective call under DDP)."""
    state = capture_rng_state()
    if not is_distributed():
        return [state]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, state)
    return gathered


def restore_training_state(
    path: str | os.PathLike, rank: int, world_size: int, device: torch.device, **stateful: Any
) -> dict[str, Any]:
    """Load ``path`` into each ``name=object`` (model, optimizer, ...) and restore this rank's RNGs.

    Returns the checkpoint for the rest of its entries (step, epoch, ...). A checkpoint written by a
    different number of processes is refused: the data order and RNG streams would not continue.
    """
    state = load_checkpoint(path, map_location=device)
    if state["world_size"] != world_size:
        raise ValueError(f"{path} was written by {state['world_size']} processes; this run has {world_size}")
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    rng = state["rng"][rank]
    rng["torch"] = rng["torch"].cpu()
    restore_rng_state(rng)
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(path: str | os.PathLike, **state: Any) -> Path:
    """Write ``state`` (plus the format version) to ``path`` via a temp file and rename.

    A checkpoint already at ``path`` stays available as `previous_checkpoint` (hard link, where the
    file system has them).
    """
    path = Path(path)
    if path.is_file():
        prev = previous_checkpoint(path)
        link = prev.with_name(f".{prev.name}.link")
        try:
            link.unlink(missing_ok=True)
            os.link(path, link)
            os.replace(link, prev)
        except OSError as err:  # no hard links here: keep going without a previous checkpoint
            logger.debug("could not keep the previous checkpoint %s: %s", prev, err)
    remove_stale_temp_files(Path(path).parent, Path(path).name)  # an earlier save killed mid-write
    atomic_torch_save({"version": CHECKPOINT_VERSION, **state}, path)
    logger.debug("checkpoint written to %s", path)
    return path


def _starts_like_a_zip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, checksums first, without unpickling code.

    Raises `CheckpointError` naming the file: corrupted (a record fails its CRC-32; the message
    names the previous checkpoint when one exists) or not a uit_reid checkpoint at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    prev = previous_checkpoint(path)
    hint = (
        f"; the previous checkpoint {prev} is intact if it loads: resume from it with --resume {prev}"
        if prev.is_file() and prev != path
        else "; restore it from a backup or start a fresh run with --overwrite"
    )
    try:
        check_torch_zip(path)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        if zipfile.is_zipfile(path):
            bad = "the archive structure"
        elif _starts_like_a_zip(path):  # the central directory at the end is missing: cut short
            raise CheckpointError(f"checkpoint {path} is truncated (the file ends before the zip's directory)"
                                  f"{hint}") from None
        else:
            raise CheckpointError(f"{path} is not a uit_reid checkpoint (not a torch zip file); expected {_EXPECTED}") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupted ({bad} fails its checksum){hint}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch's message suggests weights_only=False: never pass that on
        kind = "holds Python objects that safe loading refuses" if "weights_only" in str(exc) else "cannot be read"
        raise CheckpointError(f"{path} is not a uit_reid checkpoint: it {kind}; expected {_EXPECTED}") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} is not a uit_reid training checkpoint (no version {CHECKPOINT_VERSION} state); expected {_EXPECTED}"
        )
    return state
