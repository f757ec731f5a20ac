"""What the figures were measured on: the machine, the ooc-ties executable, its sources and git state.

``importlib.util.find_spec`` locates the ``ooc_ties`` package without importing it: the benchmark process
stays small, which matters because a child's ``ru_maxrss`` starts from the RSS of the process it was forked
from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _package_root() -> Path | None:
    spec = importlib.util.find_spec("ooc_ties")  # the package the children import (PYTHONPATH may override)
    return Path(spec.origin).parent if spec is not None and spec.origin is not None else None


def source_digest() -> str | None:
    """A digest of the ooc_ties package's Python sources (the editable install runs them as they are)."""
    root = _package_root()
    if root is None:
        return None
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _git(env: dict[str, Any]) -> None:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
        env["git_head"] = head.stdout.strip()
        env["git_dirty"] = bool(dirty.stdout.strip())
    except OSError:
        pass


def environment(ooc: str) -> dict[str, Any]:
    root = _package_root()
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "ooc_ties": ooc,
        "ooc_ties_package": str(root) if root is not None else None,
        "pythonpath": os.environ.get("PYTHONPATH"),
    }
    try:
        with open("/proc/meminfo") as f:
            env["mem_total_kib"] = int(f.readline().split()[1])
    except OSError:
        pass
    try:
        out = subprocess.run([ooc, "--version"], capture_output=True, text=True, timeout=60)
        env["ooc_ties_version"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    _git(env)
    return env
