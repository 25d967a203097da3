"""Readers: each benchmark's real annotation format parses to the right counts and pid maps; bad input
raises a specific error naming the culprit."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from uit_reid.data import (
    AnnotationError,
    AnnotationNotFoundError,
    CorruptImageError,
    MissingImagesError,
    UnsafePathError,
    load_dataset,
)


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (value, 100, 200)).save(path)


def _cuhk_records() -> list[dict]:
    """CUHK-PEDES-shaped records: 1-based ids, file_path relative to imgs/, extra fields as in the file."""
    recs = []
    # train ids 7, 3, 12 (unsorted in the file); val ids 20, 21; test ids 30, 31
    layout = [("train", 7, 2), ("train", 3, 1), ("train", 12, 3), ("val", 20, 2), ("val", 21, 1),
              ("test", 30, 2), ("test", 31, 2)]
    for split, pid, n in layout:
        for k in range(n):
            recs.append({
                "split": split,
                "captions": [f"A man {pid} photo {k} in a red shirt.", f"Person {pid} wearing blue jeans."],
                "file_path": f"CUHK01/{pid:04d}{k:03d}.png",
                "processed_tokens": [["a", "man"], ["person"]],
                "id": pid,
            })
    return recs


def _write_benchmark(root: Path, name: str, records: list[dict], path_field: str = "file_path") -> Path:
    for r in records:
        _png(root / "imgs" / r[path_field])
    (root / name).write_text(json.dumps(records))
    return root


@pytest.mark.parametrize("name", ["reid_raw.json", "caption_all.json"])
def test_cuhk_counts_and_pid_map(tmp_path: Path, name: str) -> None:
    root = _write_benchmark(tmp_path, name, _cuhk_records())
    ds = load_dataset(root)
    assert ds.format == "cuhk-pedes"
    assert ds.num_classes == 3
    assert ds.train.pid_map == {3: 0, 7: 1, 12: 2}
    assert [r.pid for r in ds.train.records] == [1, 1, 0, 2, 2, 2]
    assert [r.image_id for r in ds.train.records] == list(range(6))
    assert ds.train.records[0].image_path == root / "imgs" / "CUHK01" / "0007000.png"
    assert (ds.val.num_images, ds.val.num_ids, ds.val.num_captions) == (3, 2, 6)
    assert sorted({r.pid for r in ds.val.records}) == [20, 21]  # evaluation pids kept
    g, q = ds.test.gallery, ds.test.queries
    assert len(g) == 4 and g.pids == [30, 30, 31, 31]
    assert len(q) == 8 and q.pids == [30, 30, 30, 30, 31, 31, 31, 31]
    assert q.image_indices == [0, 0, 1, 1, 2, 2, 3, 3]
    assert q.captions[2] == "A man 30 photo 1 in a red shirt."


@pytest.mark.parametrize("name", ["ICFG-PEDES.json", "ICFG_PEDES.json"])
def test_icfg_has_no_val(tmp_path: Path, name: str) -> None:
    recs = [r for r in _cuhk_records() if r["split"] != "val"]
    root = _write_benchmark(tmp_path, name, recs)
    ds = load_dataset(root)
    assert ds.format == "icfg-pedes" and ds.name == "ICFG-PEDES"
    assert ds.val is None
    assert ds.num_classes == 3 and ds.test.num_images == 4
    assert set(ds.splits()) == {"train", "test"}


def test_icfg_rejects_val_split(tmp_path: Path) -> None:
    root = _write_benchmark(tmp_path, "ICFG-PEDES.json", _cuhk_records())
    with pytest.raises(AnnotationError, match=r"record 6, id 20: unknown split 'val'"):
        load_dataset(root)


def test_rstpreid(tmp_path: Path) -> None:
    recs = []
    for split, ids in (("train", [100, 5]), ("val", [200]), ("test", [300, 301, 302])):
        for pid in ids:
            for k in range(5):
                recs.append({"id": pid, "img_path": f"{pid:04d}_c{k}.jpg", "captions": ["a", "b"], "split": split})
    root = _write_benchmark(tmp_path, "data_captions.json", recs, path_field="img_path")
    ds = load_dataset(root, format="rstpreid")
    assert ds.name == "RSTPReid"
    assert ds.train.pid_map == {5: 0, 100: 1}
    assert (ds.train.num_images, ds.val.num_images, ds.test.num_images) == (10, 5, 15)
    assert ds.test.num_captions == 30 and len(ds.test.queries) == 30


def _jsonl(root: Path, records: list[dict], name: str = "annotations.jsonl") -> Path:
    for r in records:
        img = r.get("image") if isinstance(r, dict) else None
        if isinstance(img, str) and img.startswith("img/"):  # only the fixture's own safe paths
            _png(root / img)
    path = root / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _generic(n_train: int = 4, n_test: int = 3) -> list[dict]:
    recs = [{"image": f"img/t{i}.png", "pid": f"p{i % 2}", "captions": [f"c{i}"], "split": "train"}
            for i in range(n_train)]
    recs += [{"image": f"img/e{i}.png", "pid": 50 + i, "captions": ["x", "y"], "split": "test"} for i in range(n_test)]
    return recs


def test_jsonl_dir_and_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _jsonl(tmp_path, _generic())
    with caplog.at_level(logging.INFO, logger="uit_reid.data.readers"):
        ds = load_dataset(tmp_path)
    assert "detected format 'jsonl'" in caplog.text
    assert ds.train.pid_map == {"p0": 0, "p1": 1} and ds.num_classes == 2
    assert ds.val is None and ds.test.num_images == 3 and ds.test.num_captions == 6
    ds2 = load_dataset(path)
    assert [r.image_path for r in ds2.train.records] == [r.image_path for r in ds.train.records]
    assert ds.train.records[1].image_path == tmp_path / "img" / "t1.png"


def test_jsonl_any_single_name_and_json_array(tmp_path: Path) -> None:
    _jsonl(tmp_path, _generic(), name="mine.jsonl")
    assert load_dataset(tmp_path).num_classes == 2
    arr = tmp_path / "records.json"
    arr.write_text(json.dumps(_generic()))
    assert load_dataset(arr).test.num_images == 3


def test_jsonl_attributes_reach_the_records_and_benchmarks_leave_them_none(tmp_path: Path) -> None:
    recs = _generic()
    recs[4]["attributes"] = {"upper_type": "jacket", "upper_colour": " red ", "bag": None}
    _jsonl(tmp_path / "j", recs)
    test = load_dataset(tmp_path / "j").test
    assert test.records[0].attributes == {"upper_type": "jacket", "upper_colour": "red", "bag": None}
    assert test.records[1].attributes is None and load_dataset(tmp_path / "j").train.records[0].attributes is None
    cuhk = _cuhk_records()
    cuhk[0]["attributes"] = {"upper_colour": "red"}  # a benchmark file's extra field is not read
    ds = load_dataset(_write_benchmark(tmp_path / "c", "reid_raw.json", cuhk))
    assert all(r.attributes is None for s in ds.splits().values() for r in s.records)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        (["red"], "field 'attributes' must be an object, got list"),
        ({"upper_colour": 3}, "attribute 'upper_colour' must be a non-empty string or null, got 3"),
        ({"hat_colour": " "}, "attribute 'hat_colour' must be a non-empty string or null, got ' '"),
    ],
)
def test_malformed_attributes_are_named(tmp_path: Path, attributes: object, message: str) -> None:
    recs = _generic()
    recs[5]["attributes"] = attributes
    path = _jsonl(tmp_path, recs)
    with pytest.raises(AnnotationError) as exc:
        load_dataset(tmp_path)
    assert str(exc.value) == f"{path}: record 5 (line 6), id 51: {message}"


def test_auto_detection_logs_format(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _write_benchmark(tmp_path, "reid_raw.json", _cuhk_records())
    with caplog.at_level(logging.INFO, logger="uit_reid.data.readers"):
        load_dataset(root)
    assert "detected format 'cuhk-pedes'" in caplog.text and "reid_raw.json" in caplog.text


# ---------------------------------------------------------------------------------------------- errors
def test_missing_annotation_names_files(tmp_path: Path) -> None:
    with pytest.raises(AnnotationNotFoundError, match=r"reid_raw\.json.*caption_all\.json.*ICFG-PEDES\.json.*ICFG_PEDES\.json.*"
                       r"data_captions\.json.*annotations\.jsonl"):
        load_dataset(tmp_path)
    with pytest.raises(AnnotationNotFoundError, match=r"looked for data_captions\.json$"):
        load_dataset(tmp_path, format="rstpreid")
    with pytest.raises(AnnotationNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_ambiguous_formats(tmp_path: Path) -> None:
    _write_benchmark(tmp_path, "reid_raw.json", _cuhk_records())
    (tmp_path / "data_captions.json").write_text("[]")
    with pytest.raises(AnnotationError, match="several formats"):
        load_dataset(tmp_path)
    assert load_dataset(tmp_path, format="cuhk").num_classes == 3


def test_unknown_format_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset format 'market'"):
        load_dataset(tmp_path, format="market")


def test_invalid_json_position(tmp_path: Path) -> None:
    (tmp_path / "reid_raw.json").write_text('[{"split": "train",\n "id": 1,, }]')
    with pytest.raises(AnnotationError, match=r"invalid JSON in .*reid_raw\.json.*line 2 column 10"):
        load_dataset(tmp_path)
    sub = tmp_path / "j"
    sub.mkdir()
    (sub / "annotations.jsonl").write_text(json.dumps(_generic()[0]) + "\n{oops\n")
    with pytest.raises(AnnotationError, match=r"annotations\.jsonl at line 2 column 2"):
        load_dataset(sub)


def test_not_a_list(tmp_path: Path) -> None:
    (tmp_path / "reid_raw.json").write_text('{"split": "train"}')
    with pytest.raises(AnnotationError, match="expected a JSON array"):
        load_dataset(tmp_path)


_FIELDS = ["split", "captions", "file_path", "id"]
_corruptions = st.sampled_from(["drop", "empty_captions", "blank_caption", "bad_split", "bad_id", "not_obj"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, 12), kind=_corruptions, field=st.sampled_from(_FIELDS))
def test_corrupted_record_named(index: int, kind: str, field: str) -> None:
    recs = _cuhk_records()
    rid = recs[index]["id"]
    if kind == "drop":
        del recs[index][field]
        if field == "id":
            rid = "unknown"
        pattern = rf"record {index}, id {rid!r}: missing field '{field}'"
    elif kind == "empty_captions":
        recs[index]["captions"] = []
        pattern = rf"record {index}, id {rid}: field 'captions' must be a non-empty list"
    elif kind == "blank_caption":
        recs[index]["captions"][1] = "   "
        pattern = rf"record {index}, id {rid}: caption 1 is empty"
    elif kind == "bad_split":
        recs[index]["split"] = "training"
        pattern = rf"record {index}, id {rid}: unknown split 'training'"
    elif kind == "bad_id":
        recs[index]["id"] = "abc"
        pattern = rf"record {index}, id 'abc': field 'id' must be an integer"
    else:
        recs[index] = ["not", "an", "object"]
        pattern = rf"record {index}, id 'unknown': expected an object, got list"
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "reid_raw.json").write_text(json.dumps(recs))
        with pytest.raises(AnnotationError, match=r"reid_raw\.json: " + pattern):
            load_dataset(root)


@settings(max_examples=25, deadline=None)
@given(
    bad=st.sampled_from(["../outside.png", "a/../../outside.png", "/etc/passwd", "C:\\x.png", "..\\..\\x.png",
                         "imgs/../../../x.png"]),
    index=st.integers(0, 6),
)
def test_escaping_path_refused(bad: str, index: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "ds"
        root.mkdir()
        recs = _generic()
        recs[index]["image"] = bad
        _jsonl(root, recs)
        (Path(d) / "outside.png").write_bytes(b"")
        with pytest.raises(UnsafePathError, match=rf"record {index} \(line {index + 1}\).*refused"):
            load_dataset(root)


def test_inner_dotdot_inside_root_is_fine(tmp_path: Path) -> None:
    recs = _generic()
    _jsonl(tmp_path, recs)
    recs[0]["image"] = "img/sub/../t0.png"
    (tmp_path / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert load_dataset(tmp_path).train.records[0].image_path == tmp_path / "img" / "t0.png"


def test_missing_images_error_and_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _write_benchmark(tmp_path, "reid_raw.json", _cuhk_records())
    for name in ["0007000", "0007001", "0012001", "0020000", "0020001", "0030000", "0031001"]:
        (root / "imgs" / "CUHK01" / f"{name}.png").unlink()
    with pytest.raises(MissingImagesError, match=r"^7 missing image file\(s\) named in .*reid_raw\.json: .*and 2 more$"):
        load_dataset(root)
    with caplog.at_level(logging.WARNING, logger="uit_reid.data.readers"):
        ds = load_dataset(root, on_missing="skip")
    assert "skipping 7 missing image(s)" in caplog.text
    total = sum(s.num_images for s in ds.splits().values())
    assert total == 13 - 7
    assert all(r.image_path.exists() for s in ds.splits().values() for r in s.records)
    assert ds.train.pid_map == {3: 0, 12: 1} and [r.pid for r in ds.train.records] == [0, 1, 1]
    assert [r.pid for r in ds.val.records] == [21] and ds.test.gallery.pids == [30, 31]
    assert [r.image_id for r in ds.test.records] == list(range(ds.test.num_images))


def test_corrupt_image_verify(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _jsonl(tmp_path, _generic())
    bad = tmp_path / "img" / "e1.png"
    bad.write_bytes(bad.read_bytes()[:30])
    assert load_dataset(path).test.num_images == 3  # not decoded by default
    with pytest.raises(CorruptImageError, match=r"1 corrupt image file\(s\) named in .*: .*e1\.png"):
        load_dataset(path, verify_images=True)
    with caplog.at_level(logging.WARNING, logger="uit_reid.data.readers"):
        ds = load_dataset(path, verify_images=True, on_missing="skip")
    assert ds.test.num_images == 2 and "skipping 1 corrupt" in caplog.text


def test_bad_on_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_missing"):
        load_dataset(tmp_path, on_missing="ignore")  # type: ignore[arg-type]
