"""The ``uit-reid`` command: train, evaluate, convert, encode, index, search, serve, synth and the demo.

Every sub-command has ``--help``. Wrong arguments and unusable files end with a one-line
``uit-reid: error: ...`` message and exit status 2 (usage) or 1 (anything else), not a traceback;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uit_reid._version import __version__
from uit_reid.train.config import CHOICES, Registry

logger = logging.getLogger("uit_reid.cli")

class CLIError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


# ---------------------------------------------------------------------------------------- helpers
def _setup_logging(verbose: bool) -> None:
    from uit_reid._display import ShownFormatter

    handler = logging.StreamHandler()  # stderr: stdout stays for results
    handler.setFormatter(ShownFormatter("%(message)s"))  # ids and paths from files cannot forge lines
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("uit_reid").setLevel(logging.DEBUG if verbose else logging.INFO)


class _Choices(Sequence[str]):
    """argparse ``choices`` read from a config `Registry` when argparse needs them (parsing, errors, help).

    So ``uit-reid --help`` imports no registry module, and no list of allowed values is typed twice.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def __getitem__(self, i):  # type: ignore[override]
        return self.registry.keys()[i]

    def __len__(self) -> int:
        return len(self.registry.keys())

    def __contains__(self, value: object) -> bool:
        return value in self.registry.keys()  # noqa: SIM118 - a Registry is a tuple of where, not the names


def _device(name: str) -> str:
    from uit_reid.device import resolve_device

    return str(resolve_device(name))


# ---------------------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from uit_reid.distributed import torchrun_process_group
    from uit_reid.retrieval import metrics_table
    from uit_reid.train import Trainer, load_config

    config = load_config(args.config)
    overrides = list(args.set or [])
    if args.output_dir:
        overrides.append(f"train.output_dir={json.dumps(str(args.output_dir))}")
    if overrides:
        config = config.override(overrides)
    with torchrun_process_group(config.train.device):  # this entry point owns the process group
        result = Trainer(config, resume=args.resume or False, overwrite=args.overwrite).fit()
    if "test" in result:
        print(metrics_table({"test (t2i)": result["test"]}))
    print(f"model: {result.get('model_dir')}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from uit_reid.data import load_dataset
    from uit_reid.evaluation import (
        binding_table,
        encode_split,
        evaluate_binding,
        evaluate_text_use,
        text_use_table,
    )
    from uit_reid.factory import load_model
    from uit_reid.io import check_writable
    from uit_reid.retrieval import evaluate, metrics_table

    if args.out:
        check_writable(args.out)
    device = _device(args.device)
    model = load_model(args.model, device=device)
    dataset = load_dataset(args.dataset, format=args.format)
    split = getattr(dataset, args.split)
    if split is None:
        raise CLIError(f"{args.dataset} has no {args.split} split")
    q, q_pids, g, g_pids = encode_split(model, split, args.batch_size, device, args.num_workers, progress=True)
    similarity = q @ g.t()
    rows = {f"{args.split} t2i": evaluate(similarity, q_pids, g_pids)}
    if args.i2t:
        rows[f"{args.split} i2t"] = evaluate(similarity.t(), g_pids, q_pids)
    table = metrics_table(rows)
    binding = evaluate_binding(model, split, args.batch_size, device, image_features=g)
    if binding:  # the split's records carry attributes
        rows[f"{args.split} binding"] = binding
        table += "\n\n" + binding_table(binding)
    text_use = evaluate_text_use(model, split, args.batch_size, device)
    if text_use:  # the model has a TIR head and the records carry garment colours
        rows[f"{args.split} TIR text use"] = text_use
        table += "\n\n" + text_use_table(text_use)
    print(json.dumps(rows) if args.json else table)
    if args.out:
        from uit_reid.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(rows, indent=2) + "\n")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from uit_reid.convert import convert_model
    from uit_reid.io import check_not_input, check_writable, folder_names
    from uit_reid.model import CONFIG_NAME, WEIGHTS_NAME
    from uit_reid.model_card import MODEL_CARD_NAME

    out = Path(args.out)
    check_not_input(out, [args.checkpoint], writes=(WEIGHTS_NAME, CONFIG_NAME, MODEL_CARD_NAME))
    if out.exists() and (not out.is_dir() or folder_names(out)) and not args.force:
        raise CLIError(f"{out} already exists and is not empty; pass --force to write the model files into it")
    check_writable(out / CONFIG_NAME)  # before the conversion, not after it
    model = convert_model(
        args.checkpoint, format=args.format, image_size=args.image_size, stride=args.stride, model_name=args.model
    )
    model.save_pretrained(out)
    print(f"converted {args.checkpoint} -> {out}")
    return 0


def _model_ref(source: str) -> str:
    """How an index remembers its model: a Hub id as given, a local path made absolute."""
    from uit_reid.hub import hub_repo_id

    return source if hub_repo_id(source) is not None else str(Path(source).resolve())


def _bounded(kind: type[int] | type[float], low: float, high: float | None = None):
    """argparse type: a finite ``kind`` from ``low`` to ``high`` (argparse names the flag, this the value)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"must be {low:g} or more, got {value:g}" if high is None
                else f"must be between {low:g} and {high:g}, got {value:g}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value" fallback names the type
    return parse


_non_negative_int = _bounded(int, 0)


def _proxy_addresses(text: str) -> tuple[str, ...]:
    """argparse type of ``--forwarded-allow-ips`` (`uit_reid.serve.server.proxy_addresses`)."""
    from uit_reid.serve.server import proxy_addresses

    try:
        return proxy_addresses(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class _Renamed(argparse.Action):
    """A flag that was renamed: giving it is argparse's one error line naming the new flag (hidden from --help)."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string} is now {self.new}")


def _model_argument(p: argparse.ArgumentParser, help: str, required: bool = False) -> None:
    """``--model`` (a model folder, a Hub id or a trainer's last.pt), and the old ``--checkpoint`` naming it."""
    p.add_argument("--model", required=required, help=help)
    p.add_argument("--checkpoint", action=_Renamed, new="--model")


def _memory_kind(args: argparse.Namespace, n: int, dim: int) -> str:
    """--kind, or the kind --memory-budget picks for ``n`` vectors of ``dim``."""
    from uit_reid.retrieval import choose_kind, index_memory, parse_bytes, parse_factory
    from uit_reid.retrieval.budget import HNSW_QUANTIZER_LISTS

    if args.memory_budget is None:
        return args.kind or "flat"
    if args.kind:
        raise CLIError("give --kind or --memory-budget, not both")
    kind = choose_kind(n, dim, parse_bytes(args.memory_budget))
    layout = parse_factory(kind, dim)
    lists = "" if layout.kind != "ivf" else (
        f"; {layout.nlist} lists by budget_nlist, {'an HNSW' if layout.quantizer_hnsw_m else 'a flat'} coarse "
        f"quantizer: HNSW from {HNSW_QUANTIZER_LISTS} lists on")
    logger.info("--memory-budget %s: %s (about %.2f GB for %d vectors%s)", args.memory_budget, kind,
                index_memory(kind, n, dim) / 1e9, n, lists)
    return kind


def _model_inputs(source: str | None) -> list[Path]:
    """The files a ``--model`` argument reads (none for a Hub id): no output may be one of them."""
    from uit_reid.model import CONFIG_NAME, WEIGHTS_NAME

    if not source:
        return []
    path = Path(source)
    return [path / WEIGHTS_NAME, path / CONFIG_NAME] if path.is_dir() else [path] if path.exists() else []


@contextlib.contextmanager
def _index_writer(path: Path, what: str):
    """Hold the `FolderLock` of the folder of index file ``path`` (a second writer stops, naming this one)
    and remove the temporary files an earlier, killed save of ``path`` left there."""
    from uit_reid.io import FolderLock, remove_stale_temp_files

    with FolderLock(path.parent, what):
        remove_stale_temp_files(path.parent, path.name)
        yield


def cmd_index_build(args: argparse.Namespace) -> int:
    from uit_reid.io import check_not_input, check_writable

    out = check_writable(args.out)
    check_not_input(out, _model_inputs(args.model))
    if args.part_memory is not None and not args.on_disk:
        raise CLIError("--part-memory works with --on-disk")
    if args.embeddings:
        if args.images or args.model:
            raise CLIError("give --embeddings, or --images with --model, not both")
        from uit_reid.retrieval import EmbeddingShards, build_index_from_shards

        shards = EmbeddingShards(args.embeddings)
        check_not_input(out, shards.inputs)
        kind = _memory_kind(args, len(shards), shards.dim)
        if args.on_disk:
            return _build_on_disk(args, shards, kind, out)
        with _index_writer(out, "uit-reid index build"):
            index = build_index_from_shards(shards, kind, train_size=args.train_size)
            if shards.manifest and shards.manifest.get("model"):
                index.metadata["model"] = shards.manifest["model"]
            index.save(out)
        print(f"indexed {len(index)} vectors from {args.embeddings} as {index.factory} -> {out}")
        return 0
    if args.on_disk:
        raise CLIError("--on-disk works with --embeddings (encode the images with 'uit-reid encode' first)")
    if not (args.images and args.model):
        raise CLIError("give --images and --model (or --embeddings)")
    if args.memory_budget is not None:
        raise CLIError("--memory-budget works with --embeddings (encode the images with 'uit-reid encode' first)")
    from uit_reid.factory import load_model
    from uit_reid.retrieval import build_index_from_folder

    device = _device(args.device)
    model = load_model(args.model, device=device)
    with _index_writer(out, "uit-reid index build"):
        index = build_index_from_folder(
            args.images,
            model.encode_image,
            model.eval_transform(),
            kind=args.kind or "flat",
            fingerprint=model.encoder.fingerprint(),
            batch_size=args.batch_size,
            device=device,
            image_size=model.image_size,
            num_workers=args.workers,
            train_size=args.train_size,
        )
        if len(index) == 0:
            raise CLIError(f"no readable images under {args.images}")
        index.metadata = {"model": _model_ref(args.model), "images": str(Path(args.images).resolve())}
        index.save(out)  # one file, replaced atomically: an existing index stays whole until the new one is in
    print(f"indexed {len(index)} images -> {out}")
    return 0


def _build_on_disk(args: argparse.Namespace, shards: Any, kind: str, out: Path) -> int:
    """``index build --on-disk``: every torchrun rank adds its shards into a part, rank 0 merges them on disk."""
    import torch.distributed as dist

    from uit_reid import distributed as D
    from uit_reid.retrieval.budget import PART_MEMORY, parse_bytes
    from uit_reid.retrieval.distributed_build import build_ondisk_index
    from uit_reid.retrieval.index_file import IndexFormatError

    try:
        part_memory = PART_MEMORY if args.part_memory is None else parse_bytes(args.part_memory)
    except ValueError as err:
        raise CLIError(f"--part-memory: {err}") from None
    with D.torchrun_process_group("cpu"):
        rank = D.rank()
        metadata = {"model": shards.manifest["model"]} if shards.manifest and shards.manifest.get("model") else {}
        build_ondisk_index(shards, kind, out, train_size=args.train_size, rank=rank, world_size=D.world_size(),
                           barrier=dist.barrier if D.is_distributed() else lambda: None, metadata=metadata,
                           part_memory=part_memory, progress=rank == 0)
    if rank == 0:
        try:
            from uit_reid.retrieval import GalleryIndex

            index = GalleryIndex.load(out, mmap=True)
        except (IndexFormatError, ValueError) as err:  # pragma: no cover - the merge just wrote it
            raise CLIError(f"{out}: {err}") from None
        print(f"indexed {len(index)} vectors from {args.embeddings} as {index.factory} on disk -> {out} "
              f"(lists in {out.name}.ivfdata, ids in {out.name}.ids)")
    return 0


def cmd_index_merge(args: argparse.Namespace) -> int:
    from uit_reid.io import check_writable
    from uit_reid.retrieval.distributed_build import merge_parts

    out = check_writable(args.out)
    merge_parts([Path(p) for p in args.parts], out)
    print(f"merged {len(args.parts)} parts on disk -> {out} (lists in {out.name}.ivfdata, ids in {out.name}.ids)")
    return 0


def cmd_index_add(args: argparse.Namespace) -> int:
    from uit_reid.io import check_not_input
    from uit_reid.retrieval import EmbeddingShards, GalleryIndex, add_shards

    # the lock first (two adds at once would lose one), then the folder's checks and the add
    with _index_writer(Path(args.index), "uit-reid index add"):
        shards = EmbeddingShards(args.embeddings)
        check_not_input(args.index, shards.inputs, "--index")
        index = GalleryIndex.load(args.index)
        before = len(index)
        add_shards(index, shards, allow_no_fingerprint=args.allow_no_fingerprint)
        index.save(args.index)  # the old file stays whole until the new one replaces it
    print(f"added {len(index) - before} vectors from {args.embeddings} -> {args.index} ({len(index)} in all)")
    return 0


def cmd_index_export(args: argparse.Namespace) -> int:
    from uit_reid.retrieval import GalleryIndex
    from uit_reid.retrieval.export import export_index

    index_path, table_path = export_index(GalleryIndex.load(args.index), args.out)
    print(f"exported {args.index} -> {index_path} (faiss.read_index) and {table_path} (row i: FAISS label i)")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from uit_reid import distributed as D
    from uit_reid.factory import load_model
    from uit_reid.io import FolderLock, check_not_input
    from uit_reid.retrieval.shards import encode_shards, read_image_list

    with D.torchrun_process_group(args.device):
        rank = D.rank()
        device = _device(args.device)
        if D.is_distributed() and device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        # rank 0 holds the output folder for the whole job: a second job into it refuses at once
        images = Path(args.images)
        check_not_input(args.out, [images] if images.is_file() else [])  # before the lock makes --out a folder
        with FolderLock(args.out, "uit-reid encode") if rank == 0 else contextlib.nullcontext():
            files = read_image_list(images)
            _check_encode_out(Path(args.out), files)
            model = load_model(args.model, device=device)
            manifest = encode_shards(
                files, args.out, model.encode_image,
                model.eval_transform(),
                fingerprint=model.encoder.fingerprint(), shard_size=args.shard_size, batch_size=args.batch_size,
                device=device, image_size=model.image_size, num_workers=args.workers, rank=rank,
                world_size=D.world_size(), barrier=dist.barrier if D.is_distributed() else lambda: None,
                metadata={"model": _model_ref(args.model)}, progress=rank == 0,
            )
    if rank == 0:
        print(f"encoded {manifest['encoded']} images ({manifest['skipped']} unreadable, skipped) "
              f"into {manifest['num_shards']} shards -> {args.out}")
    return 0


def _check_encode_out(out: Path, files: list[str]) -> None:
    """Refuse an ``encode --out`` whose shard files would replace a listed image (no stat per image)."""
    from uit_reid.io import check_not_input
    from uit_reid.retrieval.shards import MANIFEST

    inside = (str(out.absolute()) + os.sep, str(out.resolve()) + os.sep)
    check_not_input(out, [f for f in files if f.startswith(inside)], writes=(MANIFEST, "img_emb", "metadata", "logs"))


def cmd_search(args: argparse.Namespace) -> int:
    from uit_reid._display import shown
    from uit_reid.factory import load_model
    from uit_reid.io import check_not_input, check_writable
    from uit_reid.retrieval import GalleryIndex, render_results, search_text

    if args.k < 1:
        raise CLIError(f"--k must be at least 1, got {args.k}")
    index_path = Path(args.index)
    if args.out:
        check_writable(args.out)
    index = GalleryIndex.load(index_path)
    source = args.model or index.metadata.get("model")
    if not isinstance(source, str):
        raise CLIError(f"{index_path}: no --model given and the index does not record its model")
    if args.out:
        check_not_input(args.out, [index_path, *_model_inputs(source)])
    device = _device(args.device)
    model = load_model(source, device=device)
    fingerprint = model.encoder.fingerprint()
    encode_text = model.encode_captions
    rerank = _reranker(index, args.rerank)
    hits = search_text(index, encode_text, [args.query], k=args.k, fingerprint=fingerprint, rerank=rerank,
                       candidates=args.rerank or 100)[0]
    if args.json:
        results = [{"rank": h.rank, "score": h.score, "id": h.id, "path": h.path} for h in hits]
        print(json.dumps({"query": args.query, "results": results}))
    else:
        for hit in hits:
            print(f"{hit.rank:>3}  {hit.score:.4f}  {shown(hit.path or hit.id)}")
    if args.out:
        out = Path(args.out)
        check_not_input(out, [h.path for h in hits if h.path])  # the grid reads these images
        if rerank is not None:
            check_not_input(out, [p for _, shards, _ in rerank.parts for p in shards.inputs])
        render_results(args.query, hits).save(out)
        logger.info("results grid -> %s", out)
    return 0


def _reranker(index, candidates: int | None):
    """`ShardVectors` over the embedding files ``index`` was built from when ``--rerank`` is given."""
    from uit_reid.retrieval import ShardVectors

    if candidates is None:
        return None
    try:
        return ShardVectors(index)
    except (ValueError, OSError) as err:
        raise CLIError(f"--rerank: {err}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from uit_reid.serve import ServeLimits, serve
    from uit_reid.serve.server import connection_budget

    budget = connection_budget()
    if args.max_connections is not None and args.max_connections > budget:
        raise CLIError(f"--max-connections: {args.max_connections} is more than the open-file limit "
                       f"(ulimit -n) leaves room for ({budget})")
    limits = ServeLimits(
        max_query_chars=args.max_query_chars, max_k=args.max_k, max_body_bytes=args.max_body_bytes,
        rate=args.rate_limit, burst=args.burst, max_header_bytes=args.max_header_bytes,
        request_timeout=args.request_timeout, keep_alive_timeout=args.keep_alive_timeout,
        max_connections=args.max_connections or min(ServeLimits.max_connections, budget),
    )
    serve(args.index, args.model, host=args.host, port=args.port, device=_device(args.device),
          limits=limits, max_batch=args.max_batch, max_wait=args.batch_wait_ms / 1000.0, mmap=not args.no_mmap,
          rerank=args.rerank,
          allowed_hosts=tuple(args.allowed_host or ()), forwarded_allow_ips=args.forwarded_allow_ips)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from uit_reid.data import make_synthetic

    path = make_synthetic(
        args.out,
        num_ids=args.num_ids,
        images_per_id=args.images_per_id,
        seed=args.seed,
        num_val_ids=args.num_val_ids,
        num_test_ids=args.num_test_ids,
        force=args.force,
        world=args.world,
    )
    print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from uit_reid.demo import DEMO_COLUMNS, run_demo
    from uit_reid.distributed import torchrun_process_group
    from uit_reid.retrieval import metrics_table
    from uit_reid.train import load_config

    out = Path(args.out)
    pretrained = load_config(args.config).model.pretrained
    start = "random init" if pretrained in (None, "none") else f"zero-shot, {pretrained} weights"
    with torchrun_process_group(args.device):  # this entry point owns the process group
        metrics = run_demo(out, quick=args.quick, device=_device(args.device), config=args.config)
    rows = {f"before training ({start})": metrics["zero_shot"], "trained": metrics["fine_tuned"]}
    print(metrics_table(rows, label="test (t2i)", keys=DEMO_COLUMNS))
    model_dir = next(p for p in (out / "best", out / "last") if p.is_dir())
    print(f"search the test gallery in a browser (pip install 'uit_reid[serve]'):\n"
          f"  uit-reid serve --index {out / 'gallery.faiss'} --model {model_dir}")
    return 0


# ---------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser; it imports nothing heavy, so ``--help`` answers at once."""
    parser = argparse.ArgumentParser(
        prog="uit-reid", description="Text-to-image person retrieval with the UIT framework."
    )
    parser.add_argument("--version", action="version", version=f"uit-reid {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_train_parser, _evaluate_parser, _convert_parser, _encode_parser, _index_parser,
                _search_parser, _serve_parser, _synth_parser, _demo_parser):
        add(sub)
    return parser


_DEVICE_HELP = "cpu, cuda, cuda:N or auto (the GPU when there is one; default: %(default)s)"


def _train_parser(sub: argparse._SubParsersAction) -> None:
    """The ``train`` sub-command's arguments."""
    p = sub.add_parser("train", help="train a model from a TOML config")
    p.add_argument("--config", required=True, help="a TOML file or a bundled name (demo, cuhk_pedes, ...)")
    p.add_argument(
        "--resume", nargs="?", const=True, metavar="CHECKPOINT",
        help="continue from <output_dir>/last.pt (or from CHECKPOINT, e.g. last.prev.pt)",
    )
    p.add_argument("--overwrite", action="store_true", help="start a fresh run in a run folder that is not empty")
    p.add_argument("--output-dir", help="override train.output_dir")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    p.set_defaults(func=cmd_train)


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    """The ``evaluate`` sub-command's arguments."""
    p = sub.add_parser(
        "evaluate", help="text-to-image metrics of a model on a dataset split (and attribute binding where "
        "its records carry attributes)"
    )
    _model_argument(p, "a model directory (save_pretrained), a Hub id org/name or hf-hub:org/name, or last.pt",
                    required=True)
    p.add_argument("--dataset", required=True, help="dataset root or annotation file")
    p.add_argument("--format", default="auto", metavar="FORMAT", choices=_Choices(Registry("uit_reid.data.readers", "FORMATS", ("auto",))),
                   help="the dataset's layout: %(choices)s (default: %(default)s, from the annotation file's name)")
    p.add_argument("--split", default="test", choices=["val", "test"], help="split to evaluate (default: %(default)s)")
    p.add_argument("--i2t", action="store_true", help="also report image-to-text metrics")
    p.add_argument("--batch-size", type=int, default=256, help="images or captions per batch (default: %(default)s)")
    p.add_argument("--workers", "--num-workers", dest="num_workers", type=_non_negative_int,
                   default=min(4, (os.cpu_count() or 1) - 1),
                   help="processes decoding gallery images while the model encodes (default: min(4, CPU cores - 1))")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.add_argument("--out", help="also write the metrics as JSON to this file")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object instead of a table")
    p.set_defaults(func=cmd_evaluate)


def _convert_parser(sub: argparse._SubParsersAction) -> None:
    """The ``convert`` sub-command's arguments."""
    p = sub.add_parser("convert", help="convert an IRRA/SEN/OpenAI-CLIP/open_clip checkpoint to a model folder")
    p.add_argument("checkpoint", help="the checkpoint file (e.g. IRRA's best.pth)")
    p.add_argument("--out", required=True, help="model folder to write (save_pretrained format)")
    p.add_argument("--format", default="auto", metavar="LAYOUT", choices=_Choices(Registry("uit_reid.convert", "LAYOUTS", ("auto",))),
                   help="checkpoint layout: %(choices)s (default: %(default)s, detected from its keys)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="input size; default: configs.yaml beside the checkpoint (irra/sen) or the square grid")
    p.add_argument("--stride", type=int, help="IRRA's stride_size (default: configs.yaml, else the patch size)")
    p.add_argument("--model", help="open_clip architecture of an open_clip checkpoint (e.g. ViT-B-16)")
    p.add_argument("--force", action="store_true", help="write into an existing, non-empty --out folder")
    p.set_defaults(func=cmd_convert)


def _encode_parser(sub: argparse._SubParsersAction) -> None:
    """The ``encode`` sub-command's arguments."""
    p = sub.add_parser("encode", help="encode images into embedding shards (resumable; runs under torchrun)")
    _model_argument(p, "a model directory (save_pretrained), a Hub id or last.pt", required=True)
    p.add_argument("--images", required=True,
                   help="a folder of images (searched recursively) or a text file naming one image per line")
    p.add_argument("--out", required=True,
                   help="embedding folder to write (img_emb/, metadata/, logs/, manifest.json); "
                   "the same command again completes an interrupted run")
    p.add_argument("--shard-size", type=int, default=10_000, help="images per shard (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default: %(default)s)")
    p.add_argument("--workers", type=_non_negative_int, default=min(4, (os.cpu_count() or 1) - 1),
                   help="processes decoding images per rank (default: min(4, CPU cores - 1))")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.set_defaults(func=cmd_encode)


def _index_parser(sub: argparse._SubParsersAction) -> None:
    """The ``index`` sub-command's arguments."""
    index_parser = sub.add_parser("index", help="gallery index commands")
    index_sub = index_parser.add_subparsers(dest="index_command", metavar="ACTION")
    b = index_sub.add_parser("build", help="a FAISS index from a folder of images or from embedding shards")
    _model_argument(b, "a model directory (save_pretrained), a Hub id or last.pt (with --images)")
    b.add_argument("--images", help="folder of images (searched recursively), encoded now")
    b.add_argument("--embeddings", help="embedding folder written by 'uit-reid encode' (or clip-retrieval), "
                   "streamed shard by shard")
    b.add_argument("--out", required=True, help="index file to write (one file; an existing one is replaced atomically)")
    b.add_argument("--kind", default=None,
                   help="flat (exact; default), ivf, hnsw or a FAISS factory string such as IVF4096,PQ64 or "
                   "OPQ64_256,IVF65536_HNSW32,PQ64x4fs (compressed, for large galleries; grammar: "
                   "[OPQ<m>[_<d>],]IVF<n>[_HNSW<m>],{Flat|PQ<m>[x<bits>]|PQ<m>x4fs}, HNSW<m>,Flat or Flat)")
    b.add_argument("--memory-budget", metavar="SIZE",
                   help="pick the kind that fits in SIZE (e.g. 4GB, or autofaiss's 16G) instead of --kind, "
                   "as autofaiss does")
    b.add_argument("--train-size", type=int, default=None,
                   help="vectors an IVF kind is trained on (default: max(40 x lists, 40 x PQ centroids))")
    b.add_argument("--batch-size", type=int, default=64, help="images per batch (default: %(default)s)")
    b.add_argument("--workers", type=_non_negative_int, default=min(4, (os.cpu_count() or 1) - 1),
                   help="processes decoding images while the model encodes (default: min(4, CPU cores - 1); "
                   "0: decode in this process)")
    b.add_argument("--device", default="auto", help=_DEVICE_HELP)
    b.add_argument("--on-disk", action="store_true",
                   help="with --embeddings and an IVF kind: build on every torchrun rank and merge the parts into "
                   "an index whose lists (OUT.ivfdata) and ids (OUT.ids) stay on disk, memory-mapped when served")
    b.add_argument("--part-memory", metavar="SIZE", default=None,
                   help="with --on-disk: memory each rank lets the part it fills take before writing it to disk and "
                   "starting the next (default: 1GiB), so a rank's memory does not grow with its share of the gallery")
    b.set_defaults(func=cmd_index_build)
    m = index_sub.add_parser("merge", help="merge IVF index parts sharing one trained quantizer into an on-disk index")
    m.add_argument("parts", nargs="+", metavar="PART", help="index files (e.g. the parts of an --on-disk build)")
    m.add_argument("--out", required=True, help="index file to write (its lists and ids are written beside it)")
    m.set_defaults(func=cmd_index_merge)
    a = index_sub.add_parser("add", help="append embedding shards to an index without retraining (atomic)")
    a.add_argument("--index", required=True, help="index file to extend (replaced atomically)")
    a.add_argument("--embeddings", required=True, help="embedding folder written by 'uit-reid encode'")
    a.add_argument("--allow-no-fingerprint", action="store_true",
                   help="add a folder that records no encoder fingerprint (no manifest.json) to an index that "
                        "records one; only if you know the index's model encoded it")
    a.set_defaults(func=cmd_index_add)
    e = index_sub.add_parser("export", help="plain FAISS (image.index) + ids as parquet, clip-retrieval's layout")
    e.add_argument("index", help="index file written by 'uit-reid index build'")
    e.add_argument("--out", required=True, help="folder to write image.index and metadata/metadata_0.parquet into")
    e.set_defaults(func=cmd_index_export)
    index_parser.set_defaults(func=functools.partial(_missing_action, index_parser))



_RERANK_HELP = ("re-score the top K candidates of each query exactly from the float16 embedding files the "
                "index was built from (for compressed kinds such as IVF-PQ; default: no re-ranking)")


def _search_parser(sub: argparse._SubParsersAction) -> None:
    """The ``search`` sub-command's arguments."""
    p = sub.add_parser("search", help="search an index with a sentence")
    p.add_argument("query", help="the description, e.g. 'a woman in a red coat'")
    p.add_argument("--index", required=True, help="index file written by 'uit-reid index build'")
    _model_argument(p, "defaults to the model the index was built with")
    p.add_argument("--k", type=int, default=5, help="results to show (at most the number of indexed images; default: %(default)s)")
    p.add_argument("--out", help="write the results grid (PNG) here")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.add_argument("--json", action="store_true", help="print the results as one JSON object instead of lines")
    p.add_argument("--rerank", type=_bounded(int, 1), metavar="K", default=None, help=_RERANK_HELP)
    p.set_defaults(func=cmd_search)


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    """The ``serve`` sub-command's arguments."""
    p = sub.add_parser("serve", help="a search service and web page over an index (needs uit_reid[serve])")
    p.add_argument("--index", required=True, help="index file written by 'uit-reid index build' or the demo")
    _model_argument(p, "the model the index was built with", required=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=_bounded(int, 0, 65535), default=8000,
                   help="port to listen on, 0 for any free one (default: %(default)s)")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="also answer requests whose Host header is NAME (repeatable; '*' for any). The loopback "
                        "names and --host are always allowed")
    p.add_argument("--forwarded-allow-ips", metavar="IPS", type=_proxy_addresses, default=(),
                   help="comma-separated addresses of your reverse proxies: only their X-Forwarded-For is "
                        "believed (default: nobody's)")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.add_argument("--max-query-chars", type=_bounded(int, 1), default=512,
                   help="longest query accepted (default: %(default)s)")
    p.add_argument("--max-k", type=_bounded(int, 1), default=100, help="most results per query (the index size caps it too)")
    p.add_argument("--max-body-bytes", type=_bounded(int, 1), default=65536,
                   help="largest POST body accepted (default: %(default)s)")
    p.add_argument("--rate-limit", type=_bounded(float, 0), default=20.0, help="requests per second per client (0: off)")
    p.add_argument("--burst", type=_bounded(int, 1), default=60, help="requests a client may save up")
    p.add_argument("--max-batch", type=_bounded(int, 1), default=64, help="most queries encoded together")
    p.add_argument("--batch-wait-ms", type=_bounded(float, 0), default=2.0,
                   help="how long a batch waits for more queries")
    p.add_argument("--max-header-bytes", type=_bounded(int, 1024), default=16384,
                   help="largest request head, request line and headers (default: %(default)s)")
    p.add_argument("--request-timeout", type=_bounded(float, 1), default=10.0,
                   help="seconds a request may take to arrive, head and body (default: %(default)s)")
    p.add_argument("--keep-alive-timeout", type=_bounded(float, 1), default=5.0,
                   help="seconds an idle connection stays open after an answer (default: %(default)s)")
    p.add_argument("--max-connections", type=_bounded(int, 1), default=None,
                   help="most connections open at once; above it the longest-idle one is closed "
                        "(default: 512, or less where ulimit -n requires)")
    p.add_argument("--rerank", type=_bounded(int, 1), metavar="K", default=None, help=_RERANK_HELP)
    p.add_argument("--no-mmap", action="store_true",
                   help="read an IVF index's lists into memory instead of mapping them from the file")
    p.set_defaults(func=cmd_serve)


def _synth_parser(sub: argparse._SubParsersAction) -> None:
    """The ``synth`` sub-command's arguments."""
    p = sub.add_parser("synth", help="write the synthetic pedestrian dataset")
    p.add_argument("--out", required=True, help="folder to write (annotations.jsonl and imgs/)")
    p.add_argument("--num-ids", type=int, default=1000, help="identities in all splits (default: %(default)s)")
    p.add_argument("--images-per-id", type=int, default=4, help="images of each identity (default: %(default)s)")
    p.add_argument("--num-val-ids", type=int, default=None, help="identities in val (default: 10%% of them)")
    p.add_argument("--num-test-ids", type=int, default=None, help="identities in test (default: 20%% of them)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="write into a folder that holds other files")
    p.add_argument("--world", default="pedestrians", metavar="WORLD", choices=_Choices(CHOICES["synthetic.world"]),
                   help="%(choices)s: pedestrians, the demo's full descriptions; web, the pre-training world's "
                        "short captions (default: %(default)s)")
    p.set_defaults(func=cmd_synth)


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    """The ``demo`` sub-command's arguments."""
    p = sub.add_parser("demo", help="synthetic data -> fine-tune the tiny CLIP with UIT on CPU -> evaluate -> index -> search")
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    p.add_argument("--config", default="demo_uit",
                   help="demo_uit (fine-tune the shipped pre-trained uit-tiny with the UIT losses) or demo (the "
                        "tiny model from random init with InfoNCE, the baseline), or a TOML file (default: %(default)s)")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.set_defaults(func=cmd_demo)


def _missing_action(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    parser.print_usage(sys.stderr)
    raise CLIError("choose an action (e.g. 'build')")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _setup_logging(args.verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("uit-reid: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; --debug for the traceback
        if args.debug:
            raise
        print(f"uit-reid: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> Any:
    from uit_reid._display import LOG_ARG_CHARS, shown

    text = str(exc).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        # re-raised from a DataLoader worker: the original message is the traceback's last line
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith(f"{type(exc).__module__}.") and ": " in last else last
    text = shown(text.replace("\n", " "), LOG_ARG_CHARS) or type(exc).__name__
    return text if isinstance(exc, CLIError | ValueError | OSError) else f"{type(exc).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
