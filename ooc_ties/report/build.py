"""A merge's report from what its passes computed: the document, and the checks of its folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ooc_ties.inputs import MergeInputs
from ooc_ties.io.staging import check_destination
from ooc_ties.outputs import check_output_path
from ooc_ties.pass1.thresholds import Thresholds
from ooc_ties.plan import MergePlan
from ooc_ties.report.collect import Collector
from ooc_ties.report.document import report_document
from ooc_ties.report.signs import SignFile

__all__ = ["build_report", "check_report_path", "open_signs"]


def build_report(plan: MergePlan, inputs: MergeInputs, final: Thresholds, collector: Collector) -> dict[str, Any]:
    """The report document of a merge whose pass 2 filled ``collector`` (``final``: its thresholds with
    the exact majority signs)."""
    labels = [ft.label for ft in inputs.fts]
    magnitudes = collector.magnitudes() if collector.blocks else None
    return report_document(plan, collector.tensors(final), final, labels, inputs.base.label, magnitudes)


def check_report_path(report: Path, inputs: MergeInputs, overwrite: bool) -> None:
    """Refuse a report folder that exists (unless ``overwrite``) or lies among the inputs."""
    check_output_path(report, [p for source in inputs.all for p in source.local_paths()])
    check_destination(report.absolute(), overwrite=overwrite)


def open_signs(plan: MergePlan, path: str | os.PathLike[str], overwrite: bool) -> SignFile:
    """Start the sign file of a merge (``--save-signs``): every merged tensor's elected signs."""
    return SignFile(Path(path), [(t.name, t.shape) for t in plan.merged], plan.options, overwrite=overwrite)
