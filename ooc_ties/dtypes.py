"""The tensor dtypes ooc-ties reads and writes, by their safetensors codes.

Raw bytes are viewed through a NumPy *storage* dtype. NumPy has no bfloat16, so BF16 tensors are viewed
as ``uint16`` bit patterns and decoded to float32 by the kernels (a 16-bit left shift, exact). F16 is
viewed as NumPy ``float16``. Every float dtype merges in float32; integer and bool tensors are copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ooc_ties.errors import OptionError, UnsupportedDtypeError

__all__ = [
    "BF16",
    "DTYPES",
    "F16",
    "F32",
    "F64",
    "I8",
    "OUTPUT_DTYPES",
    "TORCH_NAMES",
    "DType",
    "parse_dtype",
    "parse_output_dtype",
]


@dataclass(frozen=True, slots=True)
class DType:
    """One tensor dtype as safetensors names it."""

    code: str
    """The safetensors dtype code, e.g. ``"BF16"``."""
    storage: np.dtype
    """The NumPy dtype that views the raw bytes without conversion."""
    is_float: bool
    """Whether the dtype takes part in the merge (floats) or is copied from the base (others)."""

    @property
    def itemsize(self) -> int:
        return int(self.storage.itemsize)

    def __str__(self) -> str:
        return self.code


F64 = DType("F64", np.dtype("<f8"), True)
F32 = DType("F32", np.dtype("<f4"), True)
F16 = DType("F16", np.dtype("<f2"), True)
BF16 = DType("BF16", np.dtype("<u2"), True)
I8 = DType("I8", np.dtype("i1"), False)
"""int8: also the elected signs a report saves (``--save-signs``)."""

DTYPES: dict[str, DType] = {
    d.code: d
    for d in (
        F64,
        F32,
        F16,
        BF16,
        DType("I64", np.dtype("<i8"), False),
        DType("I32", np.dtype("<i4"), False),
        DType("I16", np.dtype("<i2"), False),
        I8,
        DType("U64", np.dtype("<u8"), False),
        DType("U32", np.dtype("<u4"), False),
        DType("U16", np.dtype("<u2"), False),
        DType("U8", np.dtype("u1"), False),
        DType("BOOL", np.dtype("?"), False),
    )
}
"""Every dtype ooc-ties can read, by safetensors code."""

OUTPUT_DTYPES: dict[str, DType] = {"bf16": BF16, "f16": F16, "f32": F32}
"""The names accepted by ``--dtype`` for merged (float) tensors."""

TORCH_NAMES: dict[DType, str] = {BF16: "bfloat16", F16: "float16", F32: "float32"}
"""The output dtypes as torch (``config.json``'s ``torch_dtype``) and mergekit configurations name them;
:func:`parse_output_dtype` accepts these names too."""


def parse_dtype(code: object, where: str) -> DType:
    """The :class:`DType` for a safetensors dtype code; ``where`` names the file and tensor for errors."""
    if isinstance(code, str) and code in DTYPES:
        return DTYPES[code]
    allowed = ", ".join(DTYPES)
    raise UnsupportedDtypeError(f"{where}: dtype {code!r} is not supported (expected one of: {allowed})")


def parse_output_dtype(name: str | DType | None) -> DType | None:
    """The output dtype for ``--dtype``; ``None`` keeps each tensor's base dtype."""
    if name is None or isinstance(name, DType):
        if isinstance(name, DType) and name not in OUTPUT_DTYPES.values():
            raise OptionError(f"output dtype {name} is not supported (expected one of: bf16, f16, f32)")
        return name
    key = name.lower()
    aliases = {"half": "f16", "float": "f32", **{TORCH_NAMES[d]: short for short, d in OUTPUT_DTYPES.items()}}
    key = aliases.get(key, key)
    if key not in OUTPUT_DTYPES:
        raise OptionError(f'output dtype "{name}" is invalid (expected one of: "bf16", "f16", "f32")')
    return OUTPUT_DTYPES[key]
