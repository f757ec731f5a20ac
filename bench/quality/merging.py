"""Merging, only through the ``ooc-ties`` command line: one process per grid of merges."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Point:
    """One merged model of a grid: its folder and the options its recipe states."""

    name: str
    folder: Path
    method: str
    lam: float
    density: float
    weights: tuple[float, ...]


@dataclass(frozen=True)
class GridCall:
    """One ``ooc-ties merge`` invocation: a method, a preset and comma lists spanning a grid."""

    label: str
    method: str
    preset: str = "paper"
    lambdas: Sequence[float] = (1.0,)
    densities: Sequence[float] | None = None
    weights: Sequence[Sequence[float]] | None = None


def _cli() -> list[str]:
    exe = shutil.which("ooc-ties", path=str(Path(sys.executable).parent)) or shutil.which("ooc-ties")
    if exe is None:
        raise RuntimeError("the ooc-ties command is not installed in this environment (pip install -e '.[quality]')")
    return [exe]


def _join(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def command(call: GridCall, base: Path, finetuned: Sequence[Path], out: Path) -> list[str]:
    """The exact command line of ``call``."""
    cmd = [*_cli(), "merge", "-q", "--base", str(base), *map(str, finetuned), "-o", str(out)]
    cmd += ["--method", call.method, "--preset", call.preset, "--threads", "1", "--memory-budget", "256MiB"]
    if call.method != "linear":
        cmd += ["--lambda", _join(call.lambdas)]
    if call.densities is not None:
        cmd += ["--density", _join(call.densities)]
    for w in call.weights or ():
        cmd += ["--weights", _join(w)]
    return cmd


def _point(entry: dict[str, Any], out: Path, n_models: int) -> Point:
    opts = entry["options"]
    weights = opts.get("weights") or [1.0] * n_models
    density = opts.get("density", 1.0)
    if isinstance(density, list):
        density = density[0]
    return Point(
        name=entry["name"],
        folder=out / entry["output"],
        method=opts["method"],
        lam=float(opts.get("lam", opts.get("lambda", 1.0))),
        density=float(density if density is not None else 1.0),
        weights=tuple(float(w) for w in weights),
    )


def run_grid(call: GridCall, base: Path, finetuned: Sequence[Path], out: Path) -> tuple[list[Point], float]:
    """Run one grid through the CLI; its points (read back from ``OUT/grid.json``) and its wall time."""
    if out.exists():
        shutil.rmtree(out)
    cmd = command(call, base, finetuned, out)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"ooc-ties failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    points = _read_points(out, len(finetuned))
    log.info("%s: %d merges in %.1f s", call.label, len(points), seconds)
    return points, seconds


def _read_points(out: Path, n_models: int) -> list[Point]:
    grid = out / "grid.json"
    if not grid.is_file():  # a grid of one point is a single merge: OUT is the model folder
        recipe = json.loads((out / "ooc_ties_recipe.json").read_text())
        return [_point({"name": out.name, "output": ".", "options": recipe["options"]}, out, n_models)]
    doc = json.loads(grid.read_text())
    points = [_point(entry, out, n_models) for entry in doc["points"]]
    if any(entry["status"] != "done" for entry in doc["points"]):
        raise RuntimeError(f"{grid}: not every point is done")
    return points
