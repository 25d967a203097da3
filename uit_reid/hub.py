"""Models on the Hugging Face Hub: resolve ``org/name`` / ``hf-hub:org/name`` to files, upload a folder.

Everything goes through the ``huggingface_hub`` client, so its cache, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``, tokens and revisions behave as they do for any other library.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["HF_HUB_PREFIX", "hub_repo_id", "hub_tower_name", "resolve_pretrained", "upload_folder"]

HF_HUB_PREFIX = "hf-hub:"
MODEL_CONFIG = "config.json"
"""What a uit_reid model repository holds (`UITModel.save_pretrained`)."""
TOWER_CONFIG = "open_clip_config.json"
"""What an open_clip tower repository holds (``open_clip.create_model("hf-hub:...")`` reads it)."""
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def hub_repo_id(source: str | os.PathLike) -> str | None:
    """The Hub repository a ``source`` names, or ``None`` for a local path.

    ``hf-hub:org/name`` always means the Hub; a bare ``org/name`` does when no such local path
    exists (a local folder of that name wins, as in ``transformers``).
    """
    text = os.fspath(source)
    if text.startswith(HF_HUB_PREFIX):
        repo_id = text[len(HF_HUB_PREFIX) :]
        if not _REPO_ID.match(repo_id):
            raise ValueError(f"{text}: expected hf-hub:org/name")
        return repo_id
    if _REPO_ID.match(text) and not Path(text).exists():
        return text
    return None


def hub_tower_name(source: str | os.PathLike) -> str | None:
    """``hf-hub:org/name`` when ``source`` is a Hub repository holding an open_clip tower, else ``None``.

    The repository's files decide, so ``org/name`` and ``hf-hub:org/name`` mean the same thing in
    every entry point: its ``config.json`` makes it a uit_reid model (``None``), an
    ``open_clip_config.json`` without one an open_clip tower. A local path is ``None``; a Hub
    repository holding neither file is a ``FileNotFoundError`` naming both.
    """
    repo_id = hub_repo_id(source)
    if repo_id is None:
        return None
    where = _where(source, repo_id, None)
    if _download(repo_id, MODEL_CONFIG, where, None, None, None, missing_ok=True) is not None:
        return None
    if _download(repo_id, TOWER_CONFIG, where, None, None, None, missing_ok=True) is not None:
        return HF_HUB_PREFIX + repo_id
    raise FileNotFoundError(
        f"{where}: neither {MODEL_CONFIG} (a uit_reid model) nor {TOWER_CONFIG} (an open_clip tower) "
        "in the repository, or not in the local cache while offline"
    )


def _where(source: str | os.PathLike, repo_id: str, revision: str | None) -> str:
    """How errors name a Hub source: the repository and revision, and the local name that was not found."""
    where = f"{repo_id}@{revision or 'main'}"
    if not os.fspath(source).startswith(HF_HUB_PREFIX):
        where = f"{source} (no such local folder) on the Hub: {where}"
    return where


def resolve_pretrained(
    source: str | os.PathLike,
    filenames: Sequence[str],
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> Path:
    """The local folder holding ``filenames`` of ``source``: the folder itself, or the Hub snapshot.

    Hub files are downloaded (or taken from the cache) with ``hf_hub_download``; every
    failure becomes one line naming the repository, the revision and the file.
    """
    repo_id = hub_repo_id(source)
    if repo_id is None:
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repositories, not to the local path {source}")
        return Path(source)
    where = _where(source, repo_id, revision)
    cache = os.fspath(cache_dir) if cache_dir is not None else None
    paths = [_download(repo_id, filename, where, revision, cache, token) for filename in filenames]
    folders = {path.parent for path in paths}
    if len(folders) != 1:  # the repository changed between two downloads
        raise OSError(f"{where}: files came from different commits ({sorted(map(str, folders))}); retry")
    return folders.pop()


def _download(
    repo_id: str, filename: str, where: str, revision: str | None, cache_dir: str | None, token: str | None,
    missing_ok: bool = False,
) -> Path | None:
    """One file of a Hub repository through ``hf_hub_download``; each failure as one line naming ``where``.

    ``missing_ok``: ``None`` when the repository lacks the file (or, offline, the cache does).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token))
    except RepositoryNotFoundError as exc:
        raise FileNotFoundError(f"{where}: repository not found on the Hub (or private: pass a token)") from exc
    except RevisionNotFoundError as exc:
        raise FileNotFoundError(f"{where}: no such revision on the Hub") from exc
    except LocalEntryNotFoundError as exc:
        if missing_ok:
            return None
        raise FileNotFoundError(
            f"{where}: {filename} is not in the local cache and the Hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1)"
        ) from exc
    except EntryNotFoundError as exc:
        if missing_ok:
            return None
        raise FileNotFoundError(
            f"{where}: no {filename} in the repository (not a folder written by save_pretrained)"
        ) from exc
    except HfHubHTTPError as exc:
        raise OSError(f"{where}: {filename}: {str(exc).splitlines()[0]}") from exc


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload uit_reid model",
) -> str:
    """Create ``repo_id`` if needed and commit every file of ``folder`` to it; return the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    if repo_id.startswith(HF_HUB_PREFIX):
        repo_id = repo_id[len(HF_HUB_PREFIX) :]
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"{repo_id}: expected a Hub repository id org/name")
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
    info = api.create_commit(repo_id, operations=operations, commit_message=commit_message, revision=revision)
    return str(info.commit_url)
