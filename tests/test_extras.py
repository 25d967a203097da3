"""Errors name installable things (issue 30, item 7): every extra a message or a doc names is
declared in pyproject.toml, and a missing optional package is reported through its extra."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from uit_reid.train._reporting import RunLog

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_extra_named_anywhere_is_declared() -> None:
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    files = [*(ROOT / "uit_reid").rglob("*.py"), *(ROOT / "docs").rglob("*.md"), ROOT / "README.md",
             *(ROOT / "tests").rglob("*.py")]
    named = {(m, str(f.relative_to(ROOT))) for f in files for m in re.findall(r"uit_reid\[(\w+)\]", f.read_text())}
    assert sorted((extra, where) for extra, where in named if extra not in declared) == []
    assert {"serve", "report", "plot"} <= {extra for extra, _ in named}


@pytest.mark.parametrize(("reporter", "module"), [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_a_missing_reporter_names_the_report_extra(tmp_path, monkeypatch, reporter, module) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # 'import' of it raises ImportError, as when not installed
    log = RunLog(tmp_path, report_to=[reporter])
    with pytest.raises(ImportError) as exc:
        log.open(fresh=True)
    assert str(exc.value) == (f"train.report_to = ['{reporter}'] needs the report extra: "
                              "pip install 'uit_reid[report]' (tensorboard, wandb)")


def test_uvicorn_is_held_to_the_tested_minor_series() -> None:
    """The service subclasses uvicorn's private ``H11Protocol`` (issue 30, item 9): every extra that names
    uvicorn bounds it above the installed (tested) version, admitting no later minor series."""
    requirements = pytest.importorskip("packaging.requirements")
    uvicorn = pytest.importorskip("uvicorn")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    specs = {name: requirements.Requirement(r).specifier for name, deps in extras.items() for r in deps
             if requirements.Requirement(r).name == "uvicorn"}
    assert set(specs) == {"serve", "dev"}
    major, minor = (int(part) for part in uvicorn.__version__.split(".")[:2])
    for name, spec in specs.items():
        assert spec.contains(uvicorn.__version__), (name, str(spec))
        assert not spec.contains(f"{major}.{minor + 1}.0"), (name, str(spec))
