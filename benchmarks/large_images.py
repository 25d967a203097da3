"""What a very large image costs `uit_reid.images.load_image`, with and without a target size.

Writes a 12000x12000 JPEG and PNG (144 M pixels: over PIL's warning limit, under its bomb limit) and
a 30000x30000 PNG bomb to a temporary folder, loads each in a fresh process (so peak memory is the
load's own) and prints a Markdown table: seconds and peak resident memory added by the load.

    python benchmarks/large_images.py [--side 12000]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

CHILD = """
import resource, sys, time
from PIL import Image
import numpy
from uit_reid.images import CorruptImageError, load_image
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    im = load_image(sys.argv[1], None if sys.argv[2] == "none" else (384, 128))
    what = "x".join(map(str, im.size))
except CorruptImageError:
    what = "refused"
took = time.perf_counter() - start
print(what, round(took, 2), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=12000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        Image.new("RGB", (args.side, args.side), (90, 120, 150)).save(folder / "big.jpg", quality=90)
        Image.new("RGB", (args.side, args.side), (90, 120, 150)).save(folder / "big.png")
        Image.new("1", (30000, 30000)).save(folder / "bomb.png")
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU used; Pillow {Image.__version__}\n")
        print("| file | target size | result | seconds | peak memory added (MB) |")
        print("|---|---|---|---|---|")
        for name in ("big.jpg", "big.png", "bomb.png"):
            for target in ("none", "384x128"):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(folder / name), target],
                    capture_output=True, text=True, check=True,
                ).stdout.split()
                size = (folder / name).stat().st_size // 1024
                print(f"| {name} ({size} KB) | {target} | {out[0]} | {out[1]} | {out[2]} |")


if __name__ == "__main__":
    main()
