"""The ooc-ties error hierarchy.

Every error the library raises on purpose derives from :class:`OocTiesError`, and each subclass also
derives from the built-in exception a caller would expect (``FileNotFoundError``, ``ValueError``, ...),
so ``except ValueError`` keeps working for code that does not know about ooc-ties.

Messages are one line and name what is wrong: the file, the tensor, the option, what was expected and
what arrived. The CLI prints them as they are.
"""

from __future__ import annotations

__all__ = [
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
]


class OocTiesError(Exception):
    """Root of every error ooc-ties raises on purpose."""


class OptionError(OocTiesError, ValueError):
    """A merge option is outside its allowed range or does not fit the inputs."""


class CheckpointNotFoundError(OocTiesError, FileNotFoundError):
    """A checkpoint path does not exist, or a folder holds no safetensors file."""


class CheckpointFormatError(OocTiesError, ValueError):
    """A safetensors file or index is malformed: truncated, bad header, bad offsets."""


class UnsupportedDtypeError(OocTiesError, TypeError):
    """A tensor has a dtype ooc-ties cannot merge or copy."""


class IncompatibleCheckpointsError(OocTiesError, ValueError):
    """The checkpoints do not line up: a tensor is missing, extra, or has another shape."""


class NonFiniteValueError(OocTiesError, ValueError):
    """An input tensor holds NaN or infinity, or a task vector overflows float32."""


class OutputPathError(OocTiesError, FileExistsError):
    """The output path is unusable: it exists, or it lies inside an input."""


class DiskSpaceError(OocTiesError, OSError):
    """The output file system has too little free space for the merge."""


class ClusterError(OocTiesError, ConnectionError):
    """The Dask cluster a merge was asked to run on cannot be reached, or has had no worker for too long."""
