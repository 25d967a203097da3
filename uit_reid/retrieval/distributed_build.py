"""An IVF index built by any number of ranks into parts, then merged on disk into one on-disk index.

`build_ondisk_index` is what ``uit-reid index build --on-disk`` runs on every torchrun rank:

1. rank 0 trains the quantizer on the seeded sample `trained_index` draws (the one a single-process
   build draws) and writes it atomically to ``OUT.parts/trained.index``; after a barrier every rank
   reads it;
2. rank ``r`` of ``w`` adds the shards ``n % w == r`` (the split ``encode`` uses) into its part, held in
   memory, and writes it as an on-disk index ``part-R-of-W.index`` (with its ``.ivfdata`` and ``.ids``),
   then its completion record ``part-R-of-W.json``;
3. after a barrier rank 0 merges the parts (`merge_parts`) into the on-disk index ``OUT``
   (`uit_reid.retrieval.ondisk`) and removes ``OUT.parts``.

A part's slots are the global rows of its vectors in the embedding folder (recorded as runs in its
metadata), and every merged list is ordered by that row, so any world size writes the same files.
A rerun keeps the parts that have a completion record and rebuilds the others (a killed rank's).

`merge_parts` also merges parts built on separate machines (``uit-reid index merge``): they must
share one trained state (one ``trained.index``, say) and hold distinct ids.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from uit_reid.io import atomic_write_text, remove_stale_temp_files
from uit_reid.retrieval.idmap import IdMap, IdMapError, write_ids_file
from uit_reid.retrieval.index import GalleryIndex
from uit_reid.retrieval.index_file import write_index_file
from uit_reid.retrieval.ondisk import ONDISK_FIELD, emptied, ivf_of, side_files, write_lists
from uit_reid.retrieval.shards import EmbeddingShards
from uit_reid.retrieval.streaming import add_shard_numbers, trained_index

__all__ = ["PART_RUNS", "build_ondisk_index", "merge_indexes", "merge_parts", "parts_folder"]

logger = logging.getLogger(__name__)

PART_RUNS = "part_runs"
"""A part's metadata key: ``[[first global slot, count], ...]`` for its slots in order."""
_PLAN = "plan.json"
_TRAINED = "trained.index"


def parts_folder(out: Path) -> Path:
    """Where the ranks of a build into ``out`` keep the trained quantizer and their parts."""
    return out.with_name(out.name + ".parts")


def build_ondisk_index(
    shards: EmbeddingShards,
    kind: str,
    out: Path,
    *,
    train_size: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
) -> None:
    """Build the on-disk index ``out`` over ``shards`` on this rank of ``world_size`` (module docstring).

    ``barrier`` synchronises the ranks (``torch.distributed.barrier`` under torchrun). Only rank 0
    writes ``out``; ``metadata`` is recorded in it.
    """
    if GalleryIndex(max(shards.dim, 1), kind).family != "ivf":
        raise ValueError(f"an on-disk index needs an IVF kind (ivf, IVF<n>,Flat, IVF<n>,PQ<m>, ...), got {kind!r}")
    work = parts_folder(out)
    plan = {"kind": kind, "train_size": train_size, "seed": seed, "embeddings": str(shards.folder.resolve()),
            "vectors": len(shards), "shards": shards.num_shards, "fingerprint": shards.fingerprint}
    if rank == 0:
        _start(work, plan, world_size)
        if not (work / _TRAINED).is_file():
            trained_index(shards, kind, train_size=train_size, seed=seed).save(work / _TRAINED)
    barrier()
    part = work / f"part-{rank:05d}-of-{world_size:05d}.index"
    record = part.with_suffix(".json")
    mine = [n for n in range(shards.num_shards) if n % world_size == rank]
    if record.is_file():
        logger.info("rank %d/%d: part %s is complete, kept", rank, world_size, part)
    else:
        index = GalleryIndex.load(work / _TRAINED)
        add_shard_numbers(index, shards, mine, progress=progress)
        runs = [[int(shards.offsets[n]), shards.rows[n]] for n in mine if shards.rows[n]]
        # the part is on disk too, so the merge maps its lists and ids instead of reading them
        merge_indexes([index], [part], part, metadata={PART_RUNS: runs}, progress=False)
        vectors = len(index)
        del index  # rank 0 merges next: its part's lists and ids are on disk now, not needed in memory
        atomic_write_text(record, json.dumps({"rank": rank, "world_size": world_size, "shards": mine,
                                              "vectors": vectors}))
        logger.info("rank %d/%d: %d vectors of %d shards -> %s", rank, world_size, vectors, len(mine), part)
    barrier()
    if rank == 0:
        parts = [work / f"part-{r:05d}-of-{world_size:05d}.index" for r in range(world_size)]
        entry = {"folder": plan["embeddings"], "first_slot": 0, "rows": len(shards)}
        merge_parts(parts, out, metadata={**(metadata or {}), "embeddings": [entry]}, progress=progress)
        shutil.rmtree(work)


def _start(work: Path, plan: dict[str, Any], world_size: int) -> None:
    """Write the plan of a new build into ``work``, or check that ``work`` holds this very build (resume).

    Parts of another world size are dropped (their shard split differs); the trained quantizer is kept.
    """
    path = work / _PLAN
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} cannot be read as JSON: {err}; delete {work} to start over") from None
        for key, value in plan.items():
            if old.get(key) != value:
                raise ValueError(f"{work} holds parts of another build ({key}: {old.get(key)!r} there, {value!r} now); "
                                 f"delete it or use another --out")
        stale = [p for p in work.glob("part-*") if f"-of-{world_size:05d}." not in p.name]
        for p in stale:
            p.unlink()
        if stale:
            logger.info("dropped %d part file(s) of another world size from %s", len(stale), work)
        remove_stale_temp_files(work)
    else:
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(plan, indent=1))


def _trained_digest(index: GalleryIndex) -> str:
    """SHA-256 of ``index``'s FAISS serialisation without its entries: equal for parts of one trained state."""
    digest = hashlib.sha256()
    with emptied(index._index) as empty:
        faiss.write_index(empty, faiss.PyCallbackIOWriter(lambda chunk: digest.update(chunk) or len(chunk)))
    return digest.hexdigest()


def _check_parts(parts: Sequence[GalleryIndex], paths: Sequence[Path]) -> None:
    """Refuse (by name) a part that cannot be merged with the first."""
    if not parts:
        raise ValueError("no parts to merge")
    first_digest = ""
    for n, (part, path) in enumerate(zip(parts, paths)):
        if part.family != "ivf" or part._index is None:
            raise ValueError(f"part {path} is a {part.kind!r} index: only IVF kinds merge into an on-disk index")
        if part.num_slots != len(part):
            raise ValueError(f"part {path} has removed ids: rebuild it without them")
        if n:
            head, name = parts[0], paths[0]
            for what, mine, theirs in (("dimension", part.dim, head.dim), ("kind", part.factory, head.factory),
                                       ("encoder fingerprint", part.fingerprint, head.fingerprint)):
                if mine != theirs:
                    raise ValueError(f"part {path} has {what} {mine!r}, part {name} {theirs!r}")
            if _trained_digest(part) != first_digest:
                raise ValueError(f"part {path} was trained apart from part {name} (another quantizer): parts must "
                                 "share one trained index")
        else:
            first_digest = _trained_digest(part)


def _placements(parts: list[GalleryIndex], paths: Sequence[Path]) -> list[np.ndarray]:
    """Each part's runs as an (r, 3) array of (first local slot, first global slot, count).

    Parts with `PART_RUNS` go where their runs say (which must tile the global slots); parts without go
    one after another in the order given.
    """
    marked = [PART_RUNS in p.metadata for p in parts]
    if any(marked) and not all(marked):
        raise ValueError(f"part {paths[marked.index(False)]} is not a part of the build {paths[marked.index(True)]} "
                         "belongs to: merge the parts of one build")
    out = []
    start = 0
    for part, path in zip(parts, paths):
        if all(marked):
            runs = np.asarray(part.metadata[PART_RUNS], np.int64).reshape(-1, 2)
            if int(runs[:, 1].sum()) != len(part) or (runs < 0).any():
                raise ValueError(f"part {path}: its {PART_RUNS} do not cover its {len(part)} vectors")
        else:
            runs = np.array([[start, len(part)]], np.int64)
            start += len(part)
        local = np.concatenate([[0], np.cumsum(runs[:, 1])])[: len(runs)].astype(np.int64)
        out.append(np.column_stack([local, runs]))
    every = np.concatenate([np.column_stack([p[:, 1:], np.full(len(p), i)]) for i, p in enumerate(out)])
    every = every[np.argsort(every[:, 0], kind="stable")]
    ends = every[:, 0] + every[:, 1]
    clash = np.flatnonzero(every[1:, 0] != ends[:-1])
    if every.size and (every[0, 0] != 0 or clash.size):
        at = int(clash[0]) if clash.size else 0
        raise ValueError(f"parts {paths[int(every[at, 2])]} and {paths[int(every[min(at + 1, len(every) - 1), 2])]} "
                         "overlap or leave a gap in the gallery's rows")
    return out


def _to_global(runs: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Global slots of a part's ``local`` slots, given its runs (first local, first global, count)."""
    at = np.searchsorted(runs[:, 0], local, side="right") - 1
    return runs[at, 1] + (local - runs[at, 0])


def merge_parts(
    paths: Sequence[Path], out: Path, *, metadata: dict[str, Any] | None = None, progress: bool = True
) -> None:
    """Merge the IVF index files ``paths`` into the on-disk index ``out`` (`uit_reid.retrieval.ondisk`).

    One list at a time is read from the (memory-mapped) parts and written in global-slot order, so
    the lists never sit in memory together; the ids are streamed and the parts' sorted key tables
    merged a chunk at a time (`write_ids_file`). Refuses, naming the part, parts of another dimension, kind, encoder or trained
    state, parts with removed ids, overlapping rows and ids found in two parts. ``metadata``
    (default: the parts' ``embeddings`` records, shifted to their slots) is recorded in ``out``.
    """
    paths = [Path(p) for p in paths]
    merge_indexes([GalleryIndex.load(path, mmap=True) for path in paths], paths, out, metadata=metadata,
                  progress=progress)


def merge_indexes(
    parts: Sequence[GalleryIndex], paths: Sequence[Path], out: Path, *, metadata: dict[str, Any] | None = None,
    progress: bool = True,
) -> None:
    """`merge_parts` over loaded ``parts`` (named ``paths`` in messages); one part writes it as an on-disk index."""
    _check_parts(parts, paths)
    placements = _placements(list(parts), paths)
    ivfdata, ids_file = side_files(out)
    pieces = sorted(
        ((int(run[1]), (part._ids, int(run[0]), int(run[0] + run[2]), f"part {path}"))
         for part, path, runs in zip(parts, paths, placements) for run in runs if run[2]),
        key=lambda item: item[0])
    sources = [(part._ids, functools.partial(_to_global, runs)) for part, runs in zip(parts, placements)]
    try:
        write_ids_file(ids_file, [piece for _, piece in pieces], sources)
    except IdMapError as err:
        raise ValueError(str(err)) from None
    ivfs = [ivf_of(part._index) for part in parts]
    code_size = int(ivfs[0].code_size)

    def entries(list_no: int) -> tuple[np.ndarray, np.ndarray]:
        codes, labels = [], []
        for ivf, runs in zip(ivfs, placements):
            n = int(ivf.invlists.list_size(list_no))
            if n:
                codes.append(faiss.rev_swig_ptr(ivf.invlists.get_codes(list_no), n * code_size).reshape(n, code_size))
                local = faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), n).astype(np.int64)
                labels.append(_to_global(runs, local))
        if not labels:
            return np.zeros((0, code_size), np.uint8), np.zeros(0, np.int64)
        label = np.concatenate(labels)
        order = np.argsort(label, kind="stable")
        return np.concatenate(codes)[order], label[order]

    sizes = write_lists(ivfdata, int(ivfs[0].nlist), code_size, entries, progress=progress)
    head = parts[0]
    if metadata is None:
        metadata = {k: v for k, v in head.metadata.items() if k not in (PART_RUNS, "embeddings")}
        shifted = [{**e, "first_slot": int(e["first_slot"]) + int(runs[0, 1])}
                   for part, runs in zip(parts, placements) if len(runs)
                   for e in part.metadata.get("embeddings", []) if isinstance(e, dict) and "first_slot" in e]
        if shifted:
            metadata["embeddings"] = shifted
    fields = {"dim": head.dim, "kind": head.kind, "factory": head.factory, "metric": "cosine",
              "normalization": "l2", "parameters": head.parameters(), "fingerprint": head.fingerprint,
              "metadata": metadata,
              ONDISK_FIELD: {"ivfdata": ivfdata.name, "ids": ids_file.name, "vectors": sum(sizes), "list_sizes": sizes}}
    with emptied(head._index) as empty:
        write_index_file(out, fields, IdMap(), empty)  # last: its presence means the side files are complete
    logger.info("merged %d parts (%d vectors) into %s", len(parts), sum(sizes), out)
