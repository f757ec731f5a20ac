"""A validating, memory-mapped reader for one safetensors file.

The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length ``N``, ``N``
bytes of JSON mapping tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the byte buffer after the header) plus an optional ``"__metadata__"`` string map, then the
buffer.

The ``safetensors`` package cannot hand out bfloat16 tensors as NumPy arrays, so this module parses the
header itself and views tensors straight out of a read-only ``mmap``: no copy, no torch. Every check the
merge relies on happens here, once, at open: a file that opens is safe to read anywhere its header says.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import math
import mmap
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from types import TracebackType

import numpy as np

from ooc_ties.dtypes import parse_dtype
from ooc_ties.errors import CheckpointFormatError, CheckpointNotFoundError
from ooc_ties.tensor import Tensor

__all__ = ["MAX_HEADER_BYTES", "SafetensorsFile", "StoredTensor", "pytorch_conversion"]

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""The largest header accepted (the ``safetensors`` package has the same limit)."""

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4

# madvise through ctypes rather than mmap.madvise: a foreign call releases the GIL, so one worker
# dropping pages does not stall the others. (MADV_POPULATE_READ before each block was tried too: on a
# 3 GB merge it moved time from page faults to the call itself and changed nothing in wall time.)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.madvise.restype = ctypes.c_int


def _address(mapping: mmap.mmap) -> int:
    """The address of a read-only map's first byte."""
    return int(np.frombuffer(mapping, np.uint8, count=1).ctypes.data)


def _madvise(address: int, length: int, advice: int) -> bool:
    return int(_libc.madvise(address, length, advice)) == 0


@dataclass(frozen=True, slots=True)
class StoredTensor(Tensor):
    """A tensor of a safetensors file, and where its bytes are."""

    path: Path
    """The file that holds it."""
    offset: int
    """Absolute byte offset of its first byte in the file."""


def _fail(path: Path, message: str) -> CheckpointFormatError:
    return CheckpointFormatError(f"{path}: {message}")


def pytorch_conversion(path: Path) -> str:
    """A one-line command that converts PyTorch weights to a safetensors file beside them: ``path`` is a
    file holding a state dict (``pytorch_model.bin``, ``model.pt``), or the
    ``pytorch_model.bin.index.json`` of ``.bin`` shards (they become one file). Every message that meets
    PyTorch weights gives this command; reading them directly is planned, and then only this changes."""
    if path.name.endswith(".index.json"):
        imports, files = "glob, ", f"sorted(glob.glob({json.dumps(str(path.parent / '*.bin'))}))"
        out = path.parent / "model.safetensors"
    else:
        imports, files = "", f"[{json.dumps(str(path))}]"
        out = path.with_suffix(".safetensors")
        if path.name == "pytorch_model.bin":
            out = path.with_name("model.safetensors")  # the folder then holds a Hugging Face model
    code = (
        f"import {imports}torch, safetensors.torch as st; "
        f"st.save_file({{k: v.contiguous().clone() for f in {files} "
        f'for k, v in torch.load(f, map_location="cpu", weights_only=True).items()}}, {json.dumps(str(out))})'
    )
    return f"python -c {shlex.quote(code)}"


def _pytorch_kind(head: bytes) -> str | None:
    """What PyTorch format a file that starts with ``head`` (at least 9 bytes, if the file has them) is
    in: ``torch.save``'s zip archive, or a pickle (its legacy format); ``None`` if neither.

    A safetensors header always starts with ``{`` at byte 8, so a real safetensors file whose length
    prefix happens to begin like a pickle (``0x80 0x02``: a 640-byte header) is never taken for one.
    """
    if head[8:9] == b"{":
        return None
    if head[:4] == b"PK\x03\x04":
        return "a PyTorch zip archive, as torch.save writes"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a PyTorch pickle, torch.save's legacy format"
    return None


def _parse_shape(path: Path, name: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _fail(path, f"tensor {name!r}: shape {value!r} is not a list of integers")
    if any(v < 0 for v in value):
        raise _fail(path, f"tensor {name!r}: shape {value!r} has a negative dimension")
    return tuple(value)


def _parse_offsets(path: Path, name: str, value: object) -> tuple[int, int]:
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )
    if not ok:
        raise _fail(path, f"tensor {name!r}: data_offsets {value!r} is not a pair of non-negative integers")
    begin, end = int(value[0]), int(value[1])  # type: ignore[index]
    if end < begin:
        raise _fail(path, f"tensor {name!r}: data_offsets {value!r} end before they begin")
    return begin, end


class SafetensorsFile:
    """One safetensors file, validated and memory-mapped read-only.

    ``tensors`` maps names to :class:`StoredTensor`; :meth:`read` returns zero-copy flat views whose
    memory belongs to the map and stays valid until :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise CheckpointFormatError(f"{self.path}: is a folder, not a safetensors file") from None
        except OSError as exc:
            raise CheckpointNotFoundError(f"{self.path}: cannot open ({exc.strerror})") from None
        try:
            stat = os.fstat(fd)
            if not S_ISREG(stat.st_mode):
                raise _fail(self.path, "is not a regular file")
            self.size = stat.st_size
            if self.size < 8:
                raise _fail(self.path, f"truncated: {self.size} bytes, too short for a safetensors header")
            try:
                self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except OSError as exc:
                raise _fail(self.path, f"cannot be memory-mapped ({exc.strerror})") from None
        finally:
            os.close(fd)
        try:
            self.metadata, self.tensors, self.data_start = self._parse_header()
        except BaseException:
            self._map.close()
            raise
        self._address = _address(self._map)
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            self._map.madvise(mmap.MADV_SEQUENTIAL)

    def _parse_header(self) -> tuple[dict[str, str], dict[str, StoredTensor], int]:
        path = self.path
        kind = _pytorch_kind(self._map[:9])
        if kind is not None:
            raise _fail(path, f"not a safetensors file ({kind}); convert it first: {pytorch_conversion(path)}")
        header_len = int.from_bytes(self._map[:8], "little")
        if header_len > self.size - 8:
            raise _fail(path, f"header length {header_len} runs past the end of the file ({self.size} bytes)")
        if header_len > MAX_HEADER_BYTES:
            raise _fail(path, f"header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit")
        raw = self._map[8 : 8 + header_len]
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _fail(path, f"header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise _fail(path, f"header is a JSON {type(header).__name__}, expected an object")
        data_start = 8 + header_len
        buffer_len = self.size - data_start

        metadata_raw = header.pop("__metadata__", None) or {}
        if not isinstance(metadata_raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata_raw.items()
        ):
            raise _fail(path, "__metadata__ is not a map of strings to strings")

        tensors: dict[str, StoredTensor] = {}
        spans: list[tuple[int, int, str]] = []
        for name, entry in header.items():
            if not isinstance(entry, dict):
                raise _fail(path, f"tensor {name!r}: header entry is not an object")
            missing = {"dtype", "shape", "data_offsets"} - entry.keys()
            if missing:
                raise _fail(path, f"tensor {name!r}: header entry lacks {', '.join(sorted(missing))}")
            dtype = parse_dtype(entry["dtype"], f"{path}: tensor {name!r}")
            shape = _parse_shape(path, name, entry["shape"])
            begin, end = _parse_offsets(path, name, entry["data_offsets"])
            expected = math.prod(shape) * dtype.itemsize
            if end - begin != expected:
                raise _fail(
                    path,
                    f"tensor {name!r}: data_offsets {[begin, end]} span {end - begin} bytes, "
                    f"but {dtype} {list(shape)} needs {expected}",
                )
            if end > buffer_len:
                raise _fail(
                    path,
                    f"truncated: tensor {name!r} needs data up to byte {data_start + end}, "
                    f"but the file has {self.size} bytes",
                )
            tensors[name] = StoredTensor(name, dtype, shape, path, data_start + begin)
            if end > begin:
                spans.append((begin, end, name))
        spans.sort()
        for (_, prev_end, prev_name), (begin, _, name) in itertools.pairwise(spans):
            if begin < prev_end:
                raise _fail(path, f"tensors {prev_name!r} and {name!r} overlap in the data buffer")
        return dict(metadata_raw), tensors, data_start

    def read(self, info: StoredTensor, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Flat elements ``[start, stop)`` of a tensor, as a read-only zero-copy view in storage dtype."""
        stop = info.numel if stop is None else stop
        item = info.dtype.itemsize
        return np.frombuffer(self._map, dtype=info.dtype.storage, count=stop - start, offset=info.offset + start * item)

    def _advise(self, info: StoredTensor, start: int, stop: int, advice: int) -> bool:
        """``madvise`` the whole pages holding elements ``[start, stop)``; False if the kernel refused."""
        item = info.dtype.itemsize
        first = info.offset + start * item
        last = min(info.offset + stop * item, self.size)
        begin = first // _PAGE * _PAGE  # a page shared with a neighbouring block is simply re-read
        end = -(-last // _PAGE) * _PAGE
        if end <= begin:
            return True
        return _madvise(self._address + begin, end - begin, advice)

    def release(self, info: StoredTensor, start: int, stop: int) -> None:
        """Tell the kernel the pages of elements ``[start, stop)`` are not needed again soon.

        The pages stay in the page cache; they only leave this process's resident set, so a long merge
        does not look (to ``ps`` or a cgroup) as if it held every byte it has read.
        """
        self._advise(info, start, stop, _MADV_DONTNEED)

    def close(self) -> None:
        """Unmap the file; a view still alive keeps the map until it is garbage-collected."""
        try:
            self._map.close()
        except BufferError:
            pass

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SafetensorsFile({str(self.path)!r}, {len(self.tensors)} tensors)"
