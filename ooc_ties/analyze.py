"""``ooc-ties analyze``: the interference report of a merge, without writing the merge.

It runs the merge's two passes with an output that keeps nothing (:class:`~ooc_ties.outputs.NullOutput`)
and collects the statistics in pass 2, so it reads the inputs as the merge would, in the same memory
budget, and its report is the one ``merge(..., report=...)`` writes beside the merge.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ooc_ties.batch import open_inputs
from ooc_ties.cluster import connected
from ooc_ties.config import PRESETS, MergeOptions
from ooc_ties.lint import lint_inputs
from ooc_ties.outputs import NullOutput
from ooc_ties.pass1.run import compute_thresholds
from ooc_ties.pass2 import run_pass2
from ooc_ties.plan import MergePlan, make_plan
from ooc_ties.progress import ProgressFactory
from ooc_ties.report.build import build_report, check_report_path, open_signs
from ooc_ties.report.collect import Collector
from ooc_ties.report.write import write_report
from ooc_ties.resources import Resources
from ooc_ties.sources import SourceLike

__all__ = ["AnalysisResult", "analyze"]


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    """What ``analyze`` found and wrote."""

    output: Path
    """The report folder."""
    document: dict[str, Any]
    """The content of its ``report.json``."""
    note: str | None
    """Why something is missing (no matplotlib: no plots), if anything is."""
    plan: MergePlan
    """The plan of the merge analysed."""
    seconds: float
    """Wall time."""
    bytes_read: int
    """Input bytes read."""


def analyze(
    base: SourceLike,
    finetuned: Sequence[SourceLike],
    output: str | os.PathLike[str],
    options: MergeOptions = PRESETS["paper"],
    resources: Resources | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    save_signs: str | os.PathLike[str] | None = None,
) -> AnalysisResult:
    """Write the interference report (docs/report.md) of merging ``finetuned`` onto ``base`` with
    ``options`` into the folder ``output``: ``report.json``, ``tensors.csv``, plots (with matplotlib)
    and ``index.html``. Reads the inputs as the merge would; writes no merged tensor.

    ``save_signs``: also write the elected signs to this int8 safetensors file
    (:mod:`ooc_ties.report.signs`), for a later merge's ``sign_from``."""
    started = time.perf_counter()
    resources = resources or Resources()
    out = Path(output)
    with contextlib.ExitStack() as stack:
        resources = stack.enter_context(connected(resources))
        inputs = open_inputs(stack, base, finetuned, options.sign_from)
        plan = make_plan(inputs.base, inputs.fts, options, resources, inputs.sign)
        check_report_path(out, inputs, overwrite)
        signs = open_signs(plan, save_signs, overwrite) if save_signs is not None else None
        try:
            lint_inputs(plan, inputs)
            pass1 = compute_thresholds(plan, inputs, progress)
            collector = Collector(plan, signs)
            final, _, merge_read = run_pass2(plan, inputs, pass1, NullOutput(), progress, None, None, collector)
            document = build_report(plan, inputs, final, collector)
            folder, note = write_report(document, out, overwrite=overwrite)
            if signs is not None:
                signs.commit()
        except BaseException:
            if signs is not None:
                signs.abort()
            raise
    read = pass1.bytes_read + merge_read
    return AnalysisResult(folder, document, note, plan, time.perf_counter() - started, read)
