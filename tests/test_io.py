"""`uit_reid.io.folder_contents` and `folder_names`: what the refusals say a folder holds."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid.io import FolderLock, folder_contents, folder_names


@settings(max_examples=30, deadline=None)
@given(names=st.sets(st.text("abcxyz0189_", min_size=1, max_size=6), max_size=8), shown=st.integers(1, 5))
def test_folder_contents_names_the_first_entries_in_order(names, shown) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            (Path(tmp) / name).mkdir() if name.startswith("_") else (Path(tmp) / name).write_text("x")
        listed = folder_contents(tmp, shown)
    expected = sorted(names)[:shown]
    assert listed == ", ".join(expected) + (", ..." if len(names) > shown else "")


def test_an_empty_folder_lists_nothing(tmp_path) -> None:
    assert folder_contents(tmp_path, 3) == ""
    (tmp_path / "b").write_text("x")
    (tmp_path / "a").mkdir()
    assert folder_contents(tmp_path, 1) == "a, ..."


def test_a_folder_lock_file_does_not_count(tmp_path) -> None:
    with FolderLock(tmp_path, "a test"):
        assert folder_names(tmp_path) == [] and folder_contents(tmp_path, 3) == ""
        (tmp_path / "x").write_text("x")
        assert folder_names(tmp_path) == ["x"]
