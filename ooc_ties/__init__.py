"""ooc-ties: exact out-of-core TIES-Merging of safetensors checkpoints on CPU cores.

>>> from ooc_ties import merge, PRESETS
>>> merge("base/", ["ft1/", "ft2/"], "merged/", PRESETS["paper"].with_(density=0.2))  # doctest: +SKIP

The public names are imported from their modules on first use: ``import ooc_ties.errors`` (or
``import ooc_ties``) imports neither NumPy, Numba nor Zarr.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ooc_ties._version import __version__

if TYPE_CHECKING:
    from ooc_ties.config import PRESETS, MergeOptions, RescaleRule, Resources, Scope, TensorValues, TrimRule, ZeroSign
    from ooc_ties.convert import ConvertResult, convert
    from ooc_ties.errors import (
        CheckpointFormatError,
        CheckpointNotFoundError,
        DiskSpaceError,
        IncompatibleCheckpointsError,
        NonFiniteValueError,
        OocTiesError,
        OptionError,
        OutputPathError,
        UnsupportedDtypeError,
    )
    from ooc_ties.io.zarr_view import open_zarr
    from ooc_ties.merge import MergeResult, merge, plan_merge
    from ooc_ties.methods import METHODS, Method
    from ooc_ties.pass1.thresholds import GroupThreshold, ThresholdBasis, Thresholds
    from ooc_ties.plan import MergePlan
    from ooc_ties.sources import TensorSource, open_source

__all__ = [
    "METHODS",
    "PRESETS",
    "CheckpointFormatError",
    "CheckpointNotFoundError",
    "ConvertResult",
    "DiskSpaceError",
    "GroupThreshold",
    "IncompatibleCheckpointsError",
    "MergeOptions",
    "MergePlan",
    "MergeResult",
    "Method",
    "NonFiniteValueError",
    "OocTiesError",
    "OptionError",
    "OutputPathError",
    "RescaleRule",
    "Resources",
    "Scope",
    "TensorSource",
    "TensorValues",
    "ThresholdBasis",
    "Thresholds",
    "TrimRule",
    "UnsupportedDtypeError",
    "ZeroSign",
    "__version__",
    "convert",
    "merge",
    "open_source",
    "open_zarr",
    "plan_merge",
]

_HOMES = {
    "ooc_ties.config": (
        "PRESETS",
        "MergeOptions",
        "RescaleRule",
        "Resources",
        "Scope",
        "TensorValues",
        "TrimRule",
        "ZeroSign",
    ),
    "ooc_ties.convert": ("ConvertResult", "convert"),
    "ooc_ties.errors": (
        "CheckpointFormatError",
        "CheckpointNotFoundError",
        "DiskSpaceError",
        "IncompatibleCheckpointsError",
        "NonFiniteValueError",
        "OocTiesError",
        "OptionError",
        "OutputPathError",
        "UnsupportedDtypeError",
    ),
    "ooc_ties.io.zarr_view": ("open_zarr",),  # subclasses zarr's Store: importing it imports zarr (0.2 s)
    "ooc_ties.merge": ("MergeResult", "merge", "plan_merge"),
    "ooc_ties.methods": ("METHODS", "Method"),
    "ooc_ties.plan": ("MergePlan",),
    "ooc_ties.sources": ("TensorSource", "open_source"),
    "ooc_ties.pass1.thresholds": ("GroupThreshold", "ThresholdBasis", "Thresholds"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access (then it is a plain attribute)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """This package's module object. Two submodules share their name with the function they define
    (``merge``, ``convert``); importing a submodule binds it on its package, which would hide the
    function from ``from ooc_ties import merge``. Here the package binds the function instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and value.__name__ == _MODULE_OF.get(name) == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
