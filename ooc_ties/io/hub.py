"""Hugging Face Hub IDs: a model named ``org/name`` (or ``org/name@revision``) found in the local cache.

ooc-ties never downloads and never touches the network. A model the Hugging Face tools have already
downloaded (``hf download org/name``, ``huggingface-cli download``, ``from_pretrained``) lies in the
cache folder they share, :func:`hub_cache`, laid out as::

    models--{org}--{name}/
        refs/{revision}         the commit hash a branch or tag names (``main`` by default)
        snapshots/{hash}/...    the repository's files at that commit: symlinks into ../../blobs/
        blobs/...

:func:`parse_hub_id` tells whether a string looks like a Hub ID; :func:`cached_snapshot` finds its
snapshot folder, which then opens like any Hugging Face model folder.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ooc_ties.errors import CheckpointNotFoundError

__all__ = ["HubId", "cached_snapshot", "hub_cache", "parse_hub_id"]

logger = logging.getLogger(__name__)

DEFAULT_REVISION = "main"
"""The branch a Hub ID without ``@revision`` names."""

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"(?P<repo>{_PART}/{_PART})(?:@(?P<revision>[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json")
"""Names ending so are file paths, not repositories."""


@dataclass(frozen=True, slots=True)
class HubId:
    """A model repository on the Hugging Face Hub, at a revision."""

    repo: str
    """``org/name``."""
    revision: str | None
    """A branch, tag or commit hash; ``None``: ``main``."""

    @property
    def folder_name(self) -> str:
        """The repository's folder in the cache: ``models--{org}--{name}``."""
        return "models--" + self.repo.replace("/", "--")

    def __str__(self) -> str:
        return self.repo if self.revision is None else f"{self.repo}@{self.revision}"


def parse_hub_id(text: str) -> HubId | None:
    """``text`` as a Hub ID (``org/name`` or ``org/name@revision``), or ``None`` if it does not look like
    one. Whether a path of that name exists is the caller's question: a path always wins."""
    match = _HUB_ID.fullmatch(text)
    if match is None:
        return None
    repo, revision = match["repo"], match["revision"]
    if "--" in repo or ".." in repo or repo.lower().endswith(_FILE_SUFFIXES):
        return None
    if revision is not None and ".." in revision.split("/"):
        return None
    return HubId(repo, revision)


def hub_cache() -> Path:
    """The cache folder the Hugging Face tools download models into: ``HF_HUB_CACHE`` if set, else
    ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return cache / "huggingface" / "hub"


def cached_snapshot(hub_id: HubId, cache: Path | None = None) -> Path:
    """The snapshot folder of ``hub_id`` in ``cache`` (default: :func:`hub_cache`).

    The revision (``main`` when none is given) is looked up in ``refs/``; a revision that is a commit
    hash names its snapshot directly. Raises :class:`CheckpointNotFoundError`, saying how to download
    the model, if the snapshot is not there.
    """
    cache = hub_cache() if cache is None else cache
    repo_folder = cache / hub_id.folder_name
    revision = hub_id.revision or DEFAULT_REVISION
    commit = revision
    if not _COMMIT.fullmatch(commit):
        try:
            commit = (repo_folder / "refs" / revision).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            commit = ""
    snapshot = repo_folder / "snapshots" / commit
    if not _COMMIT.fullmatch(commit) or not snapshot.is_dir():
        raise CheckpointNotFoundError(_not_cached(hub_id, repo_folder))
    logger.info("%s: the local Hugging Face cache's snapshot %s (%s)", hub_id, snapshot, revision)
    return snapshot


def _not_cached(hub_id: HubId, repo_folder: Path) -> str:
    download = f"{hub_id.repo}" + (f" --revision {hub_id.revision}" if hub_id.revision else "")
    return (
        f"{hub_id}: no such file or folder; it looks like a Hugging Face Hub ID, but it is not in the local "
        f"cache (searched {repo_folder}); ooc-ties does not download models: run `hf download {download}` "
        f"(or `huggingface-cli download {download}`) first, or pass a local folder"
    )
