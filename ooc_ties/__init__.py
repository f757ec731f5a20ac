"""ooc-ties: exact out-of-core TIES-Merging of safetensors checkpoints on CPU cores.

>>> from ooc_ties import merge, PRESETS
>>> merge("base/", ["ft1/", "ft2/"], "merged/", PRESETS["paper"].with_(density=0.2))  # doctest: +SKIP
>>> grid = expand_grid(PRESETS["paper"], {"density": [0.1, 0.2], "lam": [0.8, 1.0]})  # doctest: +SKIP
>>> merge_grid("base/", ["ft1/", "ft2/"], "sweep/", grid)  # 4 merges, the reads of one  # doctest: +SKIP

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
    from ooc_ties.analyze import AnalysisResult, analyze
    from ooc_ties.config import PRESETS, MergeOptions, RescaleRule, Scope, TensorValues, TrimRule, ZeroSign
    from ooc_ties.convert import ConvertResult, convert
    from ooc_ties.errors import (
        CheckpointFormatError,
        CheckpointNotFoundError,
        ClusterError,
        DiskSpaceError,
        IncompatibleCheckpointsError,
        NonFiniteValueError,
        OocTiesError,
        OptionError,
        OutputPathError,
        UnsupportedDtypeError,
    )
    from ooc_ties.grid import GridMode, GridPoint, expand_grid
    from ooc_ties.io.zarr_view import open_zarr
    from ooc_ties.merge import GridPlan, GridResult, MergeResult, merge, merge_grid, plan_grid, plan_merge
    from ooc_ties.methods import METHODS, Method
    from ooc_ties.pass1.thresholds import GroupThreshold, ThresholdBasis, Thresholds
    from ooc_ties.plan import MergePlan
    from ooc_ties.resources import Resources
    from ooc_ties.sources import TensorSource, open_source

__all__ = [
    "METHODS",
    "PRESETS",
    "AnalysisResult",
    "CheckpointFormatError",
    "CheckpointNotFoundError",
    "ClusterError",
    "ConvertResult",
    "DiskSpaceError",
    "GridMode",
    "GridPlan",
    "GridPoint",
    "GridResult",
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
    "analyze",
    "convert",
    "expand_grid",
    "merge",
    "merge_grid",
    "open_source",
    "open_zarr",
    "plan_grid",
    "plan_merge",
]

_HOMES = {
    "ooc_ties.analyze": ("AnalysisResult", "analyze"),
    "ooc_ties.config": (
        "PRESETS",
        "MergeOptions",
        "RescaleRule",
        "Scope",
        "TensorValues",
        "TrimRule",
        "ZeroSign",
    ),
    "ooc_ties.convert": ("ConvertResult", "convert"),
    "ooc_ties.errors": (
        "CheckpointFormatError",
        "CheckpointNotFoundError",
        "ClusterError",
        "DiskSpaceError",
        "IncompatibleCheckpointsError",
        "NonFiniteValueError",
        "OocTiesError",
        "OptionError",
        "OutputPathError",
        "UnsupportedDtypeError",
    ),
    "ooc_ties.io.zarr_view": ("open_zarr",),  # subclasses zarr's Store: importing it imports zarr (0.2 s)
    "ooc_ties.grid": ("GridMode", "GridPoint", "expand_grid"),
    "ooc_ties.merge": ("GridPlan", "GridResult", "MergeResult", "merge", "merge_grid", "plan_grid", "plan_merge"),
    "ooc_ties.methods": ("METHODS", "Method"),
    "ooc_ties.plan": ("MergePlan",),
    "ooc_ties.resources": ("Resources",),
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
    """This package's module object. Three submodules share their name with the function they define
    (``merge``, ``convert``, ``analyze``); importing a submodule binds it on its package, which would hide the
    function from ``from ooc_ties import merge``. Here the package binds the function instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and value.__name__ == _MODULE_OF.get(name) == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
