"""The resume journal: what an unfinished merge has done, kept beside its partial output.

It lives in the staging directory's state folder (:data:`~ooc_ties.io.staging.STATE_DIR`):

- ``header.json``: what the merge is (version, input identity, options, block size, output layout).
  A resume must match it exactly, or it is refused;
- ``pass1.json`` and ``quotas.npy``: the pass-1 results, written once (to a temporary name, then
  renamed), so a resumed merge skips pass 1;
- ``blocks.log``: one line per finished pass-2 block, appended after the block's data was written:
  ``b <ordinal> <#S>0> <#S<0> <open> <kept_1> ... <kept_n>`` (its votes, which settle the majority
  sign, and how many values of each model it kept, which pass 2 checks against pass 1's counts),
  ``r <ordinal>`` for
  a block merged again with the settled sign, and ``complete`` once the output is whole.

A block is journaled only after its write returned, so after the process dies (``SIGKILL``, OOM) every
journaled block is in the output file: the page cache keeps it. Surviving a power failure also needs
the data on disk before the journal line: with ``durable`` (``--fsync``) the journal waits for the
output to sync and syncs itself, at most every :data:`SYNC_INTERVAL` seconds. A torn last line (the
process died inside ``write``) is ignored, and its block is merged again.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ooc_ties._version import __version__
from ooc_ties.errors import OptionError
from ooc_ties.identity import InputsIdentity
from ooc_ties.pass1.run import Pass1Result
from ooc_ties.pass1.thresholds import Thresholds
from ooc_ties.plan import MergePlan

__all__ = ["SYNC_INTERVAL", "Journal", "check_resumable", "journal_header", "read_header"]

logger = logging.getLogger(__name__)

SYNC_INTERVAL = 2.0
"""Seconds between journal flushes when the merge is durable."""

_FORMAT = "ooc-ties-journal/2"
_HEADER, _PASS1, _QUOTAS, _BLOCKS = "header.json", "pass1.json", "quotas.npy", "blocks.log"


def journal_header(plan: MergePlan, inputs: InputsIdentity | None, output_format: str) -> dict[str, Any]:
    """What identifies a merge: a resume is allowed only into a journal with this header (the same
    inputs, see :mod:`ooc_ties.identity`, and the same options and layout)."""
    return {
        "format": _FORMAT,
        "version": __version__,
        "inputs": inputs.to_json() if inputs is not None else None,
        "options": plan.options.to_json(),
        "block_elements": plan.block_elements,
        "output": output_format,
        "shards": [[s.file_name, len(s.tensors)] for s in plan.shards],
        "tensors": [[t.name, list(t.shape), t.out_dtype.code] for t in plan.tensors],
    }


def read_header(state: Path) -> dict[str, Any] | None:
    """The header of a journal, or ``None`` if there is none (the merge died before writing it)."""
    try:
        data = json.loads((state / _HEADER).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _mismatch(theirs: dict[str, Any], ours: dict[str, Any]) -> str | None:
    """Why a journal does not belong to this merge, in words; ``None`` if it does."""
    if theirs.get("format") != ours["format"] or theirs.get("version") != ours["version"]:
        return f"it was started by ooc-ties {theirs.get('version')!r}, this is {ours['version']!r}"
    if ours["inputs"] is None:
        return "an input is in memory or on a remote store, so nothing tells whether it changed"
    try:
        why = InputsIdentity.from_json(theirs.get("inputs")).mismatch(InputsIdentity.from_json(ours["inputs"]))
    except (KeyError, TypeError, ValueError):
        why = "its journal does not say which inputs it read"
    if why is not None:
        return f"it was merging other inputs: {why}"
    if theirs.get("options") != ours["options"]:
        old, new = theirs.get("options") or {}, ours["options"]
        diff = ", ".join(f"{k} {old.get(k)!r} (now {new[k]!r})" for k in new if old.get(k) != new[k])
        return f"it was started with other options: {diff}"
    if theirs.get("output") != ours["output"]:
        return f"it was writing {theirs.get('output')} output, this merge writes {ours['output']}"
    if theirs.get("block_elements") != ours["block_elements"]:
        return (
            f"it used blocks of {theirs.get('block_elements')} elements, this merge {ours['block_elements']} "
            "(give a --memory-budget at least as large as the first run's)"
        )
    if theirs.get("shards") != ours["shards"]:
        return "it laid the output out in other shards (give the same --shard-size)"
    if theirs.get("tensors") != ours["tensors"]:
        return "it was merging other tensors, shapes or output dtypes"
    return None


def check_resumable(theirs: dict[str, Any], header: dict[str, Any], where: Path) -> None:
    """Refuse to resume the merge left at ``where`` (journal header ``theirs``) unless it is this merge."""
    why = _mismatch(theirs, header)
    if why is not None:
        raise OptionError(f"cannot resume the merge left at {where}: {why}")


class Journal:
    """An open journal: records finished blocks from any thread."""

    def __init__(self, state: Path, header: dict[str, Any], *, durable: bool, sync: Callable[[], None]) -> None:
        self.state = state
        self.header = header
        self.durable = durable
        self._sync_output = sync
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._last_flush = time.monotonic()
        self._fd = -1

    @classmethod
    def start(cls, state: Path, header: dict[str, Any], *, durable: bool, sync: Callable[[], None]) -> Journal:
        """A new journal (any old one in ``state`` is replaced)."""
        for name in (_PASS1, _QUOTAS, _BLOCKS):
            (state / name).unlink(missing_ok=True)
        _write_atomically(state / _HEADER, json.dumps(header, indent=1).encode(), durable)
        journal = cls(state, header, durable=durable, sync=sync)
        journal._open_log()
        return journal

    @classmethod
    def reopen(cls, state: Path, header: dict[str, Any], *, durable: bool, sync: Callable[[], None]) -> Journal:
        """The journal of an interrupted merge, to go on appending (its header was checked with
        :func:`check_resumable`)."""
        journal = cls(state, header, durable=durable, sync=sync)
        journal._open_log()
        return journal

    def _open_log(self) -> None:
        self._fd = os.open(self.state / _BLOCKS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    # pass 1

    def save_pass1(self, pass1: Pass1Result) -> None:
        """Keep the pass-1 results (once, atomically)."""
        record = {"thresholds": pass1.thresholds.to_json(), "guessed": sorted(pass1.guessed)}
        quotas = io.BytesIO()
        np.save(quotas, pass1.quotas)
        _write_atomically(self.state / _QUOTAS, quotas.getvalue(), self.durable)
        _write_atomically(self.state / _PASS1, json.dumps(record).encode(), self.durable)

    def load_pass1(self) -> Pass1Result | None:
        """The pass-1 results of the interrupted merge, if it got that far."""
        try:
            record = json.loads((self.state / _PASS1).read_text(encoding="utf-8"))
            quotas = np.load(self.state / _QUOTAS)
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, ValueError):
            return None
        thresholds = Thresholds.from_json(record["thresholds"], str(self.state / _PASS1))
        return Pass1Result(thresholds, quotas, 0, frozenset(record["guessed"]))

    # pass 2

    def finished(self, n_models: int) -> tuple[dict[int, tuple[int, ...]], set[int], bool]:
        """Blocks merged (with their counts: the three votes, then the values kept of each of the
        ``n_models`` models), blocks merged again, and whether the output is complete."""
        merged: dict[int, tuple[int, ...]] = {}
        redone: set[int] = set()
        complete = False
        try:
            text = (self.state / _BLOCKS).read_bytes().decode("ascii", errors="replace")
        except FileNotFoundError:
            return merged, redone, complete
        for line in text.split("\n")[:-1]:  # the part after the last newline is torn
            parts = line.split()
            try:
                if parts[0] == "b" and len(parts) == 5 + n_models:
                    merged[int(parts[1])] = tuple(int(p) for p in parts[2:])
                elif parts[0] == "r" and len(parts) == 2:
                    redone.add(int(parts[1]))
                elif parts == ["complete"]:
                    complete = True
            except (IndexError, ValueError):
                continue
        return merged, redone, complete

    def merged(self, ordinal: int, votes: np.ndarray, kept: np.ndarray) -> None:
        """Block ``ordinal`` is written; ``votes`` are its (#S>0, #S<0, open) counts, ``kept`` the values
        it kept of each model."""
        counts = " ".join(str(int(c)) for c in (*votes, *kept))
        self._append(f"b {ordinal} {counts}\n")

    def redone(self, ordinal: int) -> None:
        """Block ``ordinal`` is written again with the settled majority sign."""
        self._append(f"r {ordinal}\n")

    def complete(self) -> None:
        """Every block and side file is written; only publishing is left."""
        self._append("complete\n")
        self.flush()

    def _append(self, line: str) -> None:
        with self._lock:
            self._pending.append(line)
            if not self.durable or time.monotonic() - self._last_flush >= SYNC_INTERVAL:
                self._flush_locked()

    def flush(self) -> None:
        """Write every pending line (after syncing the output, when durable)."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending or self._fd < 0:
            return
        if self.durable:
            self._sync_output()
        data = "".join(self._pending).encode("ascii")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        if self.durable:
            os.fsync(self._fd)
        self._pending.clear()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1


def _write_atomically(path: Path, data: bytes, durable: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path)
