"""The one image loader: orientation, bit depth, transparency, CMYK, bombs and cheap large images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uit_reid.data import CorruptImageError, TrainDataset, load_dataset, make_synthetic
from uit_reid.data.readers import check_images_decode
from uit_reid.images import BACKGROUND, load_image
from uit_reid.retrieval import encode_image_folder, render_results
from uit_reid.retrieval.search import Hit


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A ~110 KB PNG claiming 30000 x 30000 pixels (900 M, over PIL's bomb limit)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (30000, 30000)).save(path)
    assert path.stat().st_size < 200_000
    return path


def test_exif_orientation_applied(tmp_path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # left half white as stored; orientation 6 = rotate 90 degrees clockwise
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "o6.jpg", exif=exif, quality=95)
    img = np.asarray(load_image(tmp_path / "o6.jpg"))
    assert img.shape == (40, 20, 3)  # upright: taller than wide
    assert img[:15].mean() > 240 and img[-15:].mean() < 15  # stored left half is now the top


def test_sixteen_bit_grey_scaled_not_clipped(tmp_path) -> None:
    values = np.array([[0, 32768, 65535, 257 * 100]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    img = np.asarray(load_image(tmp_path / "g16.png"))
    assert img.dtype == np.uint8 and img.shape == (1, 4, 3)
    np.testing.assert_array_equal(img[0, :, 0], [0, 128, 255, 100])
    assert (img[..., 0] == img[..., 2]).all()


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA"])
def test_transparent_pixels_become_background(tmp_path, mode) -> None:
    if mode == "P":
        im = Image.new("P", (8, 8), 0)
        im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 red (transparent), 1 green
        im.putpixel((0, 0), 1)
        im.save(tmp_path / "x.png", transparency=0)
        opaque = (0, 255, 0)
    else:
        im = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
        im.putpixel((0, 0), (0, 255, 0, 255))
        if mode == "LA":
            im = Image.new("LA", (8, 8), (200, 0))
            im.putpixel((0, 0), (40, 255))
        im.save(tmp_path / "x.png")
        opaque = (0, 255, 0) if mode == "RGBA" else (40, 40, 40)
    img = load_image(tmp_path / "x.png")
    assert img.mode == "RGB"
    assert img.getpixel((3, 3)) == BACKGROUND
    assert img.getpixel((0, 0)) == opaque


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_converted(tmp_path, suffix) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / f"c{suffix}")  # pure red in CMYK
    r, g, b = load_image(tmp_path / f"c{suffix}").getpixel((8, 8))
    assert r > 240 and g < 15 and b < 15


def test_bomb_is_a_corrupt_image_everywhere(tmp_path, bomb) -> None:
    with pytest.raises(CorruptImageError, match=f"refusing image {bomb}: too many pixels"):
        load_image(bomb)
    assert check_images_decode([bomb], progress=False) == [bomb]

    ann = make_synthetic(tmp_path / "d", num_ids=4, images_per_id=2, seed=0, num_val_ids=1, num_test_ids=1)
    data = ann.parent
    records = [json.loads(line) for line in ann.read_text().splitlines()]
    victim = data / records[0]["image"]
    victim.write_bytes(bomb.read_bytes())
    ds = load_dataset(data, verify_images=True, on_missing="skip")
    assert all(r.image_path != victim for s in (ds.train, ds.val, ds.test) if s for r in s.records)
    with pytest.raises(CorruptImageError, match=victim.name):
        load_dataset(data, verify_images=True)

    full = load_dataset(data)
    split = next(s for s in (full.train, full.val, full.test) if s and any(r.image_path == victim for r in s.records))
    ds_train = TrainDataset(split, lambda im: np.asarray(im), on_corrupt="skip")
    index = next(i for i, (image_id, _) in enumerate(ds_train.pairs) if split.records[image_id].image_path == victim)
    assert ds_train[index]["image"].ndim == 3  # another image of the same person, no crash
    strict = TrainDataset(split, lambda im: np.asarray(im), on_corrupt="error")
    with pytest.raises(CorruptImageError, match=victim.name):
        strict[index]


def test_folder_encoding_skips_bomb(tmp_path, bomb) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (8, 16), (10, 20, 30)).save(folder / "ok.png")
    (folder / "bomb.png").write_bytes(bomb.read_bytes())
    import torch

    feats, paths, skipped = encode_image_folder(
        folder, lambda x: x.flatten(1)[:, :4], lambda im: torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float(),
        progress=False,
    )
    assert [Path(p).name for p in paths] == ["ok.png"] and [Path(p).name for p in skipped] == ["bomb.png"]
    grid = render_results("q", [Hit(1, str(folder / "bomb.png"), 0.5, path=str(folder / "bomb.png"))])
    assert grid.size[0] > 0  # drawn as a "missing" placeholder


def test_large_legal_image_is_reduced_to_target(tmp_path) -> None:
    Image.new("RGB", (4000, 2400), (10, 200, 30)).save(tmp_path / "big.jpg", quality=90)
    Image.new("L", (4000, 2400), 77).save(tmp_path / "big.png")
    jpg = load_image(tmp_path / "big.jpg", (384, 128))
    png = load_image(tmp_path / "big.png", (384, 128))
    for img in (jpg, png):
        assert img.height >= 2 * 384 and img.width >= 2 * 128 and img.height <= 2400 // 2
    assert png.getpixel((5, 5)) == (77, 77, 77)
    assert load_image(tmp_path / "big.png").size == (4000, 2400)


@pytest.mark.slow
def test_large_legal_image_memory_is_small(tmp_path) -> None:
    """12000 x 12000 JPEG with a target size: decoded at 1/8 scale, well under the 432 MB of full RGB."""
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (12000, 12000), (90, 90, 90)).save(path, quality=50)
    code = (
        "import resource,sys\n"
        "from uit_reid.images import load_image\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"im = load_image({str(path)!r}, (384, 128))\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base\n"
        "print(im.size[0], im.size[1], grown // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    width, height, grown_mb = (int(v) for v in out)
    assert (width, height) == (1500, 1500)  # 1/8 DCT scale; >= twice the target (768 x 256)
    assert grown_mb < 100


@pytest.mark.parametrize("mode", ["1", "P"])
def test_a_tiny_1bit_or_palette_png_of_huge_size_costs_little(tmp_path, mode) -> None:
    """A ~20 KB 12000 x 12000 1-bit PNG once cost ~0.7 GB per load: these modes skipped the reduction.

    Loaded in a subprocess under ``ulimit -v`` with the model's target size; its peak memory is
    read from the kernel. Stripes (10 white rows in 50) make the reduced image checkable.
    """
    path = tmp_path / f"stripes_{mode}.png"
    im = Image.new("1", (12000, 12000), 0)
    for y in range(0, 12000, 50):
        im.paste(1, (0, y, 12000, y + 10))
    (im if mode == "1" else im.convert("P")).save(path, optimize=True)
    assert path.stat().st_size < 200_000
    code = (
        "import resource,sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "import numpy as np\n"
        "from uit_reid.images import load_image\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"im = load_image({str(path)!r}, (384, 128))\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base\n"
        "col = np.asarray(im)[:, 0, 0]\n"
        "print(im.size[0], im.size[1], im.mode, grown // 1024, int(col[0]), int(col[2]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    width, height, rgb, grown_mb, first, third = out[0], out[1], out[2], int(out[3]), int(out[4]), int(out[5])
    assert (int(width), int(height), rgb) == (800, 800, "RGB")  # factor 15: >= twice (384, 128) on both sides
    assert (first, third) == (255, 0)  # rows 0 (white stripe) and 30 (black): taken, not averaged into grey
    assert grown_mb < 250, grown_mb  # the decoded 1 byte/pixel plane (137 MB), never RGB at full size


def test_not_an_image_named(tmp_path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(CorruptImageError, match=f"cannot decode image {bad}"):
        load_image(bad)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
