"""ooc-ties: exact out-of-core TIES-Merging of safetensors checkpoints on CPU cores.

>>> from ooc_ties import merge, PRESETS
>>> merge("base/", ["ft1/", "ft2/"], "merged/", PRESETS["paper"].with_(density=0.2))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from ooc_ties.config import (
    PRESETS,
    MergeOptions,
    Resources,
    Scope,
    TrimRule,
    ZeroSign,
)
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
from ooc_ties.merge import MergeResult, merge, plan_merge
from ooc_ties.plan import MergePlan
from ooc_ties.sources import TensorSource, open_source
from ooc_ties.thresholds import GroupThreshold, ThresholdBasis, Thresholds

if TYPE_CHECKING:
    from ooc_ties.io.zarr_view import open_zarr

__all__ = [
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
    "NonFiniteValueError",
    "OocTiesError",
    "OptionError",
    "OutputPathError",
    "Resources",
    "Scope",
    "TensorSource",
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


def __getattr__(name: str) -> Any:
    # open_zarr subclasses zarr's Store, so importing it imports zarr (0.2 s): only when asked for.
    if name == "open_zarr":
        from ooc_ties.io.zarr_view import open_zarr

        return open_zarr
    raise AttributeError(f"module 'ooc_ties' has no attribute {name!r}")
