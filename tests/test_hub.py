"""Hub names through the real ``huggingface_hub`` client, against a loopback server (`hub_server.FakeHub`).

``huggingface_hub`` reads ``HF_ENDPOINT``/``HF_HUB_OFFLINE`` when it is imported, so the client calls
run in one subprocess with the server's address and without the test suite's offline switch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hub_server import FakeHub
from safetensors.torch import load_file, save, save_file

from uit_reid import CLIPDualEncoder, UITModel
from uit_reid.encoders import MODEL_CONFIG_DIR, get_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = (96, 32)

CLIENT = textwrap.dedent("""
    import json, sys
    import torch
    from safetensors.torch import load_file, save_file
    import uit_reid as ur

    base = sys.argv[1]
    inp = load_file(base + "/inputs.safetensors")
    images, ids = inp["images"], inp["ids"]
    feats, out = {}, {}

    def record(name, encoder):
        with torch.no_grad():
            feats[name + "_image"] = encoder.encode_image(images).contiguous()
            feats[name + "_text"] = encoder.encode_text(ids).contiguous()

    record("main", ur.UITModel.from_pretrained("uit/tiny").encoder)
    record("v1", ur.UITModel.from_pretrained("hf-hub:uit/tiny", revision="v1").encoder)
    for key, source, revision in [("missing", "uit/absent", None), ("bad_revision", "uit/tiny", "nope"),
                                  ("not_a_model", "laion/tiny-clip", None)]:
        try:
            ur.UITModel.from_pretrained(source, revision=revision)
        except Exception as exc:
            out[key] = type(exc).__name__ + ": " + str(exc)

    encoder = ur.CLIPDualEncoder.from_open_clip("hf-hub:laion/tiny-clip", image_size=(96, 32))
    record("open_clip", encoder)
    ur.UITModel(encoder, num_classes=0, tir_head=False).save_pretrained(base + "/from_hub_name")

    # a Hub id means the same in every entry point, with or without hf-hub: (the repository's files decide)
    out["tokens_model"] = ur.get_tokenizer("hf-hub:uit/tok")(["a man in a red shirt"]).tolist()  # config only
    out["tokens_model_bare"] = ur.get_tokenizer("uit/tok")(["a man in a red shirt"]).tolist()
    out["tokens_tower"] = ur.get_tokenizer("hf-hub:laion/tiny-clip")(["a man in a red shirt"]).tolist()
    for key, source in [("created", "hf-hub:uit/tiny"), ("created_bare", "uit/tiny")]:
        model, _, preprocess = ur.create_model_and_transforms(source)
        record(key, model.encoder)
        out[key + "_has_classifier"] = model.classifier is not None
    for key, source in [("created_tower", "hf-hub:laion/tiny-clip"), ("created_tower_bare", "laion/tiny-clip")]:
        model, _, preprocess = ur.create_model_and_transforms(source, image_size=(96, 32))
        record(key, model.encoder)
    try:
        ur.create_model_and_transforms("hf-hub:uit/empty")
    except Exception as exc:
        out["neither"] = type(exc).__name__ + ": " + str(exc)

    model = ur.UITModel.from_pretrained("uit/tiny")
    out["commit_url"] = model.push_to_hub("someone/pushed")
    record("pushed", ur.UITModel.from_pretrained("someone/pushed").encoder)
    save_file(feats, base + "/features.safetensors")

    from uit_reid.cli import main  # the commands take Hub ids as --model
    from PIL import Image
    import os
    os.makedirs(base + "/photos", exist_ok=True)
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (32, 96), colour).save(base + f"/photos/{i}.png")
    out["index_build"] = main(["index", "build", "--model", "hf-hub:uit/tiny", "--images", base + "/photos",
                               "--out", base + "/gallery.faiss", "--device", "cpu"])
    out["search"] = main(["search", "a person in red", "--index", base + "/gallery.faiss", "--k", "1",
                          "--device", "cpu"])
    print(json.dumps(out))
""")


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _features(encoder: CLIPDualEncoder, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return encoder.encode_image(images), encoder.encode_text(ids)


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("hub")
    models = {}
    for name, seed in [("main", 0), ("v1", 1)]:
        torch.manual_seed(seed)
        encoder = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=SIZE)
        models[name] = UITModel(encoder, num_classes=5, tir_head=False).eval()
        models[name].save_pretrained(base / name)
    torch.manual_seed(2)
    clip = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=SIZE).clip
    models["open_clip"] = CLIPDualEncoder(clip, get_tokenizer("uit-tiny"), "uit-tiny").eval()
    open_clip_config = {"model_cfg": json.loads((MODEL_CONFIG_DIR / "uit-tiny.json").read_text()),
                        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                           "std": [0.26862954, 0.26130258, 0.27577711]}}

    images = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    ids = models["main"].encoder.tokenize(["a man in a red shirt", "a woman with a black bag"])
    save_file({"images": images, "ids": ids}, str(base / "inputs.safetensors"))

    with FakeHub() as hub:
        hub.commit("uit/tiny", _folder_files(base / "main"))
        hub.commit("uit/tiny", _folder_files(base / "v1"), ref="v1")
        hub.commit("uit/tok", _folder_files(base / "main"))
        hub.commit("uit/empty", {"README.md": b"nothing here"})
        hub.commit("laion/tiny-clip", {
            "open_clip_config.json": json.dumps(open_clip_config).encode(),
            "open_clip_model.safetensors": save({k: v.contiguous() for k, v in clip.state_dict().items()}),
        })
        # both switches turn the client offline (huggingface_hub reads TRANSFORMERS_OFFLINE too)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "TRANSFORMERS_OFFLINE"}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(base / "hf_home"), HF_TOKEN=hub.token,
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                   PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, "-c", CLIENT, str(base)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, (hub.requests, proc.stderr[-3000:])
        pushed = hub.files("someone/pushed")
        requests = list(hub.requests)
        cards = list(hub.cards)
    return {"cards": cards, "out": json.loads(proc.stdout.strip().splitlines()[-1]), "base": base, "models": models,
            "images": images, "ids": ids, "features": load_file(str(base / "features.safetensors")),
            "pushed": pushed, "requests": requests}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["main", "v1", "open_clip"])
def test_downloaded_models_equal_the_published_ones(hub_run, name) -> None:
    model = hub_run["models"][name]
    encoder = model.encoder if isinstance(model, UITModel) else model
    image, text = _features(encoder, hub_run["images"], hub_run["ids"])
    torch.testing.assert_close(hub_run["features"][f"{name}_image"], image, rtol=0, atol=1e-5)
    torch.testing.assert_close(hub_run["features"][f"{name}_text"], text, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "published"), [("created", "main"), ("created_bare", "main"),
                                                  ("created_tower", "open_clip"), ("created_tower_bare", "open_clip")])
def test_create_model_and_transforms_takes_hub_ids_of_models_and_towers(hub_run, name, published) -> None:
    torch.testing.assert_close(hub_run["features"][f"{name}_image"], hub_run["features"][f"{published}_image"],
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(hub_run["features"][f"{name}_text"], hub_run["features"][f"{published}_text"],
                               rtol=0, atol=1e-5)
    if published == "main":  # the trained model whole, its ID classifier included
        assert hub_run["out"][f"{name}_has_classifier"]


@pytest.mark.slow
def test_get_tokenizer_takes_hub_ids_and_reads_no_weights(hub_run) -> None:
    want = hub_run["models"]["main"].encoder.tokenize(["a man in a red shirt"]).tolist()
    out = hub_run["out"]
    assert out["tokens_model"] == out["tokens_model_bare"] == out["tokens_tower"] == want
    fetched = {path for _, path in hub_run["requests"] if path.startswith("/uit/tok/")}
    assert "/uit/tok/resolve/main/config.json" in fetched
    assert not any("model.safetensors" in path for path in fetched)  # the config is enough


@pytest.mark.slow
def test_a_hub_repository_with_neither_config_is_one_line(hub_run) -> None:
    assert hub_run["out"]["neither"] == (
        "FileNotFoundError: uit/empty@main: neither config.json (a uit_reid model) nor open_clip_config.json "
        "(an open_clip tower) in the repository, or not in the local cache while offline"
    )


@pytest.mark.slow
def test_revision_reaches_the_server(hub_run) -> None:
    resolved = [path for method, path in hub_run["requests"] if "/resolve/" in path]
    assert "/uit/tiny/resolve/v1/config.json" in resolved
    assert "/uit/tiny/resolve/main/model.safetensors" in resolved


@pytest.mark.slow
def test_hub_errors_are_one_line(hub_run) -> None:
    out = hub_run["out"]
    assert out["missing"] == (
        "FileNotFoundError: uit/absent (no such local folder) on the Hub: uit/absent@main: "
        "repository not found on the Hub (or private: pass a token)"
    )
    assert out["bad_revision"] == (
        "FileNotFoundError: uit/tiny (no such local folder) on the Hub: uit/tiny@nope: no such revision on the Hub"
    )
    assert out["not_a_model"] == (
        "FileNotFoundError: laion/tiny-clip (no such local folder) on the Hub: laion/tiny-clip@main: "
        "no config.json in the repository (not a folder written by save_pretrained)"
    )


@pytest.mark.slow
def test_push_to_hub_uploads_the_save_pretrained_files(hub_run, tmp_path) -> None:
    assert hub_run["out"]["commit_url"].startswith("http://127.0.0.1:")
    assert "/someone/pushed/commit/" in hub_run["out"]["commit_url"]
    hub_run["models"]["main"].save_pretrained(tmp_path)
    local = _folder_files(tmp_path)
    assert sorted(local) == ["README.md", "config.json", "model.safetensors"]
    for name, data in local.items():
        assert hub_run["pushed"][name] == data, name
    assert hub_run["cards"] == [local["README.md"].decode()]  # the card's front matter passed validation
    torch.testing.assert_close(hub_run["features"]["pushed_image"], hub_run["features"]["main_image"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_hub_open_clip_model_saves_and_reloads_offline(hub_run) -> None:
    """A model built from an hf-hub: name records its config: reloading needs no network (HF_HUB_OFFLINE=1 here)."""
    folder = hub_run["base"] / "from_hub_name"
    config = json.loads((folder / "config.json").read_text())
    assert config["encoder"]["name"] == "hf-hub:laion/tiny-clip"
    assert config["encoder"]["model_cfg"]["vision_cfg"]["image_size"] == list(SIZE)
    model = UITModel.from_pretrained(folder)
    image, text = _features(model.encoder, hub_run["images"], hub_run["ids"])
    torch.testing.assert_close(image, hub_run["features"]["open_clip_image"], rtol=0, atol=1e-5)
    torch.testing.assert_close(text, hub_run["features"]["open_clip_text"], rtol=0, atol=1e-5)


def test_local_names_never_reach_the_hub(tmp_path, monkeypatch) -> None:
    from uit_reid.hub import hub_repo_id

    monkeypatch.chdir(tmp_path)
    assert hub_repo_id("hf-hub:org/name") == "org/name"
    assert hub_repo_id("org/name") == "org/name"
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert hub_repo_id("org/name") is None  # a local folder of that name wins
    assert hub_repo_id("./org/name") is None and hub_repo_id("/abs/path") is None
    with pytest.raises(ValueError, match="hf-hub:bad: expected hf-hub:org/name"):
        hub_repo_id("hf-hub:bad")
    with pytest.raises(ValueError, match="revision='v1' applies to Hub repositories, not to the local path"):
        UITModel.from_pretrained(tmp_path, revision="v1")


def test_open_clip_local_dir_names_and_schema_errors(tmp_path, tiny_encoder) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    config = {"model_cfg": json.loads((MODEL_CONFIG_DIR / "uit-tiny.json").read_text())}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tiny_encoder.clip.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    encoder = CLIPDualEncoder.from_open_clip(f"local-dir:{folder}", image_size=SIZE).eval()
    assert encoder.model_cfg["vision_cfg"]["image_size"] == list(SIZE)
    images = torch.randn(2, 3, *SIZE)
    ids = tiny_encoder.tokenize(["a man in a red shirt"])
    for got, want in zip(_features(encoder, images, ids), _features(tiny_encoder, images, ids)):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="hf-hub:org/name: a hf-hub: name brings its own weights; leave pretrained=None"):
        CLIPDualEncoder.from_open_clip("hf-hub:org/name", pretrained="openai")


@pytest.mark.slow
def test_commands_take_hub_ids(hub_run) -> None:
    assert hub_run["out"]["index_build"] == 0 and hub_run["out"]["search"] == 0
    from uit_reid.retrieval import GalleryIndex

    meta = GalleryIndex.load(hub_run["base"] / "gallery.faiss").metadata
    assert meta["model"] == "hf-hub:uit/tiny"  # remembered as given, not as a local path
