"""Resident memory of FAISS inverted lists grown add by add, against lists sized before the adds.

Replays the add pattern of a streamed 10M-vector IVF4096 build (each add of 32,768 vectors puts about
8 entries in each of 4,096 lists) on a bare `faiss.ArrayInvertedLists`, so the figure is the lists'
own growth, without training or encoding. Run once per mode (a fresh process each, so the peaks do
not mix):

    python benchmarks/ivf_list_growth.py grow
    python benchmarks/ivf_list_growth.py sized
"""

from __future__ import annotations

import argparse

import faiss
import numpy as np


def resident_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["grow", "sized"])
    p.add_argument("--lists", type=int, default=4096)
    p.add_argument("--entries", type=int, default=1200, help="entries per list at the end")
    p.add_argument("--per-add", type=int, default=8, help="entries each add puts in each list")
    p.add_argument("--code-size", type=int, default=128, help="bytes per entry's code (an 8-byte id is added)")
    args = p.parse_args()
    lists = faiss.ArrayInvertedLists(args.lists, args.code_size)
    codes = np.zeros((args.per_add, args.code_size), np.uint8)
    ids = np.arange(args.per_add, dtype=np.int64)
    before = resident_mib()
    if args.mode == "sized":
        for n in range(args.lists):
            lists.resize(n, args.entries)
            lists.resize(n, 0)
    for _ in range(args.entries // args.per_add):
        for n in range(args.lists):
            lists.add_entries(n, args.per_add, faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    entries_mb = args.lists * args.entries * (args.code_size + 8) / 2**20
    print(f"{args.mode}: entries {entries_mb:.0f} MiB, peak resident growth {resident_mib() - before:.0f} MiB")


if __name__ == "__main__":
    main()
