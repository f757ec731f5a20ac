"""Input identity: whether two runs read the same checkpoint files, told without reading them whole.

Results kept between runs (saved thresholds, the resume journal, a finished output's recipe) are only
valid for the inputs they were computed from. A file is recognised by its resolved path, size,
modification time, inode, and a digest of a few sampled pages of its content (:data:`HEAD_BYTES` at
the start, which hold a safetensors header, :data:`SAMPLE_PAGES` pages spread evenly over the rest,
and the last page). That reads at most about 100 KiB per file, so a 140 GB model is identified in
milliseconds, and it tells apart:

* two fine-tunes of one architecture whose names, sizes and dates are equal (``tar``, ``rsync -a`` and
  container images keep dates; generated models share them): their paths and sampled data differ;
* a file rewritten in place, even to the same size within one clock tick: its content or inode differs.

A checkpoint that was moved, or copied, is another input: its results are refused, with a message
naming the file. A local Zarr store is identified as one entry: its root, total size, newest time, and
a digest of every file's name, size, time and inode, of its metadata and of a few sampled chunk files.
Inputs in memory or on remote stores have no identity (``None``); checks that need one are skipped
with a warning, and pass 2's kept counts (see ``merge.py``) remain as the check of last resort.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HEAD_BYTES", "SAMPLE_PAGES", "FileIdentity", "InputsIdentity", "SourceIdentity", "store_identity"]

HEAD_BYTES = 64 * 1024
"""Bytes digested at the start of every file (a safetensors header and the first tensor's data)."""
SAMPLE_PAGES = 16
"""Pages digested, evenly spread over the rest of the file."""
PAGE = 4096
"""Bytes of one sampled page."""
STORE_SAMPLE_FILES = 16
"""Files of a Zarr store whose first page is digested (besides its metadata, digested whole)."""


def _sampled_digest(path: Path, size: int) -> str:
    """A digest of the head, :data:`SAMPLE_PAGES` evenly spread pages and the last page of a file."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        fd = f.fileno()
        h.update(os.pread(fd, HEAD_BYTES, 0))
        if size > HEAD_BYTES:
            step = (size - HEAD_BYTES) // (SAMPLE_PAGES + 1)
            offsets = [HEAD_BYTES + step * (i + 1) for i in range(SAMPLE_PAGES)] if step >= PAGE else []
            for offset in [*offsets, max(HEAD_BYTES, size - PAGE)]:
                h.update(os.pread(fd, PAGE, offset))
    return h.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """One input file (or a whole local Zarr store) as it was when read."""

    path: str
    """Resolved absolute path (symbolic links followed)."""
    size: int
    """Size in bytes."""
    mtime_ns: int
    """Modification time, in nanoseconds."""
    inode: int
    """Inode number (a file replaced by another one of the same name gets another)."""
    digest: str
    """Digest of the size and sampled content (see :func:`_sampled_digest`)."""

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileIdentity:
        """The identity of the file at ``path``."""
        resolved = Path(path).resolve()
        stat = resolved.stat()
        return cls(str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ino, _sampled_digest(resolved, stat.st_size))

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "inode": self.inode,
            "digest": self.digest,
        }

    @classmethod
    def from_json(cls, data: Any) -> FileIdentity:
        return cls(str(data["path"]), int(data["size"]), int(data["mtime_ns"]), int(data["inode"]), str(data["digest"]))

    def change(self, now: FileIdentity) -> str | None:
        """How the same path differs ``now``, in words; ``None`` if it does not."""
        changed = [
            what
            for what, differs in (
                ("size", self.size != now.size),
                ("content", self.digest != now.digest),
                ("modification time", self.mtime_ns != now.mtime_ns),
                ("inode", self.inode != now.inode),
            )
            if differs
        ]
        if not changed:
            return None
        return f"{now.path} changed since ({', '.join(changed)} {'differ' if len(changed) > 1 else 'differs'})"


@dataclass(frozen=True, slots=True)
class SourceIdentity:
    """The files of one input model, in the order it reads them."""

    label: str
    """How the model was named (its path as given)."""
    files: tuple[FileIdentity, ...]
    """Every file it reads."""

    @classmethod
    def of_files(cls, label: str, paths: Iterable[str | os.PathLike[str]]) -> SourceIdentity:
        return cls(label, tuple(FileIdentity.of(p) for p in paths))

    @property
    def content(self) -> tuple[tuple[int, str], ...]:
        """What the files hold, wherever they are: equal for two copies of one model."""
        return tuple((f.size, f.digest) for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "files": [f.to_json() for f in self.files]}

    @classmethod
    def from_json(cls, data: Any) -> SourceIdentity:
        return cls(str(data["label"]), tuple(FileIdentity.from_json(f) for f in data["files"]))

    def mismatch(self, now: SourceIdentity) -> str | None:
        """Why ``now`` is not this model, naming the file; ``None`` if it is."""
        then_paths = [f.path for f in self.files]
        now_paths = [f.path for f in now.files]
        if then_paths != now_paths:
            for then, current in zip(then_paths, now_paths, strict=False):
                if then != current:
                    return f"it is {current}, not {then}"
            counts = f"it was {len(then_paths)} files, now {len(now_paths)}"
            if len(then_paths) > len(now_paths):
                return f"{then_paths[len(now_paths)]} is no longer read ({counts})"
            return f"{now_paths[len(then_paths)]} is read too ({counts})"
        for then_file, now_file in zip(self.files, now.files, strict=True):
            why = then_file.change(now_file)
            if why is not None:
                return why
        return None


def _role(index: int) -> str:
    return "the base" if index == 0 else f"fine-tuned model {index}"


@dataclass(frozen=True, slots=True)
class InputsIdentity:
    """The base (first) and the fine-tuned models of a merge, in order."""

    sources: tuple[SourceIdentity, ...]
    """Base first, then the fine-tuned models in the order given."""

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.sources]

    @classmethod
    def from_json(cls, data: Any) -> InputsIdentity:
        """Rebuild from :meth:`to_json` output (``KeyError``/``TypeError``/``ValueError`` if malformed)."""
        if not isinstance(data, list):
            raise TypeError(f"expected a list of models, got {type(data).__name__}")
        return cls(tuple(SourceIdentity.from_json(s) for s in data))

    def mismatch(self, now: InputsIdentity) -> str | None:
        """Why ``now`` are not these inputs, in one line naming the model and the file; ``None`` if they are."""
        if len(self.sources) != len(now.sources):
            return f"they were {len(self.sources) - 1} fine-tuned models, now {len(now.sources) - 1}"
        for i, (then, current) in enumerate(zip(self.sources, now.sources, strict=True)):
            why = then.mismatch(current)
            if why is not None:
                return f"{_role(i)} ({current.label}): {why}"
        return None


def store_identity(label: str, root: Path, files: Sequence[tuple[str, Path]]) -> SourceIdentity:
    """One entry for a local Zarr store at ``root`` holding ``files`` (``(relative name, path)`` pairs).

    Every file's name, size, time and inode are digested; so is the content of its metadata files
    (``zarr.json``, whole) and the first page of :data:`STORE_SAMPLE_FILES` chunk files spread evenly
    over the sorted list (a store can hold millions of chunks: stat them, but read only a few)."""
    h = hashlib.sha256()
    total = 0
    newest = 0
    chunks = []
    for name, path in files:
        stat = path.stat()
        total += stat.st_size
        newest = max(newest, stat.st_mtime_ns)
        h.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}\n".encode())
        if path.name == "zarr.json":
            h.update(path.read_bytes())
        else:
            chunks.append(path)
    step = max(1, len(chunks) // STORE_SAMPLE_FILES)
    for path in chunks[::step][:STORE_SAMPLE_FILES]:
        with open(path, "rb") as f:
            h.update(f.read(PAGE))
    resolved = root.resolve()
    entry = FileIdentity(str(resolved), total, newest, resolved.stat().st_ino, h.hexdigest()[:32])
    return SourceIdentity(label, (entry,))
