"""Data: readers (CUHK-PEDES, ICFG-PEDES, RSTPReid, JSONL), synthetic pedestrians, torch datasets, samplers.

``load_dataset`` turns annotation files into `PedesDataset` (train/val/test `Split` of
`PersonRecord`); ``make_synthetic`` writes the built-in dataset; the torch datasets, collates and
batch samplers feed ``UITModel``. This package never imports the encoder: the tokenizer is passed in.
"""

from __future__ import annotations

from uit_reid.data.datasets import (
    GalleryDataset,
    QueryDataset,
    TrainDataset,
    build_eval_loaders,
    build_train_loader,
)
from uit_reid.data.probes import PROBE_KINDS, Probes, binding_probes
from uit_reid.data.readers import FORMATS, JSONL_NAME, load_dataset
from uit_reid.data.records import (
    AnnotationError,
    AnnotationNotFoundError,
    Attributes,
    CorruptImageError,
    DataError,
    Gallery,
    MissingImagesError,
    PedesDataset,
    PersonRecord,
    Queries,
    Split,
    UnsafePathError,
)
from uit_reid.data.samplers import (
    SAMPLERS,
    IdentityGroupSampler,
    IdentitySampler,
    RandomBatchSampler,
    build_batch_sampler,
)
from uit_reid.data.synthetic import make_synthetic

__all__ = [
    "FORMATS",
    "JSONL_NAME",
    "PROBE_KINDS",
    "SAMPLERS",
    "AnnotationError",
    "AnnotationNotFoundError",
    "Attributes",
    "CorruptImageError",
    "DataError",
    "Gallery",
    "GalleryDataset",
    "IdentityGroupSampler",
    "IdentitySampler",
    "MissingImagesError",
    "PedesDataset",
    "PersonRecord",
    "Probes",
    "Queries",
    "QueryDataset",
    "RandomBatchSampler",
    "Split",
    "TrainDataset",
    "UnsafePathError",
    "binding_probes",
    "build_batch_sampler",
    "build_eval_loaders",
    "build_train_loader",
    "load_dataset",
    "make_synthetic",
]
