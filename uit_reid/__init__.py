"""uit_reid: text-to-image person retrieval with the UIT framework.

A sentence in, the matching person images out of a gallery. The package composes a CLIP dual
encoder (`CLIPDualEncoder`), text-guided image restoration (`TIRHead`), pure loss
functions (`uit_reid.losses`), data readers (`uit_reid.data`), retrieval metrics and a
FAISS gallery index (`uit_reid.retrieval`) and a reference trainer (`uit_reid.train`).

Names are imported on first use, so ``import uit_reid`` (and ``uit-reid --help``) does not load
torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from uit_reid._version import __version__

_OBJECTS = {
    "CLIPDualEncoder": "uit_reid.encoders",
    "TIRHead": "uit_reid.tir",
    "UITModel": "uit_reid.model",
    "convert_model": "uit_reid.convert",
    "build_model": "uit_reid.factory",
    "load_model": "uit_reid.factory",
    "create_model_and_transforms": "uit_reid.factory",
    "get_tokenizer": "uit_reid.factory",
}
_MODULES = ("augment", "data", "losses", "retrieval")
_OLD_NAMES = {"convert_checkpoint": "convert_model"}
"""Renamed functions: asking for the old name is an AttributeError naming the new one."""

if TYPE_CHECKING:
    from uit_reid import augment, data, losses, retrieval
    from uit_reid.convert import convert_model
    from uit_reid.encoders import CLIPDualEncoder
    from uit_reid.factory import build_model, create_model_and_transforms, get_tokenizer, load_model
    from uit_reid.model import UITModel
    from uit_reid.tir import TIRHead

__all__ = [
    "CLIPDualEncoder",
    "TIRHead",
    "UITModel",
    "__version__",
    "augment",
    "build_model",
    "convert_model",
    "create_model_and_transforms",
    "data",
    "get_tokenizer",
    "load_model",
    "losses",
    "retrieval",
]


def __getattr__(name: str) -> Any:
    if name in _OBJECTS:
        value = getattr(importlib.import_module(_OBJECTS[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"uit_reid.{name}")
    elif name in _OLD_NAMES:
        raise AttributeError(f"uit_reid.{name} is now uit_reid.{_OLD_NAMES[name]}")
    else:
        raise AttributeError(f"module 'uit_reid' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
