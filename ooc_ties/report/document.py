"""The interference report as a document: ``report.json`` (schema version 1) and ``tensors.csv``.

Everything here is computed from the collected per-tensor statistics (:mod:`ooc_ties.report.collect`),
pass 1's thresholds and, for the density curves, the magnitude histograms pass 2 counted over every
8th element of each tensor; no tensor data is read.
docs/report.md documents every field.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ooc_ties._version import __version__
from ooc_ties.blocks import GLOBAL
from ooc_ties.pass1.thresholds import Thresholds
from ooc_ties.plan import MergePlan
from ooc_ties.report.collect import TensorStats

__all__ = ["DENSITIES", "REPORT_VERSION", "density_curves", "report_document", "tensor_rows", "tensors_csv"]

REPORT_VERSION = 1
"""The version of ``report.json``'s schema."""
DENSITIES = tuple(round(0.01 * k, 2) for k in range(1, 101))
"""The densities of the density curves: 0.01 to 1 in steps of 0.01."""

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The layer index in a tensor name (``model.layers.3.mlp.up_proj.weight``: 3), if any."""
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


def module_of(name: str) -> str:
    """The module type of a tensor (``up_proj``, ``input_layernorm``, ``embed_tokens``, ``lm_head``)."""
    parts = name.split(".")
    if len(parts) > 1 and parts[-1] in ("weight", "bias"):
        return parts[-2]
    return parts[-1]


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _cosines(dots: np.ndarray) -> list[list[float | None]]:
    diag = np.sqrt(np.diag(dots).astype(np.float64))
    n = len(diag)
    return [[_ratio(float(dots[i, j]), float(diag[i] * diag[j])) for j in range(n)] for i in range(n)]


def _interference(stats: Sequence[TensorStats], n: int) -> dict[str, Any]:
    """The interference figures of a set of tensors (a tensor, a layer, the whole model)."""
    size = sum(s.size for s in stats)
    models_kept = sum((s.models_kept for s in stats), np.zeros(n + 1, np.int64))
    kept_mass = float(sum(float(s.kept_l1.sum()) for s in stats))
    discarded = float(sum(s.discarded for s in stats))
    conflicts = sum(s.conflicts for s in stats)
    some_kept = size - int(models_kept[0])
    dots = sum((s.dots for s in stats), np.zeros((n, n)))
    signs = sum((s.signs for s in stats), np.zeros((n, n), np.int64))
    return {
        "elements": size,
        "models_kept": models_kept.tolist(),
        "conflicts": conflicts,
        "conflict_rate": _ratio(conflicts, size),
        "conflict_rate_of_kept": _ratio(conflicts, some_kept),
        "open": sum(s.open for s in stats),
        "nothing_kept": sum(s.nothing_kept for s in stats),
        "kept_mass": kept_mass,
        "discarded_mass": discarded,
        "discarded_share": _ratio(discarded, kept_mass),
        "cosine": _cosines(dots),
        "sign_cosine": _cosines(signs),
    }


def _models(
    stats: Sequence[TensorStats], n: int, labels: Sequence[str], thresholds: Thresholds
) -> list[dict[str, Any]]:
    size = sum(s.size for s in stats)
    out = []
    for t in range(n):
        l1 = float(sum(float(s.l1[t]) for s in stats))
        kept_l1 = float(sum(float(s.kept_l1[t]) for s in stats))
        kept = int(sum(int(s.kept[t]) for s in stats))
        wins = int(sum(int(s.wins[t]) for s in stats))
        whole = thresholds.groups.get(GLOBAL)
        out.append(
            {
                "label": labels[t],
                "l1": l1,
                "l2": math.sqrt(float(sum(float(s.l2sq[t]) for s in stats))),
                "threshold": whole[t].value if whole else None,
                "kept": kept,
                "kept_fraction": _ratio(kept, size),
                "kept_l1_share": _ratio(kept_l1, l1),
                "wins": wins,
                "win_rate": _ratio(wins, kept),
            }
        )
    return out


def tensor_rows(stats: Sequence[TensorStats], thresholds: Thresholds) -> list[dict[str, Any]]:
    """One entry per tensor: its figures and, per model, its task vector and trim."""
    rows = []
    for s in stats:
        n = len(s.l1)
        groups = thresholds.groups.get(thresholds.key(s.name), ())
        row: dict[str, Any] = {"name": s.name, "layer": layer_of(s.name), "module": module_of(s.name)}
        row.update(_interference([s], n))
        row["models"] = [
            {
                "l1": float(s.l1[t]),
                "l2": math.sqrt(float(s.l2sq[t])),
                "threshold": groups[t].value if groups else None,
                "kept": int(s.kept[t]),
                "kept_fraction": _ratio(int(s.kept[t]), s.size),
                "kept_l1_share": _ratio(float(s.kept_l1[t]), float(s.l1[t])),
                "wins": int(s.wins[t]),
            }
            for t in range(n)
        ]
        rows.append(row)
    return rows


def density_curves(magnitudes: np.ndarray | None) -> dict[str, Any] | None:
    """Per model, the share of the task vector's L1 mass and of its squared L2 norm that a trim at each
    of :data:`DENSITIES` keeps, from counts of ``|tau|`` per high-bits bin (``(n, 65536)``, of every
    8th element; each bin's values taken at its middle, the bin the cut falls in split pro rata)."""
    if magnitudes is None:
        return None
    bins = np.arange(magnitudes.shape[1], dtype=np.uint32)
    with np.errstate(invalid="ignore"):  # (the bins of NaN patterns: never counted)
        middle = ((bins << 16) | np.uint32(0x8000)).view(np.float32).astype(np.float64)
    middle[~np.isfinite(middle)] = 0.0
    curves = []
    for counts in magnitudes:
        order = np.argsort(-middle, kind="stable")  # largest magnitudes first
        c = counts[order]
        v = middle[order]
        total = float(c.sum())
        cum = np.cumsum(c)
        l1 = np.cumsum(c * v)
        l2 = np.cumsum(c * v * v)
        l1_total, l2_total = float(l1[-1]) if len(l1) else 0.0, float(l2[-1]) if len(l2) else 0.0
        l1_share, l2_share = [], []
        for d in DENSITIES:
            k = d * total
            i = int(np.searchsorted(cum, k))
            if i >= len(cum):
                a1, a2 = l1_total, l2_total
            else:
                before = float(cum[i] - c[i])
                part = (k - before) / float(c[i]) if c[i] else 0.0
                a1 = float(l1[i] - c[i] * v[i]) + part * float(c[i] * v[i])
                a2 = float(l2[i] - c[i] * v[i] * v[i]) + part * float(c[i] * v[i] * v[i])
            l1_share.append(_ratio(a1, l1_total))
            l2_share.append(_ratio(a2, l2_total))
        curves.append({"l1_share": l1_share, "l2_share": l2_share})
    return {"densities": list(DENSITIES), "models": curves}


def report_document(
    plan: MergePlan,
    stats: Sequence[TensorStats],
    thresholds: Thresholds,
    labels: Sequence[str],
    base_label: str,
    magnitudes: np.ndarray | None,
) -> dict[str, Any]:
    """The content of ``report.json``."""
    n = plan.n_models
    layers: dict[int, list[TensorStats]] = {}
    for s in stats:
        layer = layer_of(s.name)
        if layer is not None:
            layers.setdefault(layer, []).append(s)
    layer_entries = []
    for layer in sorted(layers):
        entry: dict[str, Any] = {"layer": layer}
        entry.update(_interference(layers[layer], n))
        modules: dict[str, list[TensorStats]] = {}
        for s in layers[layer]:
            modules.setdefault(module_of(s.name), []).append(s)
        entry["modules"] = {
            m: {"conflict_rate": _interference(ms, n)["conflict_rate"], "elements": sum(x.size for x in ms)}
            for m, ms in sorted(modules.items())
        }
        layer_entries.append(entry)
    return {
        "format": "ooc-ties-report",
        "version": REPORT_VERSION,
        "ooc_ties": __version__,
        "options": plan.options.to_json(),
        "inputs": {"base": base_label, "models": list(labels)},
        "models": _models(stats, n, labels, thresholds),
        "majority": {key or "model": sign for key, sign in thresholds.majority.items()},
        "whole": _interference(stats, n),
        "layers": layer_entries,
        "tensors": tensor_rows(stats, thresholds),
        "density_curves": density_curves(magnitudes),
    }


def tensors_csv(document: dict[str, Any]) -> str:
    """``tensors.csv``: one row per tensor (the figures of ``report.json``'s ``tensors``, per model
    suffixed ``_1``, ``_2``, ...)."""
    n = len(document["inputs"]["models"])
    columns = ["name", "layer", "module", "elements", "conflicts", "conflict_rate", "open", "nothing_kept"]
    columns += ["kept_mass", "discarded_mass", "discarded_share"]
    per_model = ["l1", "l2", "threshold", "kept", "kept_fraction", "kept_l1_share", "wins"]
    header = columns + [f"{c}_{t + 1}" for t in range(n) for c in per_model]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in document["tensors"]:
        values = [row[c] for c in columns]
        values += [m[c] for m in row["models"] for c in per_model]
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in values])
    return buffer.getvalue()
