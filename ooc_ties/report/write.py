"""Writing a report folder: ``report.json``, ``tensors.csv``, the plots and ``index.html``.

The folder is built under a hidden name beside its destination and renamed into place when complete
(:class:`~ooc_ties.io.staging.StagedDirectory`), as a merge's output is. Without matplotlib the data
files are still written, and the returned note says how to get the plots.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ooc_ties.io.staging import StagedDirectory
from ooc_ties.report.document import tensors_csv
from ooc_ties.report.plots import PLOTS, draw_plots

__all__ = ["REPORT_FILES", "write_report"]

logger = logging.getLogger(__name__)

REPORT_FILES = ("report.json", "tensors.csv", "index.html")
"""The data files every report has (the plots come on top, with matplotlib)."""
PLOT_HINT = "pip install 'ooc-ties[plot]' (matplotlib) for the plots"


def write_report(document: dict[str, Any], destination: Path, *, overwrite: bool = False) -> tuple[Path, str | None]:
    """Write the report folder at ``destination``; return it and a note when the plots are missing."""
    staged = StagedDirectory(destination, overwrite=overwrite)
    try:
        folder = staged.path
        (folder / "report.json").write_text(json.dumps(document, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        (folder / "tensors.csv").write_text(tensors_csv(document), encoding="utf-8")
        note = None
        try:
            plots = draw_plots(document, folder)
        except ModuleNotFoundError as error:
            if error.name != "matplotlib":
                raise
            plots, note = [], f"plots not drawn: matplotlib is not installed ({PLOT_HINT})"
            logger.warning("%s", note)
        (folder / "index.html").write_text(_index(document, plots, note), encoding="utf-8")
        published = staged.commit()
    except BaseException:
        staged.abort()
        raise
    return published, note


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_number(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _index(document: dict[str, Any], plots: Sequence[str], note: str | None) -> str:
    """A page that shows the report from disk (no server, no script)."""
    whole = document["whole"]
    options = document["options"]
    models = document["models"]
    summary = _table(
        ["elements", "conflicts", "conflict rate", "open (zero votes)", "nothing kept", "kept mass discarded"],
        [
            [
                whole["elements"],
                whole["conflicts"],
                whole["conflict_rate"],
                whole["open"],
                whole["nothing_kept"],
                whole["discarded_share"],
            ]
        ],
    )
    per_model = _table(
        ["model", "L1", "L2", "threshold", "kept", "kept share", "L1 kept", "wins", "win rate"],
        [
            [
                f"ft{t + 1}: {m['label']}",
                m["l1"],
                m["l2"],
                m["threshold"],
                m["kept"],
                m["kept_fraction"],
                m["kept_l1_share"],
                m["wins"],
                m["win_rate"],
            ]
            for t, m in enumerate(models)
        ],
    )
    kept = whole["models_kept"]
    histogram = _table([f"{k} models" for k in range(len(kept))], [kept])
    figures = "".join(
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(PLOTS[name])}">'
        f"<figcaption>{html.escape(PLOTS[name])}</figcaption></figure>"
        for name in plots
    )
    missing = f"<p class='note'>{html.escape(note)}</p>" if note else ""
    described = ", ".join(f"{k} {_number(v)}" for k, v in options.items() if v is not None and k != "per_tensor")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ooc-ties interference report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 72em; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}
th {{ background: #f4f4f4; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
img {{ max-width: 100%; }}
.note {{ color: #a40; }}
</style></head><body>
<h1>Interference report</h1>
<p>Base {html.escape(document["inputs"]["base"])}; options: {described}.
Written by ooc-ties {html.escape(document["ooc_ties"])}; the data: <a href="report.json">report.json</a>,
<a href="tensors.csv">tensors.csv</a> (one row per tensor).</p>
<h2>The whole model</h2>{summary}
<h2>Models kept per element</h2>{histogram}
<h2>Each model</h2>{per_model}
<h2>Plots</h2>{missing}{figures}
</body></html>
"""
