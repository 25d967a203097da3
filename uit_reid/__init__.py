"""uit_reid: text-to-image person retrieval with the UIT framework.

A sentence in, the matching person images out of a gallery. The package composes a CLIP dual
encoder (`CLIPDualEncoder`), text-guided image restoration (`TIRHead`), pure loss
functions (`uit_reid.losses`), data readers (`uit_reid.data`), retrieval metrics and a
FAISS gallery index (`uit_reid.retrieval`) and a reference trainer (`uit_reid.train`).
"""

from __future__ import annotations

__version__ = "0.1.0"

from uit_reid import augment, data, losses, retrieval
from uit_reid.convert import convert_checkpoint
from uit_reid.encoders import CLIPDualEncoder
from uit_reid.model import UITModel
from uit_reid.tir import TIRHead

__all__ = [
    "CLIPDualEncoder",
    "TIRHead",
    "UITModel",
    "__version__",
    "augment",
    "convert_checkpoint",
    "data",
    "losses",
    "retrieval",
]
