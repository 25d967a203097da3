"""Index a folder of person images with FAISS, search it with a sentence and save the results grid.

With ``--model`` (a model directory written by ``save_pretrained``, or a trainer's ``last.pt``)
and ``--images DIR`` it searches your own photos. Without ``--model`` it first trains the tiny
model for a short while on synthetic pedestrians (a few steps with ``UIT_EXAMPLES_SMALL=1``, so the
ranking is then close to random: the point is the mechanics); without ``--images`` it indexes the
synthetic images, and draws correct hits green and wrong ones red.

Run: ``python examples/03_index_and_search.py --out runs/examples/03_search "a man in a red jacket"``.
Writes ``gallery.faiss`` (one file) and ``results_<i>.png`` (one grid per query) under
``--out``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from _quick_train import quick_train  # examples/_quick_train.py, beside this script

from uit_reid import augment
from uit_reid.data import load_dataset
from uit_reid.factory import load_model
from uit_reid.retrieval import GalleryIndex, build_index_from_folder, render_results, search_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queries", nargs="*", help="descriptions to search for (default: two test captions)")
    parser.add_argument("--out", type=Path, default=Path("runs/examples/03_search"))
    parser.add_argument("--model", type=Path, help="model directory or last.pt (default: train briefly)")
    parser.add_argument("--images", type=Path, help="folder of images to index (default: the synthetic ones)")
    parser.add_argument("--kind", default="flat", choices=["flat", "ivf", "hnsw"])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logging.getLogger("uit_reid").setLevel(logging.INFO)  # the trainer reports through logging
    args.out.mkdir(parents=True, exist_ok=True)

    checkpoint = args.model
    if checkpoint is None:
        print("no --model: training the tiny model briefly on synthetic pedestrians first")
        checkpoint = quick_train(args.out) / "best"
    model = load_model(checkpoint, device=args.device)
    fingerprint = model.encoder.fingerprint()  # stored in the index: features of another model never mix

    # Ground truth is only known for the synthetic images: path -> pid, and test captions as queries.
    pid_of: dict[str, int] = {}
    queries, query_pids = list(args.queries), None
    images = args.images
    if images is None:
        dataset = load_dataset(args.out / "data", progress=False)
        images = dataset.root / "imgs"
        for split in dataset.splits().values():
            pid_of.update({str(r.image_path.resolve()): (split.name, r.pid) for r in split.records})
        if not queries:
            test = dataset.test.queries
            picks = [0, len(test.captions) // 2]
            queries = [test.captions[i] for i in picks]
            query_pids = [("test", int(test.pids[i])) for i in picks]
    if not queries:
        queries = ["a woman in a red coat"]

    index = build_index_from_folder(
        images,
        model.encode_image,
        augment.build_eval_transform(model.image_size, interpolation=model.interpolation),
        kind=args.kind,
        fingerprint=fingerprint,
        device=args.device,
        progress=False,
    )
    index_path = args.out / "gallery.faiss"
    index.save(index_path)
    index = GalleryIndex.load(index_path)  # what a separate search process would do
    print(f"indexed {len(index)} images from {images} -> {index_path}")

    results = search_text(
        index, model.encode_captions, queries, k=args.k, fingerprint=fingerprint,
        pids=(lambda path: pid_of.get(str(Path(path).resolve()))) if pid_of else None,
        query_pids=query_pids,
    )
    for i, (query, hits) in enumerate(zip(queries, results)):
        print(f"query {i}: {query}")
        for rank, hit in enumerate(hits, start=1):
            mark = {True: "+", False: "-", None: " "}[hit.correct]
            print(f"  {rank:>2} {mark} {hit.score:.3f}  {hit.path}")
        grid = args.out / f"results_{i}.png"
        render_results(query, hits).save(grid)
        print(f"  grid -> {grid}")


if __name__ == "__main__":
    main()
