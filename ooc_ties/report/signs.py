"""The elected signs of a merge, saved (``--save-signs``): an int8 safetensors file, one tensor per merged
tensor, +1 or -1 where the vote elected that sign and 0 where it was exactly zero (those elements take the
majority or the positive sign, by the zero-sign rule).

A later merge elects its signs from the file with ``--sign-from FILE`` (the paper's "sign from
elsewhere"; :meth:`ooc_ties.inputs.MergeInputs.sign_block`), and two reports can be compared element by
element. The file is written block by block in pass 2 under a hidden name beside it and renamed into
place when the merge succeeds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ooc_ties.config import MergeOptions
from ooc_ties.dtypes import I8
from ooc_ties.errors import OutputPathError
from ooc_ties.io.block_writer import FileRanges
from ooc_ties.io.writer import ShardWriter
from ooc_ties.tensor import Tensor

__all__ = ["SIGNS_FORMAT", "SignFile"]

SIGNS_FORMAT = "ooc-ties-signs"
"""The ``format`` entry of a sign file's metadata."""


class SignFile:
    """A sign file being written at ``path`` (see the module docstring)."""

    def __init__(
        self, path: Path, names: Sequence[tuple[str, tuple[int, ...]]], options: MergeOptions, *, overwrite: bool
    ) -> None:
        if path.is_dir() or (path.exists() and not overwrite):
            what = "is a folder" if path.is_dir() else "already exists (choose another path or --overwrite)"
            raise OutputPathError(f"{path}: {what}")
        if not path.parent.is_dir():
            raise OutputPathError(f"{path}: its folder {path.parent} does not exist")
        self.path = path
        self.partial = path.with_name(f".{path.name}.ooc-ties-partial")
        tensors = [Tensor(name, I8, shape) for name, shape in names]
        metadata = {"format": SIGNS_FORMAT, "options": json.dumps(options.to_json(), sort_keys=True)}
        self._writer = ShardWriter(self.partial, tensors, metadata, reopen=True)
        self._open = True

    def write(self, name: str, start: int, signs: np.ndarray) -> None:
        """Write the elected signs of elements ``start...`` of tensor ``name`` (any thread)."""
        self._writer.write(name, start, signs)

    def block_writer(self) -> FileRanges:
        """What writes blocks of signs from another process (a cluster's worker)."""
        return self._writer.block_writer()

    def commit(self) -> Path:
        """Close the file and move it into place."""
        self._writer.close()
        self._open = False
        self.partial.replace(self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file."""
        if self._open:
            self._writer.close()
            self._open = False
        self.partial.unlink(missing_ok=True)
