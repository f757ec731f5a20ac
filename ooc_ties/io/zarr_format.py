"""How ooc-ties lays a model out in Zarr v3: one array per tensor, and the attributes that carry the rest.

- **dtype.** Every array carries the attribute ``"safetensors_dtype"`` with its safetensors code
  (``"BF16"``, ``"F32"``, ...). zarr-python 3.1 has no bfloat16 data type, so a BF16 tensor is stored
  as ``uint16`` bit patterns, and this attribute says so. Arrays written by other tools need not carry
  it: their dtype is then read from the Zarr data type (float32, float16, int64, ...), and an
  ``ml_dtypes`` bfloat16 NumPy array counts as BF16.
- **side files.** The group attribute ``"huggingface_files"`` holds the model folder's config and
  tokenizer files (``config.json``, ``tokenizer.json``, ...) by file name, as UTF-8 text or, for binary
  files such as ``tokenizer.model``, as ``{"base64": ...}``, so that a folder converted to Zarr and back
  is whole again.
- **recipe.** A merged group carries ``"ooc_ties_recipe"``: the same record as the folder's
  ``ooc_ties_recipe.json``.
"""

from __future__ import annotations

import base64
import binascii
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ooc_ties.dtypes import BF16, DTYPES, DType
from ooc_ties.errors import CheckpointFormatError, UnsupportedDtypeError
from ooc_ties.io.writer import INDEX_NAME, RECIPE_NAME

if TYPE_CHECKING:
    import zarr
    from typing_extensions import TypeIs

__all__ = [
    "DTYPE_ATTRIBUTE",
    "FILES_ATTRIBUTE",
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
"""Group attribute: the config and tokenizer files, by name."""
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


def encode_files(files: Mapping[str, bytes]) -> dict[str, Any]:
    """Side files as a JSON-able attribute value."""
    encoded: dict[str, Any] = {}
    for name, data in sorted(files.items()):
        try:
            encoded[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            encoded[name] = {"base64": base64.b64encode(data).decode("ascii")}
    return encoded


def decode_files(value: Any, where: str) -> dict[str, bytes]:
    """The inverse of :func:`encode_files`; ``where`` names the group for errors."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointFormatError(f"{where}: attribute {FILES_ATTRIBUTE} is not a mapping of file names")
    files: dict[str, bytes] = {}
    for name, item in value.items():
        if (
            not isinstance(name, str)
            or "/" in name
            or name.startswith(".")
            or name.endswith(".safetensors")
            or name in ("", INDEX_NAME, RECIPE_NAME)
        ):  # not a side file: it would overwrite the output's own files
            raise CheckpointFormatError(f"{where}: attribute {FILES_ATTRIBUTE} names a bad file {name!r}")
        if isinstance(item, str):
            files[name] = item.encode("utf-8")
        elif isinstance(item, dict) and isinstance(item.get("base64"), str):
            try:
                files[name] = base64.b64decode(item["base64"], validate=True)
            except binascii.Error:
                raise CheckpointFormatError(f"{where}: side file {name!r} is not valid base64") from None
        else:
            raise CheckpointFormatError(f"{where}: attribute {FILES_ATTRIBUTE} entry {name!r} is not text or base64")
    return files


def is_zarr_group(obj: object) -> TypeIs[zarr.Group]:
    """Whether ``obj`` is a ``zarr.Group``, without importing zarr (0.2 s) when nothing else has: an
    object can only be one if zarr is loaded."""
    zarr = sys.modules.get("zarr")
    return zarr is not None and isinstance(obj, zarr.Group)


def is_zarr_array(obj: object) -> TypeIs[zarr.Array[Any]]:
    """Whether ``obj`` is a ``zarr.Array`` (see :func:`is_zarr_group`)."""
    zarr = sys.modules.get("zarr")
    return zarr is not None and isinstance(obj, zarr.Array)
