"""open_clip's "initialized randomly" warning never reaches users for a model built on purpose.

open_clip 3.3 logs it through the root logger inside ``create_model``; its main branch logs it through
its module logger, which a filter on the root logger does not see. The tests cover both: the library
must not depend on where open_clip logs.
"""

from __future__ import annotations

import json
import logging

import open_clip
import pytest
import torch

from uit_reid import CLIPDualEncoder
from uit_reid.encoders import MODEL_CONFIG_DIR, get_model_config

WARNING_TEXTS = ("No pretrained weights loaded", "initialized randomly")


def _random_init_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if any(t in r.getMessage() for t in WARNING_TEXTS)]


def _open_clip_tiny(folder) -> str:
    """``uit-tiny`` as an open_clip ``local-dir:`` name (uit_reid registers nothing with open_clip)."""
    folder.mkdir(exist_ok=True)
    config = {"model_cfg": json.loads((MODEL_CONFIG_DIR / "uit-tiny.json").read_text())}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return f"local-dir:{folder}"


def _build_both(tmp_path) -> None:
    enc = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=(64, 32), context_length=52)
    CLIPDualEncoder.from_model_config(get_model_config("uit-tiny"), name="uit-tiny")
    path = tmp_path / "w.pt"
    torch.save(enc.clip.state_dict(), path)
    CLIPDualEncoder.from_open_clip("uit-tiny", pretrained=str(path), image_size=(64, 32), context_length=52)


def test_open_clip_logs_the_warning_where_we_think(tmp_path) -> None:
    """The premise: open_clip's own ``create_model`` does warn for a model without weights."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler, root = Keep(level=logging.WARNING), logging.getLogger()
    root.addHandler(handler)
    try:
        open_clip.create_model(_open_clip_tiny(tmp_path / "tiny"), force_image_size=(64, 32))
    finally:
        root.removeHandler(handler)
    assert any(WARNING_TEXTS[0] in r.getMessage() for r in seen)


def test_no_warning_with_open_clips_current_logging(tmp_path, caplog) -> None:
    with caplog.at_level(logging.DEBUG):
        _build_both(tmp_path)
    assert _random_init_warnings(caplog) == []


def test_no_warning_when_open_clip_logs_through_its_module_logger(tmp_path, caplog, monkeypatch) -> None:
    """The next open_clip release: ``create_model`` warns through ``logging.getLogger("open_clip.factory")``."""
    real = open_clip.create_model

    def module_logger_variant(model_name, pretrained=None, *args, **kwargs):
        model = real(model_name, pretrained, *args, **kwargs)
        if not pretrained:
            logging.getLogger("open_clip.factory").warning(
                f"No pretrained weights loaded for model '{model_name}'. Model initialized randomly."
            )
        return model

    monkeypatch.setattr(open_clip, "create_model", module_logger_variant)
    monkeypatch.setattr(open_clip.factory, "create_model", module_logger_variant)
    with caplog.at_level(logging.DEBUG):
        _build_both(tmp_path)
    assert _random_init_warnings(caplog) == []


def test_random_init_equals_open_clips_create_model(tmp_path) -> None:
    """Same seed, same weights as ``open_clip.create_model``: building from the config changes nothing."""
    torch.manual_seed(7)
    ours = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=(64, 32), context_length=52).clip.state_dict()
    torch.manual_seed(7)
    name = _open_clip_tiny(tmp_path / "tiny")
    theirs = open_clip.create_model(name, force_image_size=(64, 32), force_context_length=52).state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
