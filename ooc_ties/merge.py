"""The merge: open, plan, pass 1 (statistics), pass 2 (merge and write), publish.

:func:`merge` is the library entry point the CLI calls; it runs the stages (:mod:`ooc_ties.plan`, headers
only; :mod:`ooc_ties.pass1`; :mod:`ooc_ties.pass2`; :mod:`ooc_ties.publish`, with the resume journal and the
staged output around them) as a batch of one (:mod:`ooc_ties.batch`). :func:`merge_grid` runs a grid of
merges of the same inputs (:mod:`ooc_ties.grid`) in as few batches as the memory budget allows, each
reading the inputs as one merge does. :func:`plan_merge` stops after planning (``--dry-run``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ooc_ties.batch import Job, MergeResult, open_inputs, resumed_block_elements, run_batch
from ooc_ties.cluster import connected
from ooc_ties.config import PRESETS, MergeOptions
from ooc_ties.errors import OptionError, OutputPathError
from ooc_ties.grid import GRID_NAME, GridPoint, grid_document, name_points
from ooc_ties.inputs import MergeInputs
from ooc_ties.io.staging import check_disk
from ooc_ties.io.writer import RECIPE_NAME
from ooc_ties.lint import lint_inputs
from ooc_ties.outputs import OutputLike
from ooc_ties.pass1.costs import plan_reads
from ooc_ties.pass1.thresholds import Thresholds
from ooc_ties.plan import MergePlan, _human, make_plan
from ooc_ties.progress import ProgressFactory
from ooc_ties.resources import Resources
from ooc_ties.sources import SourceLike

__all__ = [
    "RECIPE_NAME",
    "GridPlan",
    "GridResult",
    "MergeResult",
    "OutputLike",
    "PointLike",
    "merge",
    "merge_grid",
    "plan_grid",
    "plan_merge",
]

logger = logging.getLogger(__name__)


def plan_merge(
    base: SourceLike,
    finetuned: Sequence[SourceLike],
    options: MergeOptions = PRESETS["paper"],
    resources: Resources | None = None,
) -> MergePlan:
    """Open the inputs, check they line up, and plan the merge without reading tensor data."""
    with contextlib.ExitStack() as stack:
        inputs = open_inputs(stack, base, finetuned, options.sign_from)
        plan = make_plan(inputs.base, inputs.fts, options, resources or Resources(), inputs.sign)
        lint_inputs(plan, inputs, sample=False)  # a dry run reads no tensor data
        return plan


def merge(
    base: SourceLike,
    finetuned: Sequence[SourceLike],
    output: OutputLike,
    options: MergeOptions = PRESETS["paper"],
    resources: Resources | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    thresholds: Thresholds | None = None,
    resume: bool = False,
    chat_template: str | None = None,
    report: str | os.PathLike[str] | None = None,
    save_signs: str | os.PathLike[str] | None = None,
) -> MergeResult:
    """TIES-merge ``finetuned`` models onto ``base`` and write the result to ``output``.

    Inputs (see :func:`ooc_ties.sources.open_source`): a ``.safetensors`` file or Hugging Face folder
    (single or sharded), a Zarr group (path, ``.zip``, fsspec URL or ``zarr.Group``), or a mapping of
    names to NumPy or Zarr arrays. The same inputs give the same bytes whatever their form.

    ``output``: a folder path receives ``model.safetensors`` or shards with an index, the base's config
    and tokenizer files, and ``ooc_ties_recipe.json``; a path ending in ``.zarr`` receives a Zarr v3
    group (see docs/zarr.md). Both are built under a hidden name beside the destination and renamed
    into place when complete. A ``zarr.Group`` (any store) is written in place.

    ``resume``: continue the merge an interrupted run (killed, or stopped with Ctrl-C) left beside
    ``output``, if any: pass 1 and the blocks it finished are not redone, and the output is
    byte-identical to an uninterrupted merge. A merge with other inputs or options is refused.
    Without ``resume``, such a leftover is refused (``overwrite`` deletes it).

    ``thresholds`` from an earlier merge of the same inputs (``MergeResult.thresholds``, or
    :meth:`Thresholds.load`) skip pass 1's reads; they are refused unless they were computed under the
    same density, scope, trim rule, zero-sign rule and weights, for the same tensors. ``lambda`` and the
    output dtype may differ.

    ``chat_template``: a Jinja chat template for the output's tokenizer, applied as mergekit applies a
    configuration's ``chat_template`` (:func:`~ooc_ties.mergekit_yaml.apply_chat_template`).

    ``report``: a folder for the merge's interference report (docs/report.md), counted in pass 2 at no
    extra read; the same report :func:`ooc_ties.analyze.analyze` writes (a ``resume`` reads the blocks an
    interrupted run merged once more, to count them). ``save_signs``: a file for the elected signs (int8
    safetensors, :mod:`ooc_ties.report.signs`), which a later merge's ``sign_from`` can name.
    """
    resources = resources or Resources()
    with contextlib.ExitStack() as stack:
        resources = stack.enter_context(connected(resources))
        inputs = open_inputs(stack, base, finetuned, options.sign_from)
        plan = make_plan(inputs.base, inputs.fts, options, resources, inputs.sign)
        if resume:
            plan = _replan_for(resumed_block_elements(output), plan, inputs)
        job = Job(
            output,
            options,
            chat_template,
            Path(report) if report is not None else None,
            Path(save_signs) if save_signs is not None else None,
        )
        batch = run_batch(
            inputs, [job], [plan], overwrite=overwrite, progress=progress, thresholds=thresholds, resume=resume
        )
    return batch.results[0]


def _replan_for(block: int | None, plan: MergePlan, inputs: MergeInputs) -> MergePlan:
    """The plan of an interrupted merge whose blocks had ``block`` elements: the same blocks, even if this
    run's memory budget or threads differ."""
    if block is not None and 0 < block < plan.block_elements:
        smaller = dataclasses.replace(plan.resources, max_block_elements=block)
        return make_plan(inputs.base, inputs.fts, plan.options, smaller, inputs.sign)
    return plan


@dataclass(frozen=True, slots=True)
class GridPlan:
    """A grid of merges planned from headers only: its points, their plans and how they are batched."""

    output: Path
    """The grid's folder."""
    points: tuple[GridPoint, ...]
    """Its merges."""
    plans: tuple[MergePlan, ...]
    """Their plans (one block grid for all; each with its share of the memory budget)."""
    batches: tuple[tuple[int, ...], ...]
    """The points of each batch (one read of the inputs each), in order."""
    zarr: bool
    """Whether the points are Zarr groups (``name.zarr``) rather than safetensors folders."""
    memory_budget: int
    """The budget the merges of a batch divide."""

    def point_output(self, i: int) -> Path:
        """Where point ``i`` is written."""
        return self.output / (self.points[i].name + (".zarr" if self.zarr else ""))

    @property
    def output_bytes(self) -> int:
        return sum(plan.output_bytes for plan in self.plans)

    @property
    def peak_memory_estimate(self) -> int:
        """The most the merges of one batch allocate together (their plans' estimates)."""
        return max(sum(self.plans[i].peak_memory_estimate for i in batch) for batch in self.batches)

    def expected_reads(self) -> int:
        """Input bytes the grid is expected to read: per batch, the pass 1 of its merge that expects to
        read the most (the others share its reads) and one read for pass 2."""
        total = 0
        for batch in self.batches:
            plans = [self.plans[i] for i in batch]
            pass1 = max(sum(r.nbytes for r in plan_reads(p) if r.expected) for p in plans)
            total += pass1 + plans[0].merge_input_bytes
        return total

    def describe(self) -> str:
        """A human-readable summary (``--dry-run``)."""
        one = self.plans[0]
        read = self.expected_reads()
        unit = max(1, one.merge_input_bytes)
        lines = [
            f"grid: {len(self.points)} merges into {self.output}" + (" (Zarr groups)" if self.zarr else ""),
            *(f"  {self.points[i].name}: {_summary(self.plans[i])}" for i in range(len(self.points))),
            f"batches: {len(self.batches)} (merges per batch: {', '.join(str(len(b)) for b in self.batches)}"
            + (", split by the memory budget)" if len(self.batches) > 1 else ")"),
            f"blocks: {one.total_blocks:,} of up to {one.block_elements:,} elements, {one.resources.threads} thread(s)",
            f"reads: about {read / unit:.3g} passes over {_human(one.merge_input_bytes)} for all {len(self.points)} "
            f"merges (one merge alone: {(sum(r.nbytes for r in plan_reads(one) if r.expected) + unit) / unit:.3g})",
            f"writes: {_human(self.output_bytes)} ({len(self.points)} outputs)",
            f"peak memory (engine): {_human(self.peak_memory_estimate)} of a {_human(self.memory_budget)} budget",
            f"disk needed: {_human(self.output_bytes)} (plus headers, config files and records of open elements)",
        ]
        return "\n".join(lines)


def _summary(plan: MergePlan) -> str:
    first = plan.describe().splitlines()[0]
    return first.split(", ", 2)[-1] if first.startswith("merge: ") else first


@dataclass(frozen=True, slots=True)
class GridResult:
    """What a finished grid did."""

    output: Path
    """The grid's folder (``grid.json`` lists its points)."""
    points: tuple[GridPoint, ...]
    """Its merges."""
    results: tuple[MergeResult, ...]
    """One per point, in order."""
    batches: int
    """How many batches it ran in (each reads the inputs as one merge does)."""
    bytes_read: int
    """Input bytes read for the whole grid (a shared read counted once)."""
    seconds: float
    """Wall time."""


PointLike = GridPoint | MergeOptions
"""A point of a grid: options (named by :func:`~ooc_ties.grid.name_points`) or a named :class:`GridPoint`."""


def _points(points: Sequence[PointLike]) -> tuple[GridPoint, ...]:
    if not points:
        raise OptionError("a grid needs at least one merge")
    options = [p.options if isinstance(p, GridPoint) else p for p in points]
    names = name_points(options)
    named = tuple(p if isinstance(p, GridPoint) else GridPoint(n, p) for p, n in zip(points, names, strict=True))
    seen: set[str] = set()
    for p in named:
        if not p.name or p.name in (".", "..") or "/" in p.name or p.name in seen:
            raise OptionError(f"grid point name {p.name!r} is empty, a path or given twice")
        seen.add(p.name)
    if len({p.options.sign_from for p in named}) > 1:
        raise OptionError("the merges of a grid must elect their sign alike (one sign_from for all)")
    return named


def _plan_grid(
    inputs: MergeInputs, output: Path, points: tuple[GridPoint, ...], resources: Resources, resume: bool
) -> GridPlan:
    """Plan every point with an equal share of the memory budget, as many per batch as fit."""
    zarr = output.suffix == ".zarr"
    failure: OptionError | None = None
    for per in range(len(points), 0, -1):
        share = dataclasses.replace(resources, memory_budget=resources.memory_budget // per)
        try:
            plans = [make_plan(inputs.base, inputs.fts, p.options, share, inputs.sign) for p in points]
        except OptionError as error:
            failure = failure or error
            if per == 1:
                raise
            continue
        break
    grid = GridPlan(output, points, tuple(plans), (), zarr, resources.memory_budget)
    block = min(p.block_elements for p in plans)
    if resume:
        resumed = [resumed_block_elements(grid.point_output(i)) for i in range(len(points))]
        block = min([block, *(b for b in resumed if b is not None)])
    if any(p.block_elements != block for p in plans):
        share = dataclasses.replace(plans[0].resources, max_block_elements=block)
        plans = [make_plan(inputs.base, inputs.fts, p.options, share, inputs.sign) for p in points]
    batches = tuple(tuple(range(i, min(i + per, len(points)))) for i in range(0, len(points), per))
    if len(batches) > 1:
        logger.warning(
            "memory budget %s holds %d of the %d merges at once: the grid runs in %d batches, each reading "
            "the inputs (raise --memory-budget to read them fewer times)",
            _human(resources.memory_budget),
            per,
            len(points),
            len(batches),
        )
    return dataclasses.replace(grid, plans=tuple(plans), batches=batches)


def plan_grid(
    base: SourceLike,
    finetuned: Sequence[SourceLike],
    output: str | os.PathLike[str],
    points: Sequence[PointLike],
    resources: Resources | None = None,
) -> GridPlan:
    """Plan a grid of merges without reading tensor data (``--dry-run``); a grid whose outputs do not fit
    on the disk is refused (:class:`~ooc_ties.errors.DiskSpaceError`)."""
    named = _points(points)
    with contextlib.ExitStack() as stack:
        inputs = open_inputs(stack, base, finetuned, named[0].options.sign_from)
        grid = _plan_grid(inputs, Path(output), named, resources or Resources(), resume=False)
        lint_inputs(grid.plans[0], inputs, sample=False, others=grid.plans[1:])
    check_disk(Path(output) / "point", grid.output_bytes)
    return grid


def merge_grid(
    base: SourceLike,
    finetuned: Sequence[SourceLike],
    output: str | os.PathLike[str],
    points: Sequence[PointLike],
    resources: Resources | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    resume: bool = False,
    report: str | os.PathLike[str] | None = None,
) -> GridResult:
    """Run a grid of merges of the same inputs: every point is written under the folder ``output``
    (``output/NAME/``, or a Zarr group ``output/NAME.zarr`` when ``output`` ends in ``.zarr``), and
    ``output/grid.json`` lists them.

    ``points``: :class:`MergeOptions` (named after the options that vary, see
    :func:`~ooc_ties.grid.name_points`; :func:`~ooc_ties.grid.expand_grid` spans them from lists) or
    :class:`GridPoint` with names of their own. Each output is byte-identical to :func:`merge` with its
    options. The merges share their reads: pass 1 reads the inputs as the most demanding of them does,
    and pass 2 reads each block once for all (:mod:`ooc_ties.batch`), within ``resources``' memory
    budget, which they divide; a grid too large for it runs in as few batches as fit. ``resume``
    keeps finished points and continues interrupted ones; ``overwrite`` replaces existing points.
    ``report``: a folder that receives each point's interference report as ``report/NAME/``.
    """
    started = time.perf_counter()
    named = _points(points)
    resources = resources or Resources()
    out = Path(output)
    with contextlib.ExitStack() as stack:
        resources = stack.enter_context(connected(resources))
        inputs = open_inputs(stack, base, finetuned, named[0].options.sign_from)
        grid = _plan_grid(inputs, out, named, resources, resume)
        outputs = [grid.point_output(i) for i in range(len(named))]
        finished = [resume and ((o / RECIPE_NAME).is_file() or (o / "zarr.json").is_file()) for o in outputs]
        check_disk(out / "point", sum(p.output_bytes for p, f in zip(grid.plans, finished, strict=True) if not f))
        _check_grid_folder(out, resume or overwrite)
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        status = ["pending"] * len(named)
        results: list[MergeResult | None] = [None] * len(named)
        read = 0
        try:
            _write_grid(out, grid, status)
            for number, batch in enumerate(grid.batches, 1):
                if len(grid.batches) > 1:
                    names = ", ".join(named[i].name for i in batch)
                    logger.info("batch %d of %d: %s", number, len(grid.batches), names)
                jobs = [
                    Job(outputs[i], named[i].options, named[i].chat_template, _report_of(report, named[i].name))
                    for i in batch
                ]
                plans = [grid.plans[i] for i in batch]
                done = run_batch(inputs, jobs, plans, overwrite=overwrite, progress=progress, resume=resume)
                read += done.bytes_read
                for i, result in zip(batch, done.results, strict=True):
                    results[i] = result
                    status[i] = "done"
                _write_grid(out, grid, status)
        except BaseException as error:
            # Stopped by an interruption or the system: the partial merges stay for --resume. Failed on
            # the inputs or options: each merge removed its own staging; the grid's folder goes too if
            # this run made it and nothing was finished in it.
            resumable = isinstance(error, (KeyboardInterrupt, OSError, MemoryError))
            if created and not resumable and "done" not in status:
                (out / GRID_NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    out.rmdir()
            raise
    merged = tuple(r for r in results if r is not None)
    return GridResult(out.absolute(), named, merged, len(grid.batches), read, time.perf_counter() - started)


def _report_of(report: str | os.PathLike[str] | None, name: str) -> Path | None:
    return Path(report) / name if report is not None else None


def _check_grid_folder(out: Path, reuse: bool) -> None:
    """Refuse a grid's folder that is a file, or a folder with something in it (unless ``reuse``:
    ``resume`` or ``overwrite``, which check each point's own output)."""
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{out}: exists and is not a folder")
    if out.is_dir() and not reuse and any(out.iterdir()):
        raise OutputPathError(f"{out}: already exists (choose another path, --resume or --overwrite)")


def _write_grid(out: Path, grid: GridPlan, status: Sequence[str]) -> None:
    """Write ``grid.json`` (atomically)."""
    outputs = [grid.point_output(i).name for i in range(len(grid.points))]
    text = json.dumps(grid_document(grid.points, outputs, status), indent=2) + "\n"
    partial = out / (GRID_NAME + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(out / GRID_NAME)
