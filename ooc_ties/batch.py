"""A batch: one or more merges of the same inputs, each through the stages of a merge, their reads shared.

Every merge of a batch is staged, journaled and published on its own, exactly as a merge alone is
(:func:`ooc_ties.merge.merge` is a batch of one). What they share are the reads of the inputs: pass 1
runs their statistics in lockstep (:func:`~ooc_ties.pass1.run.compute_thresholds_shared`) and pass 2
reads each block once for every merge that needs it (:func:`~ooc_ties.pass2.run_pass2_shared`). The
merges of a batch have one block grid; their output bytes do not depend on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ooc_ties import publish
from ooc_ties.blocks import GLOBAL
from ooc_ties.config import MergeOptions
from ooc_ties.errors import IncompatibleCheckpointsError, OptionError
from ooc_ties.inputs import MergeInputs
from ooc_ties.io.staging import STATE_DIR, StagedDirectory, staging_path
from ooc_ties.io.zarr_format import is_zarr_group
from ooc_ties.io.zarr_output import ChunkedSpec
from ooc_ties.journal import Journal, check_resumable, journal_header, read_header
from ooc_ties.lint import lint_inputs
from ooc_ties.mergekit_yaml import TOKENIZER_CONFIG, parse_chat_template
from ooc_ties.outputs import Output, OutputLike, check_output_path, open_output, output_format
from ooc_ties.pass1.run import Pass1Result, compute_thresholds, compute_thresholds_shared
from ooc_ties.pass1.thresholds import ThresholdBasis, Thresholds
from ooc_ties.pass2 import Pass2Job, run_pass2_shared
from ooc_ties.plan import MergePlan, TensorKind
from ooc_ties.progress import ProgressFactory
from ooc_ties.report.build import build_report, check_report_path, open_signs
from ooc_ties.report.collect import Collector
from ooc_ties.report.write import write_report
from ooc_ties.sources import SourceLike, open_source

if TYPE_CHECKING:
    import zarr

__all__ = ["BatchResult", "Job", "MergeResult", "open_inputs", "run_batch"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What a finished merge did."""

    output: Path | None
    """The published folder or ``.zarr`` group; ``None`` when written into a ``zarr.Group`` given as output."""
    plan: MergePlan
    """The plan it followed."""
    thresholds: Thresholds
    """The pass-1 results."""
    seconds: float
    """Wall time of the whole merge (of the whole batch, for a merge of a grid)."""
    bytes_read: int
    """Bytes of tensor data this run read for this merge: pass 1's reads if pass 1 ran in this run (none
    when a ``resume`` found it done; only the tie counts with given ``thresholds``), the blocks this run
    merged or merged again (not those an interrupted run had merged), and the copied tensors (checked
    in every input, then read from the base). In a grid, the reads this merge would have made alone
    (:attr:`BatchResult.bytes_read` counts the reads the merges shared once)."""
    bytes_written: int
    """Bytes of tensor data written."""
    resumed_blocks: int = 0
    """Blocks an interrupted run had already merged (``resume``)."""


@dataclass(frozen=True, slots=True)
class Job:
    """One merge of a batch: where it goes and how it merges."""

    output: OutputLike
    """Its output (see :func:`ooc_ties.merge.merge`)."""
    options: MergeOptions
    """Its options."""
    chat_template: str | None = None
    """A chat template for its tokenizer (a configuration's ``chat_template``)."""
    report: Path | None = None
    """Where its interference report goes (``--report``; docs/report.md), if anywhere."""
    save_signs: Path | None = None
    """Where its elected signs go (``--save-signs``: :mod:`ooc_ties.report.signs`), if anywhere."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What a batch did."""

    results: tuple[MergeResult, ...]
    """One per job, in order."""
    bytes_read: int
    """Bytes of tensor data read for the whole batch, each shared read counted once."""
    seconds: float
    """Wall time of the batch."""


def open_inputs(
    stack: contextlib.ExitStack, base: SourceLike, fts: Sequence[SourceLike], sign: str | None = None
) -> MergeInputs:
    """Open the inputs; those opened here are closed with ``stack``."""

    def opened(spec: SourceLike, label: str) -> Any:
        source = open_source(spec, label)
        if source is not spec:  # opened here, so closed here
            stack.callback(source.close)
        return source

    return MergeInputs(
        opened(base, "<base>"),
        tuple(opened(p, f"<model {i + 1}>") for i, p in enumerate(fts)),
        opened(sign, "<sign>") if sign is not None else None,
    )


@dataclass(slots=True)
class _Stage:
    """One job on its way: its plan, staged target, output and journal."""

    job: Job
    plan: MergePlan
    target: StagedDirectory | zarr.Group | None = None
    header: dict[str, Any] | None = None
    sink: Output | None = None
    journal: Journal | None = None
    pass1: Pass1Result | None = None
    published: MergeResult | None = None
    final: Thresholds | None = None
    resumed_blocks: int = 0
    merge_read: int = 0
    collector: Collector | None = None


def run_batch(
    inputs: MergeInputs,
    jobs: Sequence[Job],
    plans: Sequence[MergePlan],
    *,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    thresholds: Thresholds | None = None,
    resume: bool = False,
) -> BatchResult:
    """Run ``jobs`` on the opened ``inputs`` with their ``plans`` (one block grid for all).

    ``thresholds`` (a batch of one only) skip pass 1's reads, see :func:`ooc_ties.merge.merge`.
    """
    started = time.perf_counter()
    if thresholds is not None and len(jobs) != 1:
        raise OptionError("given thresholds fit one merge, not a grid")
    with contextlib.ExitStack() as stack:
        stages = [_stage(stack, inputs, job, plan, overwrite, resume) for job, plan in zip(jobs, plans, strict=True)]
        live = [s for s in stages if s.published is None]
        if live:
            _check_template(live, inputs)
            for stage in live:
                if stage.job.report is not None:
                    check_report_path(stage.job.report, inputs, overwrite)
                if stage.job.report is not None or stage.job.save_signs is not None:
                    signs = None
                    if stage.job.save_signs is not None:
                        signs = open_signs(stage.plan, stage.job.save_signs, overwrite)
                        stack.callback(signs.abort)  # (after a commit: nothing left to remove)
                    stage.collector = Collector(stage.plan, signs)
            if len(live) == 1:
                logger.info("plan:\n%s", live[0].plan.describe())
            else:
                logger.info("plan of the first of %d merges:\n%s", len(live), live[0].plan.describe())
                for stage in live[1:]:
                    logger.debug("plan:\n%s", stage.plan.describe())
            _check_copies(live[0].plan, inputs)
            lint_inputs(live[0].plan, inputs, others=[s.plan for s in live[1:]])
            for stage in live:
                _open_output(stack, stage)
            read = _run_passes(live, inputs, progress, thresholds)
            for stage in live:
                _publish(stage, inputs)
            for stage in live:
                if stage.collector is None or stage.final is None:
                    continue
                if stage.job.report is not None:
                    document = build_report(stage.plan, inputs, stage.final, stage.collector)
                    write_report(document, stage.job.report, overwrite=overwrite)
                if stage.collector.signs is not None:
                    stage.collector.signs.commit()
        else:
            read = 0
    seconds = time.perf_counter() - started
    results = tuple(s.published if s.published is not None else _result(s, seconds) for s in stages)
    return BatchResult(results, read, seconds)


def _stage(
    stack: contextlib.ExitStack, inputs: MergeInputs, job: Job, plan: MergePlan, overwrite: bool, resume: bool
) -> _Stage:
    """Stage one job's output: a folder beside its destination (or a ``zarr.Group`` as is), its journal
    header, and (``resume``) what an interrupted run left."""
    output = job.output
    stage = _Stage(job, plan)
    if is_zarr_group(output):
        if resume:
            raise OptionError("resume needs an output path (a zarr.Group given as output is written in place)")
        stage.target = output
        return stage
    path = Path(output)
    check_output_path(path, [p for source in inputs.all for p in source.local_paths()])
    identity = inputs.identity()
    recipe = publish.already_published(path, job.options, identity, overwrite) if resume else None
    if recipe is not None:
        done = Thresholds.from_json(recipe["thresholds"], str(path))
        stage.published = MergeResult(path.absolute(), plan, done, 0.0, 0, 0, plan.total_blocks)
        return stage
    target = StagedDirectory(
        path, overwrite=overwrite, durable=plan.resources.durable, resume=resume, nbytes=plan.output_bytes
    )
    theirs = read_header(target.state) if target.resumed else None
    if target.resumed and theirs is None:
        target.clear()  # killed before its journal existed: nothing in it can be trusted
    try:
        header = journal_header(plan, identity, output_format(output))
        if theirs is not None:
            check_resumable(theirs, header, target.path)
    except BaseException:
        if theirs is not None:
            target.keep()  # a refused resume leaves the partial merge as it was
        else:
            target.abort()
        raise
    stack.push(_leave_on_exit(target))
    stage.target, stage.header = target, header
    return stage


def resumed_block_elements(output: OutputLike) -> int | None:
    """The block size of an interrupted merge into ``output``, if one is there to resume."""
    if is_zarr_group(output):
        return None
    state = staging_path(Path(output).absolute()) / STATE_DIR
    theirs = read_header(state) if state.is_dir() else None
    block = theirs.get("block_elements") if theirs is not None else None
    return block if isinstance(block, int) and block > 0 else None


def _check_template(stages: Sequence[_Stage], inputs: MergeInputs) -> None:
    """A chat template is checked before any tensor is read."""
    for stage in stages:
        template = stage.job.chat_template
        if template is None:
            continue
        parse_chat_template(template, "chat_template")
        if TOKENIZER_CONFIG not in inputs.base.side_files():
            raise OptionError(
                f"{inputs.base.label}: chat_template is set but this base model has no tokenizer ({TOKENIZER_CONFIG})"
            )


def _open_output(stack: contextlib.ExitStack, stage: _Stage) -> None:
    plan, target = stage.plan, stage.target
    if target is None:
        raise AssertionError("unreachable: a stage is staged before its output opens")
    specs = [ChunkedSpec(t.output, t.grid.chunks) for t in plan.tensors]
    metadata = publish.recipe_metadata(plan)
    out_format = output_format(stage.job.output)
    stage.sink = open_output(target, specs, plan.shards, metadata, out_format, direct=plan.resources.direct_io)
    stack.callback(stage.sink.close)
    if isinstance(target, StagedDirectory) and stage.header is not None:
        opener = Journal.reopen if target.resumed else Journal.start
        stage.journal = opener(target.state, stage.header, durable=plan.resources.durable, sync=stage.sink.sync)
        stack.callback(stage.journal.close)
        stage.pass1 = stage.journal.load_pass1()
        if stage.pass1 is not None:
            logger.info("%s: resume: pass 1 was done", target.destination)


def _run_passes(
    stages: Sequence[_Stage], inputs: MergeInputs, progress: ProgressFactory | None, given: Thresholds | None
) -> int:
    """Pass 1 of the stages that need it, then pass 2 of all; the bytes read (shared reads once)."""
    todo = [s for s in stages if s.pass1 is None]
    read = 0
    if todo:
        if given is not None:
            results = [compute_thresholds(todo[0].plan, inputs, progress, given)]
            read += results[0].bytes_read
        else:
            # Merges whose pass 1 depends on the same options (ThresholdBasis: they differ only in
            # lambda, the output dtype, ...) share one pass 1 outright; the others share its reads.
            keys = [json.dumps(ThresholdBasis.of(s.plan.options, s.plan.n_models).to_json()) for s in todo]
            distinct = {key: i for i, key in reversed(list(enumerate(keys)))}  # (each basis' first stage)
            firsts = sorted(distinct.values())
            computed, shared = compute_thresholds_shared([todo[i].plan for i in firsts], inputs, progress)
            results = [computed[firsts.index(distinct[key])] for key in keys]
            read += shared
        for stage, result in zip(todo, results, strict=True):
            stage.pass1 = result
            if stage.journal is not None:
                stage.journal.save_pass1(result)
    jobs = []
    logged: set[int] = set()
    for stage in stages:
        if stage.pass1 is None or stage.sink is None:
            raise AssertionError("unreachable: every stage has its pass 1 and its output by now")
        if id(stage.pass1) not in logged:  # (once per pass 1: merges of one basis share it)
            logged.add(id(stage.pass1))
            for t, g in enumerate(stage.pass1.thresholds.groups.get(GLOBAL, ())):
                logger.info("model %d: threshold %g keeps %d of %d values", t + 1, g.value, g.kept, g.size)
        spill = stage.target.state if isinstance(stage.target, StagedDirectory) else None
        jobs.append(Pass2Job(stage.plan, stage.pass1, stage.sink, stage.journal, spill, stage.collector))
    finals, merged = run_pass2_shared(jobs, inputs, progress)
    for stage, (final, resumed_blocks, merge_read) in zip(stages, finals, strict=True):
        stage.final, stage.resumed_blocks, stage.merge_read = final, resumed_blocks, merge_read
    return read + merged + _copied_bytes(stages[0].plan)


def _copied_bytes(plan: MergePlan) -> int:
    """The copied tensors' reads: checked in every input, then read from the base."""
    copies = [t for t in plan.tensors if t.kind is TensorKind.COPY]
    return sum(t.in_nbytes + t.numel * t.in_dtypes[0].itemsize for t in copies)


def _publish(stage: _Stage, inputs: MergeInputs) -> None:
    """Write the recipe and side files, close the journal, and publish the staged output."""
    if stage.final is None or stage.sink is None:
        raise AssertionError("unreachable: a stage is published after its pass 2")
    recipe = publish.recipe(stage.plan, inputs, stage.final, stage.job.chat_template)
    stage.sink.finish(publish.side_files(stage.plan, inputs, recipe), recipe)
    if stage.journal is not None:
        stage.journal.complete()
    if isinstance(stage.target, StagedDirectory):
        stage.target.commit()


def _result(stage: _Stage, seconds: float) -> MergeResult:
    if stage.final is None or stage.pass1 is None:
        raise AssertionError("unreachable: a result is made after pass 2")
    plan = stage.plan
    read = stage.pass1.bytes_read + stage.merge_read + _copied_bytes(plan)  # (a journal's pass 1 read nothing)
    published = stage.target.destination if isinstance(stage.target, StagedDirectory) else None
    return MergeResult(published, plan, stage.final, seconds, read, plan.output_bytes, stage.resumed_blocks)


def _leave_on_exit(target: StagedDirectory) -> Any:
    """An exit callback: a merge stopped by an interruption or by the system (a full disk, an I/O error,
    no memory) stays for ``resume``; one that failed on its inputs or options is removed."""

    def leave(exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if not target.done:
            if isinstance(exc, (KeyboardInterrupt, OSError, MemoryError)):
                logger.warning("stopped: the partial merge stays at %s (run again with --resume)", target.path)
                target.keep()
            else:
                target.abort()
        return False

    return leave


def _check_copies(plan: MergePlan, inputs: MergeInputs) -> None:
    """Non-float tensors are copied from the base, so every input must hold the same values."""
    for tensor in plan.tensors:
        if tensor.kind is not TensorKind.COPY:
            continue
        for start, stop in tensor.grid.blocks():
            base = inputs.base.read(tensor.name, start, stop)
            for ft in inputs.fts:
                other = ft.read(tensor.name, start, stop)
                if not np.array_equal(base, other):
                    index = start + int(np.argmax(base != other))
                    raise IncompatibleCheckpointsError(
                        f"{ft.where(tensor.name)}: this {tensor.in_dtypes[0]} tensor is copied, not merged, "
                        f"but differs from the base at element {index}"
                    )
