"""Side files: everything in a model folder besides its weights, which travels from the base to the output.

A model folder is usable only with its side files: ``config.json``, the tokenizer (``tokenizer.json``,
``vocab.txt``, ``spiece.model``, ...), a processor's ``preprocessor_config.json``, a sentence-transformers
model's ``modules.json`` and module folders (``1_Pooling/config.json``), chat templates, custom code.
So every file and sub-folder of the base folder is copied, except:

- **weights**, in any format (:data:`WEIGHT_SUFFIXES`: safetensors, PyTorch, ONNX, GGUF, Keras, Flax,
  TensorFlow Lite, rust-bert), and weight index files (``*.index.json``). The merged tensors replace
  the safetensors ones; the base's weights in another format would contradict them, so they are left
  out too (logged at INFO). One exception: the module folders a sentence-transformers model lists in
  its ``modules.json`` (``2_Dense/``, ...) hold weights of their own that the model cannot load
  without and that the merge does not cover; they are copied from the base, with a WARNING saying so;
- **hidden entries** (a name starting with ``.``: ``.git``, ``.cache``, ``.gitattributes``, ooc-ties'
  own staging and resume folders);
- :data:`RECIPE_NAME` at the top: a merged base's own recipe (the output gets its own).

Symbolic links are followed (a Hugging Face cache snapshot is a folder of links to blobs); a link
cycle is walked once, and a broken link is skipped with a warning.

A side file is a :class:`SideFile`: its size and its bytes, read in pieces of :data:`PIECE` bytes, so
a large one is copied without ever being whole in memory.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from ooc_ties.errors import CheckpointFormatError

__all__ = [
    "MERGEKIT_CONFIG_NAME",
    "PIECE",
    "RECIPE_NAME",
    "WEIGHT_SUFFIXES",
    "SideFile",
    "SideFileLike",
    "as_side_file",
    "clashes_with_output",
    "collect_side_files",
    "skip_reason",
]

logger = logging.getLogger(__name__)

PIECE = 8 * 1024 * 1024
"""Bytes of a side file read, written or stored (one Zarr chunk) at a time."""
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".onnx",
    ".onnx_data",
    ".gguf",
    ".h5",
    ".msgpack",
    ".tflite",
    ".ot",
)
"""Weight files (compared case-insensitively), never copied to the output."""
INDEX_SUFFIX = ".index.json"
"""Weight index files (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``, ...)."""
RECIPE_NAME = "ooc_ties_recipe.json"
"""The file in a merged folder that records how it was made."""
MERGEKIT_CONFIG_NAME = "mergekit_config.yml"
"""The mergekit configuration of a merged folder (mergekit's name; ooc-ties writes one where mergekit can
express the merge): a base's own is not the output's, so it is never copied."""


@dataclass(frozen=True, slots=True)
class SideFile:
    """The bytes of one side file, held or read on demand."""

    size: int
    """Its length in bytes."""
    pieces: Callable[[], Iterator[bytes]]
    """Its bytes in order, in pieces of at most :data:`PIECE` bytes (each call starts again)."""

    @classmethod
    def of_bytes(cls, data: bytes) -> SideFile:
        """A file made in memory."""
        return cls(len(data), functools.partial(_slices, bytes(data)))

    @classmethod
    def of_path(cls, path: Path) -> SideFile:
        """A local file (a symbolic link is followed), read when its pieces are asked for."""
        size = path.stat().st_size
        return cls(size, functools.partial(_read_pieces, path, size))

    def read(self) -> bytes:
        """All its bytes (for small files: a config to rewrite, a Zarr attribute)."""
        return b"".join(self.pieces())


SideFileLike: TypeAlias = "SideFile | bytes"
"""A side file, or its bytes."""


def as_side_file(item: SideFileLike) -> SideFile:
    """``item`` as a :class:`SideFile`."""
    return item if isinstance(item, SideFile) else SideFile.of_bytes(item)


def _slices(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), PIECE):
        yield data[start : start + PIECE]


def _read_pieces(path: Path, size: int) -> Iterator[bytes]:
    done = 0
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            done += len(piece)
            if done > size:
                break
            yield piece
    if done != size:
        raise CheckpointFormatError(f"{path}: changed while it was copied ({size} bytes expected, {done} read)")


def skip_reason(name: str, modules: frozenset[str] = frozenset()) -> str | None:
    """Why the relative POSIX path ``name`` is no side file (``"hidden"``, ``"weights"``, ``"recipe"``),
    or ``None`` if it is one. A path that is empty, absolute or has ``.``/``..`` parts counts as hidden.
    Weights inside one of the sentence-transformers ``modules`` folders are side files."""
    parts = name.split("/")
    if any(not part or part.startswith(".") for part in parts):
        return "hidden"
    last = parts[-1].lower()
    if (last.endswith(WEIGHT_SUFFIXES) or last.endswith(INDEX_SUFFIX)) and not (len(parts) > 1 and parts[0] in modules):
        return "weights"
    if name in (RECIPE_NAME, MERGEKIT_CONFIG_NAME):
        return "recipe"
    return None


def clashes_with_output(name: str) -> bool:
    """Whether a side file named ``name`` would be hidden, lie outside the output folder, or stand where
    the output's own weights, index or recipe go (the top level): such a name is refused. (The merge
    itself may write a ``mergekit_config.yml``: :mod:`ooc_ties.publish` drops the base's.)"""
    reason = skip_reason(name)
    return reason == "hidden" or (reason is not None and "/" not in name and name != MERGEKIT_CONFIG_NAME)


def sentence_transformers_modules(folder: Path) -> frozenset[str]:
    """The module folders a sentence-transformers model lists in ``modules.json`` (none if it has none,
    or it is not the list of ``{"path": ...}`` objects sentence-transformers writes)."""
    try:
        listed = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return frozenset()
    if not isinstance(listed, list):
        return frozenset()
    paths = (entry.get("path") for entry in listed if isinstance(entry, dict))
    return frozenset(p for p in paths if isinstance(p, str) and p and "/" not in p and not p.startswith("."))


def collect_side_files(folder: Path) -> dict[str, SideFile]:
    """Every side file under ``folder``, by relative POSIX path in sorted order (nothing is read yet)."""
    files: dict[str, SideFile] = {}
    skipped: list[str] = []
    modules = sentence_transformers_modules(folder)
    _walk(folder, "", (folder.resolve(),), files, skipped, modules)
    if skipped:
        logger.info("%s: weights not copied to the output: %s", folder, ", ".join(skipped))
    unmerged = sorted(name for name in files if "/" in name and skip_reason(name) == "weights")
    if unmerged:
        logger.warning(
            "%s: the sentence-transformers module weights %s are copied from the base, not merged",
            folder,
            ", ".join(unmerged),
        )
    return files


def _walk(
    directory: Path,
    prefix: str,
    ancestors: tuple[Path, ...],
    files: dict[str, SideFile],
    skipped: list[str],
    modules: frozenset[str],
) -> None:
    with os.scandir(directory) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        name = prefix + entry.name
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue
        if entry.is_dir():  # (follows links)
            real = path.resolve()
            if real in ancestors:
                logger.warning("%s: not copied (a link back to a folder that holds it)", path)
            else:
                _walk(path, name + "/", (*ancestors, real), files, skipped, modules)
        elif not entry.is_file():
            logger.warning("%s: not copied (a broken link, or not a regular file)", path)
        else:
            reason = skip_reason(name, modules)
            if reason is None:
                files[name] = SideFile.of_path(path)
            elif reason == "weights" and not _merged_weights(name):
                skipped.append(name)


def _merged_weights(name: str) -> bool:
    """Whether ``name`` is the folder's own safetensors checkpoint (merged, so not worth a log line)."""
    return "/" not in name and (name.endswith(".safetensors") or name == "model.safetensors.index.json")
