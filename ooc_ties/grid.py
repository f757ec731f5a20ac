"""A grid of merges: many merges of the same inputs, each a point with its own options and output.

A grid is spanned by list-valued options (:data:`AXES`: density, lambda, weights, method, scope, seed,
gamma, epsilon), crossed (every combination) or zipped (the i-th values together), or given as a list
of options (a list of mergekit configurations). Each point is written to its own folder or Zarr group
under the grid's output folder, named after the options that vary (``ties-d0.2-l1.0``), and
``grid.json`` lists the points (:func:`grid_document`). :func:`ooc_ties.merge.merge_grid` runs it.
"""

from __future__ import annotations

import enum
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ooc_ties.config import MergeOptions
from ooc_ties.errors import OptionError

__all__ = ["AXES", "GRID_NAME", "GRID_VERSION", "GridMode", "GridPoint", "expand_grid", "grid_document", "name_points"]

GRID_NAME = "grid.json"
"""The file in a grid's output folder that lists its points."""
GRID_VERSION = 1
"""The version of ``grid.json``'s schema (docs/grid.md)."""

AXES: dict[str, str] = {
    "method": "",
    "density": "d",
    "lam": "l",
    "weights": "w",
    "scope": "",
    "seed": "seed",
    "gamma": "g",
    "epsilon": "e",
}
"""The options a grid may span (``MergeOptions`` field names), and the tag each puts in a point's name
(the method and the scope are named by their values)."""


class GridMode(enum.Enum):
    """How the lists of a grid's axes combine."""

    CROSS = "cross"
    """Every combination (the product of the lists)."""
    ZIP = "zip"
    """The i-th value of every list together (the lists have one length)."""


@dataclass(frozen=True, slots=True)
class GridPoint:
    """One merge of a grid."""

    name: str
    """Its output's name under the grid's folder (a folder, or ``name.zarr``)."""
    options: MergeOptions
    """Its options."""
    chat_template: str | None = None
    """Its chat template (a configuration's ``chat_template``)."""


def parse_mode(text: str | GridMode) -> GridMode:
    if isinstance(text, GridMode):
        return text
    try:
        return GridMode(text)
    except ValueError:
        raise OptionError(f'grid mode "{text}" is invalid (expected one of: "cross", "zip")') from None


def expand_grid(
    template: MergeOptions,
    axes: Mapping[str, Sequence[Any]],
    mode: GridMode | str = GridMode.CROSS,
    common: Mapping[str, Any] | None = None,
) -> tuple[GridPoint, ...]:
    """The points of the grid that ``axes`` (option name: its values) span over ``template``.

    Values are what ``MergeOptions.with_`` takes (a method by name, a density, a tuple of per-model
    densities, ...); ``common`` changes every point alike, in the same ``with_`` (so that an explicit
    ``normalize`` stays when the method changes). Each point's options are checked as a merge's are.
    Names come from :func:`name_points`.
    """
    mode = parse_mode(mode)
    for axis, values in axes.items():
        if axis not in AXES:
            allowed = ", ".join(f'"{a}"' for a in AXES)
            raise OptionError(f'grid axis "{axis}" is invalid (expected one of: {allowed})')
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise OptionError(f"grid axis {axis!r}: expected a non-empty list of values, got {values!r}")
    names = list(axes)
    if mode is GridMode.ZIP:
        lengths = {axis: len(values) for axis, values in axes.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{axis} has {n}" for axis, n in lengths.items())
            raise OptionError(f"--grid zip pairs lists of one length, but {shown}")
        combos: list[tuple[Any, ...]] = list(zip(*axes.values(), strict=True))
    else:
        combos = list(itertools.product(*axes.values()))
    options = [template.with_(**{**(common or {}), **dict(zip(names, combo, strict=True))}) for combo in combos]
    return tuple(GridPoint(name, o) for name, o in zip(name_points(options), options, strict=True))


def _value(axis: str, options: MergeOptions) -> str:
    value = getattr(options, axis)
    if axis == "method":
        return str(options.method.name)
    if axis == "scope":
        return str(options.scope.value)
    if value is None:
        return "default"
    if isinstance(value, tuple):  # one per model; a single one where they are all the same
        return _number(value[0]) if len(set(value)) == 1 else "_".join(_number(v) for v in value)
    return _number(value)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def name_points(options: Sequence[MergeOptions]) -> list[str]:
    """Names for the merges ``options``: the method, then each grid axis whose value differs among them,
    by its tag (``ties-d0.2-l1.0``, ``dare_ties-d0.5-seed1``; per-model values joined by ``_``, one
    where they are all the same); made unique by a count where the options agree on every axis
    (``-2``, ``-3``)."""
    varying = [a for a in AXES if a != "method" and len({_value(a, o) for o in options}) > 1]
    names: list[str] = []
    seen: dict[str, int] = {}
    for o in options:
        parts = [_value("method", o)] + [f"{AXES[a]}{_value(a, o)}" for a in varying]
        name = re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(parts))
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return names


def grid_document(points: Sequence[GridPoint], outputs: Sequence[str], status: Sequence[str]) -> dict[str, Any]:
    """The content of ``grid.json``: every point's name, output (relative to the grid's folder), options
    (as its recipe states them) and status (``pending``, ``done``)."""
    return {
        "format": "ooc-ties-grid",
        "version": GRID_VERSION,
        "points": [
            {"name": p.name, "output": out, "status": st, "options": p.options.to_json()}
            for p, out, st in zip(points, outputs, status, strict=True)
        ],
    }
