"""Input checks of `uit_reid.retrieval.index.GalleryIndex`: constructor arguments, features, ids, fingerprints.

Each refuses bad input with one line naming the argument at fault; none changes the index, so a refused
call leaves it as it was.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from uit_reid._errors import EncoderMismatchError
from uit_reid.retrieval.factory_string import Layout, parse_factory
from uit_reid.retrieval.idmap import IdMap

KIND_ALIASES = ("flat", "ivf", "hnsw")
"""Short names for the three uncompressed kinds (any supported FAISS factory string works too)."""


def check_arguments(
    dim: Any, kind: Any, fingerprint: Any, nlist: int | None, nprobe: int | None, train_size: int | None,
    hnsw_m: int, ef_construction: int, ef_search: int,
) -> Layout | None:
    """Refuse bad constructor arguments naming the argument; the factory string's layout (None for an alias)."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not isinstance(kind, str):
        raise ValueError(f"kind must be one of {KIND_ALIASES} or a FAISS factory string, got {kind!r}")
    layout = None
    if kind not in KIND_ALIASES:
        try:
            layout = parse_factory(kind, int(dim))
        except ValueError as err:
            raise ValueError(f"kind must be one of {KIND_ALIASES} or a supported FAISS factory string: {err}") from None
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise TypeError(f"fingerprint must be a string or None, got {type(fingerprint).__name__}")
    for name, value in (("nlist", nlist), ("nprobe", nprobe), ("train_size", train_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if hnsw_m < 2 or ef_construction < 1 or ef_search < 1:
        raise ValueError(
            f"hnsw_m (>=2), ef_construction and ef_search (>=1) out of range: {hnsw_m}, {ef_construction}, {ef_search}"
        )
    return layout


def normalised_features(x: Any, dim: int, name: str) -> np.ndarray:
    """(n, dim) float32 C-contiguous L2-normalised copy of ``x``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    arr = np.array(x, dtype=np.float32, order="C", copy=True)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, {dim}), got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise ValueError(f"{name} has dimension {arr.shape[1]} but the index has dim {dim}")
    # one pass for the squared norms; a NaN/inf anywhere in a row makes its squared norm non-finite
    sq = np.einsum("ij,ij->i", arr, arr, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(sq))
    if bad.size:
        raise ValueError(f"{name} contains NaN, infinite or overflowing values, e.g. in row {bad[0]}")
    zero = np.flatnonzero(sq == 0)
    if zero.size:
        raise ValueError(f"{name} has all-zero rows (cannot be L2-normalised), e.g. row {zero[0]}")
    arr /= np.sqrt(sq).astype(np.float32)[:, None]
    return arr


def check_fingerprint(recorded: str | None, fingerprint: str | None, where: str, fresh: bool) -> None:
    """Refuse features of encoder ``fingerprint`` in an index that records ``recorded``; ``fresh``: an
    index with no slot yet, which takes the fingerprint of its first add."""
    if fingerprint is None or fingerprint == recorded:
        return
    if recorded is None and where == "add" and fresh:
        return
    if recorded is None:
        raise EncoderMismatchError(
            f"encoder fingerprint mismatch in {where}: the index records no encoder fingerprint, so "
            f"features of {fingerprint!r} cannot be checked against it; rebuild the index with one"
        )
    raise EncoderMismatchError(
        f"encoder fingerprint mismatch in {where}: index was built with {recorded!r}, got {fingerprint!r}"
    )


def id_key(id_: Any, id_type: str | None) -> Any:
    """``id_`` as the index stores it (a Python int or str), refused when it is not of ``id_type``."""
    if id_type == "int":
        if isinstance(id_, (str, bytes)):
            raise TypeError(f"this index has integer ids, got string id {id_!r}")
        if isinstance(id_, (bool, np.bool_)) or not isinstance(id_, (int, np.integer)):
            raise TypeError(f"ids must be integers, got {type(id_).__name__} id {id_!r}")
        return int(id_)
    if not isinstance(id_, str):
        raise TypeError(f"this index has string ids, got {type(id_).__name__} id {id_!r}")
    return id_


def id_list(ids: Any) -> list[Any]:
    """The ids given to ``remove`` (one id, a sequence, a numpy array or a tensor) as a list."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind not in "iuUO":
            raise TypeError(f"ids must be integers or strings, got dtype {ids.dtype}")
        ids = ids.reshape(-1).tolist()
    if isinstance(ids, (str, int, np.integer, float, np.floating)):
        ids = [ids]
    return ids


def _values_and_kind(ids: Any) -> tuple[list[Any], str]:
    """``ids`` as a list and their kind: "int", "str" or "bad" (mixed or of another type)."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, str):
        raise TypeError("ids must be a sequence of ids, got a single string")
    if isinstance(ids, np.ndarray):
        ids = ids.astype(np.int64) if ids.dtype.kind in "iu" and ids.dtype != np.uint64 else ids
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        if ids.dtype.kind in "iu":
            if ids.dtype == np.uint64 and ids.size and ids.max() >= 2**63:
                raise ValueError("ids must fit in int64")
            return ids.astype(np.int64).tolist(), "int"
        if ids.dtype.kind in "UO":
            values = list(ids.tolist())
            return values, "str" if all(isinstance(v, str) for v in values) else "bad"
        raise TypeError(f"ids must be int64 numbers or strings, got dtype {ids.dtype}")
    values = list(ids)
    if all(isinstance(v, str) for v in values):
        return values, "str"
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return [int(v) for v in values], "int"
    return values, "bad"


def normalise_ids(ids: Any, n: int, known: IdMap, look_up: bool = True) -> tuple[list[Any], str]:
    """Validate ``ids`` for ``n`` new rows (all ints or all strings of ``known``'s type, unique, and not in
    ``known`` unless ``look_up`` is False because the caller checked that); return them as a list and their kind."""
    values, kind = _values_and_kind(ids)
    if kind == "bad":
        raise TypeError("ids must be all integers or all strings")
    if len(values) != n:
        raise ValueError(f"ids has {len(values)} entries but features has {n} rows")
    if known.id_type is not None and values and kind != known.id_type:
        names = {"int": "integer", "str": "string"}
        raise TypeError(f"this index has {names[known.id_type]} ids, got {names[kind]} ids")
    if kind == "int" and values and not all(-(2**63) <= v < 2**63 for v in (min(values), max(values))):
        raise ValueError("ids must fit in int64")
    unique = set(values)
    if len(unique) != len(values):
        raise ValueError("ids contains duplicates")
    if kind == "int" and -1 in unique:
        raise ValueError("ids must not contain -1: search results use it for 'no result'")
    found = known.slots_of(values) if look_up and len(known) else np.zeros(0, np.int64)
    clash = [v for v, s in zip(values, found.tolist()) if s >= 0]
    if clash:
        raise ValueError(f"ids already in the index: {sorted(clash)[:5]}")
    return values, kind
