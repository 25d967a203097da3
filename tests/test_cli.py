"""Every `uit-reid` command on tiny inputs, and one-line errors on bad ones."""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_run import train_tiny_run

from uit_reid import __version__
from uit_reid.cli import build_parser, main
from uit_reid.data import load_dataset
from uit_reid.demo import DEMO_COLUMNS
from uit_reid.evaluation import BINDING_KEYS, binding_table, evaluate_binding
from uit_reid.factory import load_model
from uit_reid.retrieval import GalleryIndex, metrics_table, render_results

THUMB = inspect.signature(render_results).parameters["thumb_size"].default  # (height, width)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A dataset written by `uit-reid synth` and a model trained by `uit-reid train` (2 steps)."""
    return train_tiny_run(tmp_path_factory.mktemp("cli"), num_ids=20)


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out


def test_synth_and_train_outputs(trained) -> None:
    assert (trained["data"] / "annotations.jsonl").is_file()
    assert (trained["run"] / "best" / "model.safetensors").is_file()
    metrics = json.loads((trained["run"] / "metrics.json").read_text())
    assert {"R1", "R5", "R10", "mAP", "mINP", "binding", "presence"} <= set(metrics)  # synthetic: attributes
    assert set(metrics) <= {"R1", "R5", "R10", "mAP", "mINP", *BINDING_KEYS}
    card = (trained["run"] / "best" / "README.md").read_text()  # the model card carries the run's figures
    assert "| test | " + " | ".join(f"{metrics[k]:.2f}" for k in ("R1", "R5", "R10", "mAP", "mINP")) + " |" in card
    assert "| val (best) | " in card and f"- Training data: {trained['data']} (format auto), train split" in card


@pytest.mark.parametrize("checkpoint", ["best", "last.pt"])
def test_evaluate_matches_an_independent_evaluation(trained, capsys, checkpoint, independent_metrics) -> None:
    out = trained["base"] / f"eval_{checkpoint}.json"
    code = main(["evaluate", "--model", str(trained["run"] / checkpoint), "--dataset", str(trained["data"]),
                 "--i2t", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())
    model = load_model(trained["run"] / checkpoint)
    assert model.interpolation == "bilinear"  # the training config's resize (the default), recorded with the model
    expected = independent_metrics(model, load_dataset(trained["data"]).test, "bilinear")
    assert {k: round(v, 4) for k, v in rows["test t2i"].items()} == {k: round(v, 4) for k, v in expected.items()}
    assert list(rows) == ["test t2i", "test i2t", "test binding"]
    assert rows["test binding"] == pytest.approx(evaluate_binding(model, load_dataset(trained["data"]).test), abs=1e-6)
    # the printed tables are exactly the file's figures
    table = metrics_table({k: rows[k] for k in ("test t2i", "test i2t")}) + "\n\n" + binding_table(rows["test binding"])
    assert printed.strip() == table


def test_evaluate_json_goes_to_stdout_alone(trained, capsys) -> None:
    assert main(["evaluate", "--model", str(trained["run"] / "best"), "--dataset", str(trained["data"]),
                 "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)  # nothing but the JSON object on stdout
    assert list(rows) == ["test t2i", "test binding"] and set(rows["test t2i"]) == {"R1", "R5", "R10", "mAP", "mINP"}
    assert {"binding", "binding_n", "presence", "presence_n"} <= set(rows["test binding"]) <= set(BINDING_KEYS)


def test_index_build_and_search_match_a_direct_index_search(trained, capsys) -> None:
    index_path = trained["base"] / "gallery.faiss"
    images = trained["data"] / "imgs"
    (images / "broken.png").write_bytes(b"not a png")  # skipped and counted, not fatal
    assert main(["index", "build", "--model", str(trained["run"] / "best"), "--images", str(images),
                 "--out", str(index_path)]) == 0
    assert "indexed 40 images" in capsys.readouterr().out
    query, k = "a man in a red jacket", 3
    grid = trained["base"] / "grid.png"
    assert main(["search", "--index", str(index_path), query, "--k", str(k), "--out", str(grid), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    # the same search done directly: encode the query with the model, search the saved index
    model = load_model(trained["run"] / "best")
    index = GalleryIndex.load(index_path)
    with torch.no_grad():
        feats = model.encode_text(model.encoder.tokenize([query]), normalize=False)
    scores, ids = index.search(torch.nn.functional.normalize(feats, dim=-1).numpy(), k=k)
    assert found["query"] == query
    assert [r["id"] for r in found["results"]] == list(ids[0])
    assert [r["score"] for r in found["results"]] == pytest.approx(scores[0].tolist(), abs=1e-5)
    assert [r["rank"] for r in found["results"]] == [1, 2, 3]
    # the plain output lists the same hits, and the grid holds k tiles of the default thumbnail size
    assert main(["search", "--index", str(index_path), query, "--k", str(k)]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [line[2] for line in lines] == [r["path"] or str(r["id"]) for r in found["results"]]
    (th, tw), border, pad = THUMB, 4, 6  # render_results' layout: one row of k tiles under the text
    with Image.open(grid) as im:
        assert im.width == k * (tw + 2 * border + pad) + pad
        assert th + 2 * border + 2 * pad < im.height < 2 * th


def test_index_without_an_action_names_the_index_command(capsys) -> None:
    assert main(["index"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("usage: uit-reid index") and "choose an action" in err


def test_every_option_has_help() -> None:
    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
                assert action.help, f"{p.prog} {'/'.join(action.option_strings) or action.dest} has no help"


def test_index_paths_work_from_any_directory(trained, capsys, tmp_path, monkeypatch) -> None:
    from uit_reid.retrieval import GalleryIndex

    monkeypatch.chdir(trained["data"])
    index = tmp_path / "g.faiss"
    assert main(["index", "build", "--model", str(trained["run"] / "best"), "--images", "imgs",
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
    assert main(["index", "build", "--model", str(trained["run"] / "best"), "--images",
                 str(trained["data"] / "imgs"), "--out", str(index), "--kind", "hnsw"]) == 0
    assert GalleryIndex.load(index).kind == "hnsw" and sorted(p.name for p in tmp_path.iterdir()) == [
        "g.faiss", "grid.png"]


def test_unwritable_outputs_fail_before_work(trained, capsys, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "sub" / "out.json"  # a folder that cannot exist: its parent is a file
    missing_ckpt = str(tmp_path / "no-such-checkpoint")  # proves the output is checked first
    assert main(["evaluate", "--model", missing_ckpt, "--dataset", str(trained["data"]), "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip().startswith(f"uit-reid: error: cannot write {out}:")
    assert main(["index", "build", "--model", missing_ckpt, "--images", str(trained["data"]),
                 "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip().startswith(f"uit-reid: error: cannot write {out}:")
    assert main(["evaluate", "--model", missing_ckpt, "--dataset", str(trained["data"]),
                 "--out", str(tmp_path)]) == 1
    assert f"cannot write {tmp_path}: it is a folder" in capsys.readouterr().err


def test_index_without_action_prints_index_usage(capsys) -> None:
    assert main(["index"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("usage: uit-reid index [-h] ACTION") and "demo" not in err.splitlines()[0]
    assert "choose an action" in err


def test_bad_inputs_give_one_line_errors(trained, capsys, tmp_path) -> None:
    assert main(["evaluate", "--model", str(tmp_path / "nope"), "--dataset", str(trained["data"])]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("uit-reid: error: checkpoint not found") and "nope" in err and "\n" not in err

    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochz = 3\n")
    assert main(["train", "--config", str(bad)]) == 1
    assert "unknown key 'train.epochz'" in capsys.readouterr().err

    assert main(["evaluate", "--model", str(trained["run"] / "best"), "--dataset", str(tmp_path)]) == 1
    assert "uit-reid: error:" in capsys.readouterr().err

    assert main(["search", "--index", str(tmp_path / "missing.faiss"), "hello"]) == 1
    assert "missing.faiss" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exc:
        main(["train"])  # --config is required
    assert exc.value.code == 2


@pytest.mark.parametrize("command", [["evaluate"], ["encode"], ["index", "build"], ["search", "q"], ["serve"]])
def test_the_old_checkpoint_flag_names_the_new_one(capsys, command) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--checkpoint", "runs/x/best"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"uit-reid {command[0]}{' build' if command[0] == 'index' else ''}: error: --checkpoint is now --model"


def test_evaluate_names_a_decompression_bomb(trained, capsys, tmp_path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(trained["data"], data)
    rec = next(r for r in map(json.loads, (data / "annotations.jsonl").read_text().splitlines()) if r["split"] == "test")
    Image.new("1", (30000, 30000)).save(data / rec["image"])  # 110 KB, 900 M pixels
    assert main(["evaluate", "--model", str(trained["run"] / "best"), "--dataset", str(data)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"uit-reid: error: refusing image {data / rec['image']}: too many pixels"), err


@pytest.mark.slow
@pytest.mark.parametrize(("config", "start"), [("demo", "random init"), ("demo_uit", "zero-shot, synthetic weights")])
def test_demo_quick(tmp_path, capsys, config, start) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--config", config]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    table, hint, command = printed.strip().rsplit("\n", 2)
    zero_shot = metrics.pop("zero_shot")  # the model before training, then the trained row
    rows = {f"before training ({start})": zero_shot, "trained": metrics}
    assert table == metrics_table(rows, label="test (t2i)", keys=DEMO_COLUMNS)
    assert zero_shot != metrics and {"R1", "binding"} <= zero_shot.keys() & metrics.keys()
    assert hint.startswith("search the test gallery in a browser")
    assert command.split() == ["uit-reid", "serve", "--index", str(out / "gallery.faiss"), "--model", str(out / "best")]
    assert Image.open(out / "results.png").size[1] > 200
    assert (out / "training_curve.png").is_file()
    # UIT's demo reports and draws its TIR decoder; the InfoNCE baseline has none
    assert ("text_use" in metrics) == (out / "tir.png").is_file() == (config == "demo_uit")
    if config != "demo":
        return

    # the printed command serves the demo's gallery: searches, images and the page
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from live_server import ServeProcess, serve_env

    server = ServeProcess(command.split()[2:], log=tmp_path / "serve.log", env=serve_env())
    try:
        found = httpx.get(server.url + "/search", params={"q": "a man in a red jacket", "k": 5}, timeout=30)
        assert found.status_code == 200, found.text
        hits = found.json()["results"][0]["results"]
        assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
        assert {h["id"] for h in hits} <= set(GalleryIndex.load(out / "gallery.faiss").ids())
        image = httpx.get(server.url + hits[0]["image_url"], timeout=30)
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        page = httpx.get(server.url + "/", timeout=30)
        assert page.status_code == 200 and "<input" in page.text
    finally:
        server.stop()


def test_search_rerank_rescoring_from_the_embedding_files(trained, capsys, tmp_path) -> None:
    """``--rerank K`` re-scores a compressed index's candidates exactly from the float16 embedding files."""
    import numpy as np

    from uit_reid.retrieval import EmbeddingShards

    best, images = trained["run"] / "best", trained["data"] / "imgs"
    emb, index_path = tmp_path / "emb", tmp_path / "pq.faiss"
    assert main(["encode", "--model", str(best), "--images", str(images), "--out", str(emb), "--workers", "0"]) == 0
    assert main(["index", "build", "--embeddings", str(emb), "--kind", "IVF2,PQ4x4", "--out", str(index_path)]) == 0
    capsys.readouterr()
    query = "a man in a red jacket"
    assert main(["search", "--index", str(index_path), "--model", str(best), query, "--k", "3",
                 "--rerank", "1000", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["results"]
    # independently: exact cosine against every stored float16 vector
    model = load_model(best)
    with torch.no_grad():
        q = torch.nn.functional.normalize(model.encode_text(model.encoder.tokenize([query]), normalize=False), dim=-1)
    shards = EmbeddingShards(emb)
    vectors = shards.rows_of(np.arange(len(shards)))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = vectors @ q[0].numpy()
    top = np.argsort(-exact, kind="stable")[:3]
    ids = [i for n in range(shards.num_shards) for i in shards.ids(n)]
    assert [r["id"] for r in found] == [ids[t] for t in top]
    assert [r["score"] for r in found] == pytest.approx(exact[top].tolist(), abs=1e-5)
    # an index not built from embedding files cannot be re-ranked: one line naming the option
    plain = tmp_path / "plain.faiss"
    assert main(["index", "build", "--model", str(best), "--images", str(images), "--out", str(plain)]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(plain), query, "--rerank", "10"]) == 1
    assert "--rerank: this index records no embedding folders" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "module", "name", "first"), [
    (["convert", "ckpt.pth", "--out", "o", "--format"], "uit_reid.convert", "LAYOUTS", ("auto",)),
    (["evaluate", "--model", "m", "--dataset", "d", "--format"], "uit_reid.data.readers", "FORMATS", ("auto",)),
    (["synth", "--out", "o", "--world"], "uit_reid.data.synthetic", "WORLD_NAMES", ()),
])
def test_choices_are_read_from_the_registries(argv, module, name, first, monkeypatch, capsys) -> None:
    """The CLI types no list of allowed values: a name added to the registry is a choice at once."""
    import importlib

    registry = importlib.import_module(module)
    names = [*first, *getattr(registry, name), "added-here"]
    grown = {**getattr(registry, name), "added-here": None} if isinstance(getattr(registry, name), dict) \
        else (*getattr(registry, name), "added-here")
    monkeypatch.setattr(registry, name, grown)
    assert vars(build_parser().parse_args([*argv, "added-here"]))[argv[-1].lstrip("-")] == "added-here"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "nonsense"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "invalid choice: 'nonsense' (choose from " in err
    shown = err.split("(choose from ", 1)[1].rstrip(")").split(", ")
    assert [c.strip("'") for c in shown] == names
