"""How ooc-ties lays a model out in Zarr v3: one array per tensor, and the attributes that carry the rest.

- **dtype.** Every array carries the attribute ``"safetensors_dtype"`` with its safetensors code
  (``"BF16"``, ``"F32"``, ...). zarr-python 3.1 has no bfloat16 data type, so a BF16 tensor is stored
  as ``uint16`` bit patterns, and this attribute says so. Arrays written by other tools need not carry
  it: their dtype is then read from the Zarr data type (float32, float16, int64, ...), and an
  ``ml_dtypes`` bfloat16 NumPy array counts as BF16.
- **side files.** The group attribute ``"huggingface_files"`` lists the model folder's side files
  (:mod:`ooc_ties.io.side_files`: config, tokenizer, sentence-transformers modules, ...) by relative
  POSIX path (``"1_Pooling/config.json"``), so that a folder converted to Zarr and back is whole
  again. A file of at most :data:`INLINE_LIMIT` bytes is held in the attribute, as UTF-8 text or, for
  a binary file such as ``tokenizer.model``, as ``{"base64": ...}``. A larger one would bloat the
  group's ``zarr.json`` (read whenever the group is opened), so it is a 1-D ``uint8`` array in the
  group ``"huggingface_files"``, chunked by :data:`~ooc_ties.io.side_files.PIECE` bytes and written
  and read a chunk at a time; its entry is ``{"array": "huggingface_files/<n>"}``. The arrays are
  numbered, not named by path, so that no file name can clash with Zarr's own keys. That group is no
  tensor: a tensor's name may not start with ``huggingface_files/``.
- **recipe.** A merged group carries ``"ooc_ties_recipe"``: the same record as the folder's
  ``ooc_ties_recipe.json``.
"""

from __future__ import annotations

import base64
import binascii
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ooc_ties.dtypes import BF16, DTYPES, DType
from ooc_ties.errors import CheckpointFormatError, UnsupportedDtypeError
from ooc_ties.io.side_files import PIECE, SideFile, SideFileLike, as_side_file, clashes_with_output

if TYPE_CHECKING:
    import zarr
    from typing_extensions import TypeIs

__all__ = [
    "DTYPE_ATTRIBUTE",
    "FILES_ATTRIBUTE",
    "FILES_GROUP",
    "INLINE_LIMIT",
    "RECIPE_ATTRIBUTE",
    "decode_files",
    "dtype_of",
    "encode_files",
    "is_zarr_array",
    "is_zarr_group",
]

DTYPE_ATTRIBUTE = "safetensors_dtype"
"""Array attribute: the tensor's safetensors dtype code."""
FILES_ATTRIBUTE = "huggingface_files"
"""Group attribute: the side files (config, tokenizer, ...), by relative path."""
FILES_GROUP = "huggingface_files"
"""Sub-group of the side files too large for the attribute, one ``uint8`` array each."""
INLINE_LIMIT = 1024 * 1024
"""Side files up to this many bytes are held in the attribute; larger ones are arrays."""
RECIPE_ATTRIBUTE = "ooc_ties_recipe"
"""Group attribute of a merged model: how it was made."""

_BY_STORAGE: dict[np.dtype, DType] = {
    d.storage.newbyteorder("="): d
    for d in DTYPES.values()
    if d is not BF16  # uint16 without the attribute is U16; BF16 needs the attribute or ml_dtypes
}


def dtype_of(storage: np.dtype, attributes: Mapping[str, Any], where: str) -> DType:
    """The tensor dtype of an array with NumPy dtype ``storage`` and Zarr ``attributes``."""
    code = attributes.get(DTYPE_ATTRIBUTE)
    if code is not None:
        dtype = DTYPES.get(code) if isinstance(code, str) else None
        if dtype is None:
            raise UnsupportedDtypeError(f"{where}: attribute {DTYPE_ATTRIBUTE}={code!r} is not a supported dtype")
        if dtype.storage.itemsize != storage.itemsize or dtype.storage.kind != storage.kind:
            raise CheckpointFormatError(
                f"{where}: attribute {DTYPE_ATTRIBUTE}={code!r} does not match the array's data type {storage}"
            )
        return dtype
    if storage.name == "bfloat16" and storage.itemsize == 2:  # ml_dtypes
        return BF16
    found = _BY_STORAGE.get(storage.newbyteorder("="))
    if found is None:
        allowed = ", ".join(str(d) for d in _BY_STORAGE)
        raise UnsupportedDtypeError(f"{where}: data type {storage} is not supported (expected one of: {allowed})")
    return found


def encode_files(files: Mapping[str, SideFileLike]) -> tuple[dict[str, Any], dict[str, SideFile]]:
    """Side files as a JSON-able attribute value, and the files too large for it by the key of the
    array that is to hold each (the caller writes them)."""
    encoded: dict[str, Any] = {}
    arrays: dict[str, SideFile] = {}
    for name, item in sorted(files.items()):
        file = as_side_file(item)
        if file.size > INLINE_LIMIT:
            key = f"{FILES_GROUP}/{len(arrays)}"
            arrays[key] = file
            encoded[name] = {"array": key}
            continue
        data = file.read()
        try:
            encoded[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            encoded[name] = {"base64": base64.b64encode(data).decode("ascii")}
    return encoded, arrays


def decode_files(group: zarr.Group, where: str) -> dict[str, SideFile]:
    """The side files of ``group`` (see :func:`encode_files`); ``where`` names the group for errors.
    An array-held file is read when its pieces are asked for."""
    value = group.attrs.get(FILES_ATTRIBUTE)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointFormatError(f"{where}: attribute {FILES_ATTRIBUTE} is not a mapping of file names")
    files: dict[str, SideFile] = {}
    for name, item in value.items():
        if not isinstance(name, str) or clashes_with_output(name):
            # hidden, outside the folder, or weights or the recipe: it would overwrite the output's own files
            raise CheckpointFormatError(f"{where}: attribute {FILES_ATTRIBUTE} names a bad file {name!r}")
        if isinstance(item, str):
            files[name] = SideFile.of_bytes(item.encode("utf-8"))
        elif isinstance(item, dict) and isinstance(item.get("base64"), str):
            try:
                files[name] = SideFile.of_bytes(base64.b64decode(item["base64"], validate=True))
            except binascii.Error:
                raise CheckpointFormatError(f"{where}: side file {name!r} is not valid base64") from None
        elif isinstance(item, dict) and isinstance(item.get("array"), str):
            files[name] = _array_file(group, item["array"], f"{where}: side file {name!r}")
        else:
            raise CheckpointFormatError(
                f"{where}: attribute {FILES_ATTRIBUTE} entry {name!r} is not text, base64 or an array"
            )
    return files


def _array_file(group: zarr.Group, key: str, where: str) -> SideFile:
    """A side file held in the ``uint8`` array ``key`` of ``group``."""
    folder, _, number = key.partition("/")
    try:
        array = group[key] if folder == FILES_GROUP and number.isdigit() else None
    except KeyError:
        array = None
    if not is_zarr_array(array) or array.ndim != 1 or np.dtype(array.dtype) != np.uint8:
        raise CheckpointFormatError(f"{where}: {key!r} is not a 1-D uint8 array of group {FILES_GROUP!r}")
    size = int(array.shape[0])
    return SideFile(size, lambda: _array_pieces(array, size, where))


def _array_pieces(array: zarr.Array[Any], size: int, where: str) -> Iterator[bytes]:
    for start in range(0, size, PIECE):
        try:
            piece = np.asarray(array[start : start + PIECE]).tobytes()
        except Exception as exc:  # a missing, truncated or undecodable chunk: zarr and its codecs raise many kinds
            raise CheckpointFormatError(
                f"{where}: cannot read bytes [{start}, {min(size, start + PIECE)}) ({type(exc).__name__}: {exc})"
            ) from None
        yield piece


def is_zarr_group(obj: object) -> TypeIs[zarr.Group]:
    """Whether ``obj`` is a ``zarr.Group``, without importing zarr (0.2 s) when nothing else has: an
    object can only be one if zarr is loaded."""
    zarr = sys.modules.get("zarr")
    return zarr is not None and isinstance(obj, zarr.Group)


def is_zarr_array(obj: object) -> TypeIs[zarr.Array[Any]]:
    """Whether ``obj`` is a ``zarr.Array`` (see :func:`is_zarr_group`)."""
    zarr = sys.modules.get("zarr")
    return zarr is not None and isinstance(obj, zarr.Array)
