"""Every `uit-reid` command on tiny inputs, and one-line errors on bad ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from uit_reid import __version__
from uit_reid.cli import main
from uit_reid.train import TrainConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A dataset written by `uit-reid synth` and a model trained by `uit-reid train` (2 steps)."""
    base = tmp_path_factory.mktemp("cli")
    data = base / "data"
    assert main(["synth", "--out", str(data), "--num-ids", "20", "--images-per-id", "2",
                 "--num-val-ids", "4", "--num-test-ids", "4"]) == 0
    config = TrainConfig.from_dict({
        "model": {"name": "uit-tiny", "pretrained": "none", "image_size": [96, 32], "tir": False},
        "loss": {"tir": 0.0, "itc": 1.0, "logit_scale": 20.0},
        "data": {"root": str(data), "batch_size": 8, "num_workers": 0},
        "train": {"epochs": 1, "max_steps": 2, "device": "cpu", "output_dir": str(base / "run")},
    })
    config_path = base / "tiny.toml"
    config_path.write_text(config.to_toml())
    assert main(["train", "--config", str(config_path)]) == 0
    return {"data": data, "run": base / "run", "config": config_path, "base": base}


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out


def test_synth_and_train_outputs(trained) -> None:
    assert (trained["data"] / "annotations.jsonl").is_file()
    assert (trained["run"] / "best" / "model.safetensors").is_file()
    assert set(json.loads((trained["run"] / "metrics.json").read_text())) == {"R1", "R5", "R10", "mAP", "mINP"}


@pytest.mark.parametrize("checkpoint", ["best", "last.pt"])
def test_evaluate(trained, capsys, checkpoint) -> None:
    out = trained["base"] / f"eval_{checkpoint}.json"
    code = main(["evaluate", "--checkpoint", str(trained["run"] / checkpoint), "--dataset", str(trained["data"]),
                 "--i2t", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test t2i" in printed and "test i2t" in printed
    rows = json.loads(out.read_text())
    assert 0 <= rows["test t2i"]["R1"] <= 100


def test_index_build_and_search(trained, capsys) -> None:
    index = trained["base"] / "gallery.faiss"
    images = trained["data"] / "imgs"
    (images / "broken.png").write_bytes(b"not a png")  # skipped and counted, not fatal
    assert main(["index", "build", "--checkpoint", str(trained["run"] / "best"), "--images", str(images),
                 "--out", str(index)]) == 0
    assert "indexed 40 images" in capsys.readouterr().out
    grid = trained["base"] / "grid.png"
    assert main(["search", "--index", str(index), "a man in a red jacket", "--k", "3", "--out", str(grid)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert len(lines) == 3
    assert Image.open(grid).size[0] > 0


def test_index_paths_work_from_any_directory(trained, capsys, tmp_path, monkeypatch) -> None:
    from uit_reid.retrieval import GalleryIndex

    monkeypatch.chdir(trained["data"])
    index = tmp_path / "g.faiss"
    assert main(["index", "build", "--checkpoint", str(trained["run"] / "best"), "--images", "imgs",
                 "--out", str(index)]) == 0
    ids = GalleryIndex.load(index).ids()
    assert ids and all(Path(i).is_absolute() and Path(i).is_file() for i in ids)
    monkeypatch.chdir(tmp_path)  # search from elsewhere: every hit is found, the grid has no placeholder
    capsys.readouterr()
    assert main(["search", "--index", "g.faiss", "a person", "--k", "100000000", "--out", "grid.png"]) == 0
    lines = [line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert len(lines) == len(ids) and all(Path(p).is_file() for p in lines)  # k capped at the index size
    assert main(["search", "--index", "g.faiss", "a person", "--k", "0"]) == 1
    assert "--k must be at least 1, got 0" in capsys.readouterr().err
    # an existing index is replaced by a build, and stays loadable: the old .model.json is no more
    assert main(["index", "build", "--checkpoint", str(trained["run"] / "best"), "--images",
                 str(trained["data"] / "imgs"), "--out", str(index), "--kind", "hnsw"]) == 0
    assert GalleryIndex.load(index).kind == "hnsw" and sorted(p.name for p in tmp_path.iterdir()) == [
        "g.faiss", "grid.png"]


def test_unwritable_outputs_fail_before_work(trained, capsys, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "sub" / "out.json"  # a folder that cannot exist: its parent is a file
    missing_ckpt = str(tmp_path / "no-such-checkpoint")  # proves the output is checked first
    assert main(["evaluate", "--checkpoint", missing_ckpt, "--dataset", str(trained["data"]), "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip().startswith(f"uit-reid: error: cannot write {out}:")
    assert main(["index", "build", "--checkpoint", missing_ckpt, "--images", str(trained["data"]),
                 "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip().startswith(f"uit-reid: error: cannot write {out}:")
    assert main(["evaluate", "--checkpoint", missing_ckpt, "--dataset", str(trained["data"]),
                 "--out", str(tmp_path)]) == 1
    assert f"cannot write {tmp_path}: it is a folder" in capsys.readouterr().err


def test_index_without_action_prints_index_usage(capsys) -> None:
    assert main(["index"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("usage: uit-reid index [-h] ACTION") and "demo" not in err.splitlines()[0]
    assert "choose an action" in err


def test_bad_inputs_give_one_line_errors(trained, capsys, tmp_path) -> None:
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope"), "--dataset", str(trained["data"])]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("uit-reid: error: checkpoint not found") and "nope" in err and "\n" not in err

    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochz = 3\n")
    assert main(["train", "--config", str(bad)]) == 1
    assert "unknown key 'train.epochz'" in capsys.readouterr().err

    assert main(["evaluate", "--checkpoint", str(trained["run"] / "best"), "--dataset", str(tmp_path)]) == 1
    assert "uit-reid: error:" in capsys.readouterr().err

    assert main(["search", "--index", str(tmp_path / "missing.faiss"), "hello"]) == 1
    assert "missing.faiss" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exc:
        main(["train"])  # --config is required
    assert exc.value.code == 2


def test_evaluate_names_a_decompression_bomb(trained, capsys, tmp_path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(trained["data"], data)
    rec = next(r for r in map(json.loads, (data / "annotations.jsonl").read_text().splitlines()) if r["split"] == "test")
    Image.new("1", (30000, 30000)).save(data / rec["image"])  # 110 KB, 900 M pixels
    assert main(["evaluate", "--checkpoint", str(trained["run"] / "best"), "--dataset", str(data)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"uit-reid: error: refusing image {data / rec['image']}: too many pixels"), err


@pytest.mark.slow
def test_demo_quick(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert "R1" in capsys.readouterr().out
    assert set(json.loads((out / "metrics.json").read_text())) == {"R1", "R5", "R10", "mAP", "mINP"}
    assert Image.open(out / "results.png").size[1] > 200
    assert (out / "training_curve.png").is_file()
