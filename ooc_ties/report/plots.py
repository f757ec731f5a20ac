"""The report's plots, drawn from ``report.json``'s content with matplotlib (the optional ``[plot]`` extra).

Each plot is a PNG named in :data:`PLOTS`; :func:`draw_plots` returns the names it wrote, and raises
``ModuleNotFoundError`` when matplotlib is missing (the caller writes the data files anyway).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["PLOTS", "draw_plots"]

PLOTS = {
    "conflicts_by_layer.png": "Conflict rate by layer and module type",
    "density_curves.png": "Share of each task vector's mass a trim keeps, by density",
    "similarity.png": "Cosine similarity of the task vectors and of their signs",
    "models_kept.png": "How many models keep each value",
    "top_conflicts.png": "The tensors with the most sign conflicts",
}
"""File name: title of every plot."""

TOP = 20
"""Tensors in the top-conflicts plot."""


def draw_plots(document: dict[str, Any], folder: Path) -> list[str]:
    """Draw every plot the document has data for into ``folder``; return the file names written.

    The figures are drawn on matplotlib's Agg canvas directly, without ``pyplot``: a library call
    leaves the caller's backend (a notebook's, say) and pyplot's global figures alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def subplots(*grid: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
        figure = Figure(figsize=figsize)
        FigureCanvasAgg(figure)
        return figure, figure.subplots(*grid)

    written = []
    for name, draw in (
        ("conflicts_by_layer.png", _conflicts_by_layer),
        ("density_curves.png", _density_curves),
        ("similarity.png", _similarity),
        ("models_kept.png", _models_kept),
        ("top_conflicts.png", _top_conflicts),
    ):
        figure = draw(document, subplots)
        if figure is None:
            continue
        figure.suptitle(PLOTS[name])
        figure.savefig(folder / name, dpi=110, bbox_inches="tight", metadata={"Software": None})
        written.append(name)
    return written


def _labels(document: dict[str, Any]) -> list[str]:
    return [f"ft{t + 1}" for t in range(len(document["inputs"]["models"]))]


def _conflicts_by_layer(document: dict[str, Any], subplots: Any) -> Any:
    layers = document["layers"]
    if not layers:
        return None
    modules = sorted({m for layer in layers for m in layer["modules"]})
    grid = [[layer["modules"].get(m, {}).get("conflict_rate") for m in modules] for layer in layers]
    values = [[math.nan if v is None else v for v in row] for row in grid]
    figure, axes = subplots(figsize=(1.0 + 0.6 * len(modules), 1.5 + 0.25 * len(layers)))
    image = axes.imshow(values, aspect="auto", cmap="magma", interpolation="nearest")
    axes.set_xticks(range(len(modules)), modules, rotation=45, ha="right")
    step = max(1, len(layers) // 24)
    axes.set_yticks(range(0, len(layers), step), [str(layers[i]["layer"]) for i in range(0, len(layers), step)])
    axes.set_ylabel("layer")
    figure.colorbar(image, ax=axes, label="elements whose kept values disagree in sign")
    return figure


def _density_curves(document: dict[str, Any], subplots: Any) -> Any:
    curves = document["density_curves"]
    if curves is None:
        return None
    figure, axes = subplots(figsize=(6.5, 4.2))
    densities = curves["densities"]
    for label, model in zip(_labels(document), curves["models"], strict=True):
        (line,) = axes.plot(densities, model["l1_share"], label=f"{label}: L1")
        axes.plot(densities, model["l2_share"], linestyle="--", color=line.get_color(), label=f"{label}: L2 squared")
    density = document["options"].get("density")
    for d in density if isinstance(density, list) else [density]:
        if isinstance(d, float) and d < 1:
            axes.axvline(d, color="grey", linewidth=0.8)
    axes.set_xlabel("density (share of values kept)")
    axes.set_ylabel("share of the task vector kept")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def _similarity(document: dict[str, Any], subplots: Any) -> Any:
    whole = document["whole"]
    labels = _labels(document)
    figure, panes = subplots(1, 2, figsize=(3.2 + 1.2 * len(labels), 2.0 + 0.6 * len(labels)))
    for axes, key, title in ((panes[0], "cosine", "task vectors"), (panes[1], "sign_cosine", "signs")):
        matrix = [[math.nan if v is None else v for v in row] for row in whole[key]]
        axes.imshow(matrix, vmin=-1, vmax=1, cmap="coolwarm")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                axes.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize="small")
        axes.set_xticks(range(len(labels)), labels)
        axes.set_yticks(range(len(labels)), labels)
        axes.set_title(title)
    return figure


def _models_kept(document: dict[str, Any], subplots: Any) -> Any:
    counts = document["whole"]["models_kept"]
    total = max(1, sum(counts))
    figure, axes = subplots(figsize=(5.0, 3.2))
    axes.bar(range(len(counts)), [c / total for c in counts], color="tab:blue")
    axes.set_xticks(range(len(counts)))
    axes.set_xlabel("models keeping the value")
    axes.set_ylabel("share of elements")
    return figure


def _top_conflicts(document: dict[str, Any], subplots: Any) -> Any:
    rows = [r for r in document["tensors"] if r["conflict_rate"] is not None]
    rows = sorted(rows, key=lambda r: (-r["conflict_rate"], r["name"]))[:TOP]
    if not rows:
        return None
    figure, axes = subplots(figsize=(7.0, 1.0 + 0.28 * len(rows)))
    axes.barh(range(len(rows)), [r["conflict_rate"] for r in rows], color="tab:red")
    axes.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize="small")
    axes.invert_yaxis()
    axes.set_xlabel("elements whose kept values disagree in sign")
    return figure
