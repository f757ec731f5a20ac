"""A checkpoint: one safetensors file, or a Hugging Face model folder of one or more shards.

A folder is read through ``model.safetensors.index.json`` when it has one (the sharded layout, whose
``weight_map`` names the shard of every tensor), else through its single ``*.safetensors`` file. Every
shard is opened (validated, memory-mapped) up front so that a bad file fails before any work starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np

from ooc_ties.errors import CheckpointFormatError, CheckpointNotFoundError
from ooc_ties.identity import SourceIdentity
from ooc_ties.io.reopen import reopened
from ooc_ties.io.safetensors import SafetensorsFile, StoredTensor, pytorch_conversion
from ooc_ties.io.side_files import SideFile, collect_side_files
from ooc_ties.io.writer import INDEX_NAME

__all__ = ["Checkpoint"]


_OTHER_FORMATS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "consolidated.00.pth")
"""PyTorch weight files a folder without safetensors may hold; the first one found is named with the
command that converts it (:func:`~ooc_ties.io.safetensors.pytorch_conversion`)."""


def _index_shards(index_path: Path) -> dict[str, str]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"{index_path}: not valid JSON ({exc})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointFormatError(f"{index_path}: has no 'weight_map' of tensor names to shard files")
    for name, shard in weight_map.items():
        if Path(shard).name != shard:
            raise CheckpointFormatError(f"{index_path}: tensor {name!r} points outside the folder ({shard!r})")
    return weight_map


class Checkpoint:
    """The tensors of one model, memory-mapped.

    ``names`` lists the tensors in a fixed order (sorted by name), the order every pass walks them in.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointNotFoundError(f"{self.path}: no such file or folder")
        self.folder: Path | None = self.path if self.path.is_dir() else None
        self.files: list[SafetensorsFile] = []
        self._identity: SourceIdentity | None = None
        self._where: dict[str, tuple[SafetensorsFile, StoredTensor]] = {}
        try:
            if self.folder is None:
                self._add(SafetensorsFile(self.path), None)
            else:
                self._open_folder(self.folder)
        except BaseException:
            self.close()
            raise
        self.names: tuple[str, ...] = tuple(sorted(self._where))

    def _open_folder(self, folder: Path) -> None:
        index_path = folder / INDEX_NAME
        if index_path.is_file():
            weight_map = _index_shards(index_path)
            for shard in sorted(set(weight_map.values())):
                shard_path = folder / shard
                if not shard_path.is_file():
                    raise CheckpointNotFoundError(f"{index_path}: shard {shard!r} is listed but missing")
                listed = {n for n, s in weight_map.items() if s == shard}
                self._add(SafetensorsFile(shard_path), listed)
            return
        found = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
        if not found:
            others = [name for name in _OTHER_FORMATS if (folder / name).exists()]
            hint = ""
            if others:
                hint = f" (found {', '.join(others)}; convert it first: {pytorch_conversion(folder / others[0])})"
            raise CheckpointNotFoundError(
                f"{folder}: no .safetensors file in this folder; ooc-ties reads only safetensors{hint}"
            )
        if len(found) > 1:
            raise CheckpointFormatError(
                f"{folder}: {len(found)} .safetensors files but no {INDEX_NAME} to say how they fit together"
            )
        self._add(SafetensorsFile(found[0]), None)

    def _add(self, file: SafetensorsFile, listed: set[str] | None) -> None:
        self.files.append(file)
        if listed is not None:
            unlisted = sorted(set(file.tensors) - listed)
            absent = sorted(listed - set(file.tensors))
            if absent:
                raise CheckpointFormatError(
                    f"{file.path}: tensor {absent[0]!r} is listed in {INDEX_NAME} but not in this shard"
                )
            if unlisted:
                raise CheckpointFormatError(
                    f"{file.path}: tensor {unlisted[0]!r} is in this shard but not listed in {INDEX_NAME}"
                )
        for name, info in file.tensors.items():
            if name in self._where:
                other = self._where[name][0].path
                raise CheckpointFormatError(f"{file.path}: tensor {name!r} is also in {other}")
            self._where[name] = (file, info)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def info(self, name: str) -> StoredTensor:
        return self._where[name][1]

    def where(self, name: str) -> str:
        """``"<file>: tensor '<name>'"``, the prefix of every error about this tensor."""
        return f"{self._where[name][1].path}: tensor {name!r}"

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Flat elements ``[start, stop)`` of a tensor: a zero-copy view in storage dtype."""
        file, info = self._where[name]
        return file.read(info, start, stop)

    def release(self, name: str, start: int, stop: int) -> None:
        """Drop the pages of ``[start, stop)`` from this process (they stay in the page cache)."""
        file, info = self._where[name]
        file.release(info, start, stop)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data in the checkpoint."""
        return sum(info.nbytes for _, info in self._where.values())

    @property
    def label(self) -> str:
        """The path, as error messages name the checkpoint."""
        return str(self.path)

    def side_files(self) -> dict[str, SideFile]:
        """Every non-weight file under the folder, by relative path (see :mod:`ooc_ties.io.side_files`;
        empty for a bare file)."""
        return collect_side_files(self.folder) if self.folder is not None else {}

    def paths(self) -> list[Path]:
        """Every file this checkpoint reads."""
        extra = [self.folder / INDEX_NAME] if self.folder and (self.folder / INDEX_NAME).is_file() else []
        return [f.path for f in self.files] + extra

    def local_paths(self) -> list[Path]:
        """The file or folder given (the output must not lie inside it)."""
        return [self.path]

    def identity(self) -> SourceIdentity:
        """Every file's resolved path, size, time, inode and sampled content (see :mod:`ooc_ties.identity`):
        it tells whether results computed earlier (thresholds, an interrupted merge) belong to this
        checkpoint, reading only a few pages of each file. Computed once per open checkpoint."""
        if self._identity is None:
            self._identity = SourceIdentity.of_files(self.label, self.paths())
        return self._identity

    def close(self) -> None:
        for file in self.files:
            file.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self.names)} tensors in {len(self.files)} files)"

    def __reduce__(self) -> tuple[object, ...]:
        # A copy for another process (a cluster's worker) maps the files again there (:mod:`.reopen`).
        return (_reopen, (str(self.path), self.identity()))


def _reopen(path: str, identity: SourceIdentity) -> Checkpoint:
    return reopened(Checkpoint, path, identity, Checkpoint.identity)
