"""One run per folder (issue 20, finding 9): `FolderLock` and two real `uit-reid train` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uit_reid.io import LOCK_NAME, FolderInUseError, FolderLock
from uit_reid.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
HOLD = ("import sys, time\nfrom uit_reid.io import FolderLock\n"
        "lock = FolderLock(sys.argv[1], 'test holder').acquire()\nprint('held', flush=True)\ntime.sleep(120)\n")


def hold_in_child(folder: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_holder_is_refused_naming_the_first_and_a_kill_frees_the_folder(tmp_path) -> None:
    folder = tmp_path / "out"
    child = hold_in_child(folder)
    try:
        with pytest.raises(FolderInUseError) as exc:
            FolderLock(folder, "index build").acquire()
        message = str(exc.value)
        assert message.startswith(f"{folder} is in use by another index build (pid {child.pid} on ")
        assert message.endswith("; wait for it to finish or choose another folder") and "-c" in message
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert (folder / LOCK_NAME).exists()  # a kill -9 leaves the file, but not the lock
    with FolderLock(folder, "index build") as lock:
        assert lock.held and str(os.getpid()) in (folder / LOCK_NAME).read_text()
    assert not (folder / LOCK_NAME).exists() and not lock.held


def test_the_lock_file_does_not_make_a_folder_look_used(tmp_path) -> None:
    from uit_reid.checkpoint import check_run_dir

    with FolderLock(tmp_path / "run", "uit-reid train run"):
        check_run_dir(tmp_path / "run", resume=False, overwrite=False)  # only the lock file: still empty


def test_two_train_runs_into_one_fresh_folder(tiny_dataset, tmp_path, config_dict) -> None:
    """The second process refuses at once, naming the first; the first runs on undisturbed."""
    run_dir = tmp_path / "run"
    config = tmp_path / "long.toml"
    config.write_text(TrainConfig.from_dict(config_dict(tiny_dataset, run_dir, max_steps=4000, epochs=1000)).to_toml())
    command = [sys.executable, "-m", "uit_reid.cli", "train", "--config", str(config)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            lock = run_dir / LOCK_NAME
            if lock.exists() and f"pid {first.pid} " in lock.read_text():
                break
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read()
        start = time.monotonic()
        second = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"uit-reid: error: {run_dir} is in use by another uit-reid train run (pid {first.pid} on ")
        assert time.monotonic() - start < 60  # at once: before any data or model is loaded
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait(30)
    # the first was killed mid-run: its folder is free again for --overwrite (no stale lock)
    with FolderLock(run_dir, "uit-reid train run"):
        pass


def _leftover(folder: Path, target: str) -> Path:
    """A temporary file named as `atomic_write_bytes` names them, as a kill mid-write leaves it."""
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target}.", suffix=".tmp", dir=folder)
    os.write(fd, b"\0" * (1 << 20))
    os.close(fd)
    return Path(tmp)


def test_temp_files_of_killed_saves_are_removed_on_the_next_save(tmp_path) -> None:
    from uit_reid.checkpoint import load_checkpoint, save_checkpoint

    stale = _leftover(tmp_path, "last.pt")
    other = _leftover(tmp_path, "metrics.json")  # another target's: left to that target's writer
    save_checkpoint(tmp_path / "last.pt", step=3)
    assert not stale.exists() and other.exists()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3


def test_a_run_start_removes_the_temp_files_a_killed_run_left(tiny_dataset, tmp_path, config_dict) -> None:
    from uit_reid.train import Trainer

    run_dir = tmp_path / "run"
    stale = [_leftover(run_dir, "last.pt"), _leftover(run_dir / "best", "model.safetensors"),
             _leftover(run_dir, "metrics.json")]
    (run_dir / "notes.txt").write_text("the user's")
    trainer = Trainer(TrainConfig.from_dict(config_dict(tiny_dataset, run_dir, max_steps=1, epochs=1)),
                      overwrite=True)
    assert all(p.exists() for p in stale)  # building a Trainer writes nothing; fit() starts the run
    trainer.fit()
    assert [p for p in stale if p.exists()] == []
    assert (run_dir / "notes.txt").read_text() == "the user's"  # only our own temporary names
    assert not (run_dir / LOCK_NAME).exists()  # released at the end of fit


def test_a_trainer_built_twice_in_one_session_does_not_lock_itself_out(tiny_dataset, tmp_path, config_dict) -> None:
    from uit_reid.train import Trainer

    config = TrainConfig.from_dict(config_dict(tiny_dataset, tmp_path / "run", max_steps=1, epochs=1))
    first = Trainer(config)
    second = Trainer(config)  # a re-run notebook cell: the first object is still referenced
    second.fit()
    assert first is not second and (tmp_path / "run" / "last.pt").exists()
