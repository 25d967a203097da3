"""Values declared once (issue 30, item 7): the person-crop input size and CLIP's caption length live in
`uit_reid.recipe`; no other module of the library writes them as literals."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from uit_reid import CLIPDualEncoder, create_model_and_transforms, recipe
from uit_reid.train.config import ModelConfig

PACKAGE = Path(__file__).resolve().parents[1] / "uit_reid"


def _literals(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of each ``(384, 128)`` tuple or list and each integer ``77`` in code (docstrings are strings)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple | ast.List) and [getattr(e, "value", None) for e in node.elts] == [384, 128]:
            found.append((node.lineno, "(384, 128)"))
        elif isinstance(node, ast.Constant) and type(node.value) is int and node.value == 77:
            found.append((node.lineno, "77"))
    return found


def test_input_size_and_context_length_are_written_once() -> None:
    sites = {f"{path.relative_to(PACKAGE)}:{line}": what for path in sorted(PACKAGE.rglob("*.py"))
             for line, what in _literals(ast.parse(path.read_text()))}
    assert sorted(sites.values()) == ["(384, 128)", "77"], sites
    assert all(site.startswith("recipe.py:") for site in sites), sites
    for call in (CLIPDualEncoder.from_open_clip, create_model_and_transforms):
        params = inspect.signature(call).parameters
        assert params["image_size"].default == recipe.IMAGE_SIZE
        assert params["context_length"].default == recipe.CONTEXT_LENGTH
    assert (ModelConfig().image_size, ModelConfig().context_length) == (recipe.IMAGE_SIZE, recipe.CONTEXT_LENGTH)
