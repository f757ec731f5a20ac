"""Pass 2: every block of the inputs merged, rounded to the output dtype and written as it goes.

A block task is pure: its output depends only on the input blocks, the pass-1 results (thresholds, the
block's tie quotas, the majority sign) and the options, so blocks run in any order on any number of
threads with identical bytes. Each block also counts its sign votes (which settle a majority sign that
pass 1 only guessed) and the values each model kept (which must add up to pass 1's counts). Writes go
through a :class:`~ooc_ties.write_queue.WriteQueue` on a writer thread, and each written block gets a
journal line.

Several merges of the same inputs on the same block grid (a grid of merges) run one pass 2 together
(:func:`run_pass2_shared`): each block's inputs are read once and every merge that still needs the block
merges it, into its own output.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ooc_ties.blocks import BlockRef, plan_blocks
from ooc_ties.config import ZeroSign
from ooc_ties.dtypes import DType
from ooc_ties.errors import NonFiniteValueError, OptionError
from ooc_ties.inputs import MergeInputs
from ooc_ties.journal import Journal
from ooc_ties.kept_counts import check_kept, counted_blocks
from ooc_ties.kernels.convert import decode_oracle
from ooc_ties.kernels.ties import merge as merge_kernel
from ooc_ties.open_elements import PATCH_SHARE, OpenElements
from ooc_ties.outputs import Output
from ooc_ties.pass1.run import Pass1Result
from ooc_ties.pass1.thresholds import Thresholds
from ooc_ties.plan import MergePlan, TensorKind
from ooc_ties.progress import Progress, ProgressFactory, progress_bar
from ooc_ties.report.collect import Collector
from ooc_ties.schedule import run_blocks
from ooc_ties.sparsity import Sparsity, needs_sparsity
from ooc_ties.write_queue import WriteQueue

__all__ = ["Pass2", "Pass2Job", "run_pass2", "run_pass2_shared"]

logger = logging.getLogger(__name__)


def _out_storage(dtype: DType) -> np.dtype:
    """The kernel encoding of an output dtype (uint16 = bf16, int16 = f16, float32)."""
    encodings: dict[str, np.dtype] = {
        "BF16": np.dtype(np.uint16),
        "F16": np.dtype(np.int16),
        "F32": np.dtype(np.float32),
    }
    return encodings[dtype.code]


@dataclass(frozen=True, slots=True)
class Pass2Job:
    """One merge's part in a shared pass 2."""

    plan: MergePlan
    """Its plan (every job of a shared pass 2 has the same block grid)."""
    pass1: Pass1Result
    """Its pass-1 results."""
    sink: Output
    """Where its output goes."""
    journal: Journal | None
    """Its resume journal, if any."""
    spill: Path | None = None
    """The folder for its open-element spill file (``None``: a temporary file)."""
    report: Collector | None = None
    """Where its interference statistics go (``--report``), if anywhere."""


class Pass2:
    """Pass 2 of one merge: every block merged and written, its votes and kept counts recorded."""

    def __init__(self, job: Pass2Job, inputs: MergeInputs) -> None:
        plan, thresholds, quotas, guessed = job.plan, job.pass1.thresholds, job.pass1.quotas, job.pass1.guessed
        self.report = job.report
        self.inputs = inputs
        self.quotas = quotas
        self.sink = job.sink
        self.journal = job.journal
        self.threads = plan.resources.threads
        options = plan.options
        self.options = options
        self._weights: dict[str, np.ndarray] = {}
        self.lam = np.float32(options.lam)
        self.consensus = options.method.consensus
        self.normalize = bool(options.normalize)
        self.thr: dict[str, np.ndarray] = {
            key: np.array([g.value for g in groups], np.float32) for key, groups in thresholds.groups.items()
        }
        self.zero_positive: dict[str, bool] = {
            key: options.zero_sign is ZeroSign.POSITIVE or thresholds.majority.get(key, 0) > 0
            for key in thresholds.groups
        }
        self.key = thresholds.key
        self.n = plan.n_models
        self.sparsity = (
            Sparsity(
                options,
                plan.n_models,
                thresholds.key,
                thresholds.outliers,
                thresholds.scales,
                inputs.sign_block if inputs.sign is not None else None,
            )
            if needs_sparsity(options)
            else None
        )
        # per block: #S>0, #S<0, open elements, open elements not recorded in ``patches``
        self.votes = np.zeros((len(quotas), 4), np.int64)
        # per block and model: values the trim kept, checked against pass 1's counts (see _counted_blocks)
        self.kept = np.zeros((len(quotas), plan.n_models), np.int64)
        self.counted, self.by_sample = counted_blocks(plan, thresholds)
        self.guessed = guessed
        # Every open element of a block can be recorded (see ``plan.work_bytes_per_element``).
        self.open_capacity = plan.block_elements if guessed else 0
        self.patches = OpenElements(plan.resources.memory_budget // PATCH_SHARE, job.spill)
        self.redoing = False
        self.bytes_read = 0
        """Input bytes of the blocks merged (or merged again) by :meth:`run`."""
        self.writes = WriteQueue(plan.block_elements, 2 * self.threads)

    def weights(self, name: str) -> np.ndarray:
        """The float32 weights of one tensor (its own, from a configuration's gradients or filters)."""
        weights = self._weights.get(name)
        if weights is None:
            weights = self._weights[name] = self.options.for_tensor(name).model_weights(self.n)
        return weights

    def new_state(self) -> dict[Any, np.ndarray]:
        return {"at": np.empty(self.open_capacity, np.int64)}

    def run(self, blocks: Sequence[BlockRef], bar: Progress | None) -> None:
        """Merge and write ``blocks`` on the plan's threads."""
        self.bytes_read += sum(b.in_nbytes for b in blocks)
        run_blocks(
            blocks, self.merge_block, self.new_state, threads=self.threads, cost=lambda b: b.in_nbytes, progress=bar
        )
        self.writes.drain()

    def merge_block(self, ref: BlockRef, buffers: dict[Any, np.ndarray]) -> None:
        """Read a block's inputs, merge and write it."""
        base, fts = self.inputs.block(ref.tensor.name, ref.start, ref.stop)
        self.merge_arrays(ref, base, fts, buffers)
        self.inputs.release(ref.tensor.name, ref.start, ref.stop)

    def merge_arrays(
        self, ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], buffers: dict[Any, np.ndarray]
    ) -> None:
        """Merge a block from its inputs ``base`` and ``fts`` (kernel encoding) and queue its write."""
        name = ref.tensor.name
        storage = _out_storage(ref.tensor.out_dtype)
        if ("alt", storage) not in buffers:
            buffers[("alt", storage)] = np.empty(self.open_capacity, storage)
        buffer = self.writes.buffer(storage)
        out = buffer[: ref.stop - ref.start]
        key = self.key(name)
        votes = self.votes[ref.ordinal]
        votes[:] = 0
        row = self.kept[ref.ordinal]
        row[:] = 0
        kept = row if ref.ordinal in self.counted else row[:0]  # an empty row: the kernel counts nothing
        # Open elements are recorded only where the majority sign is a guess that may need correcting.
        capacity = self.open_capacity if key in self.guessed and not self.redoing else 0
        at, alt = buffers["at"][:capacity], buffers[("alt", storage)][:capacity]
        quota, sparsity = self.quotas[ref.ordinal], None
        if self.sparsity is not None:
            quota, sparsity = self.sparsity.block_args(ref, base, fts, quota)
        bad = merge_kernel(
            base,
            fts,
            self.thr[key],
            quota,
            self.weights(name),
            self.lam,
            self.zero_positive[key],
            self.consensus,
            self.normalize,
            out,
            votes,
            kept,
            at,
            alt,
            sparsity,
        )
        if bad >= 0:
            message = self.inputs.describe_nonfinite(name, ref.start + bad, None, ref.tensor.out_dtype)
            raise NonFiniteValueError(message)
        if self.report is not None:
            self.report.add(ref, base, fts, self.thr[key], quota, self.weights(name), sparsity)
        recorded = int(votes[2] - votes[3])
        if recorded and not votes[3]:  # (a block with open elements not recorded is merged again)
            self.patches.keep(ref.ordinal, at[:recorded], alt[:recorded])
        self.writes.submit(buffer, functools.partial(self._write, ref, out, votes, row, self.redoing))

    def _write(self, ref: BlockRef, out: np.ndarray, votes: np.ndarray, kept: np.ndarray, redoing: bool) -> None:
        """Write a merged block, then journal it (run by :class:`WriteQueue`'s writer thread)."""
        self.sink.write(ref.tensor.name, ref.start, out)
        if self.journal is not None:
            if redoing:
                self.journal.redone(ref.ordinal)
            else:
                self.journal.merged(ref.ordinal, votes[:3], kept)

    def patch_block(self, ref: BlockRef) -> None:
        """Give a block's recorded open elements their result under the other (exact) sign."""
        at, alt = self.patches.take(ref.ordinal)
        values = decode_oracle(alt)
        if not np.all(np.isfinite(values)):
            index = ref.start + int(at[np.argmin(np.isfinite(values))])
            raise NonFiniteValueError(
                self.inputs.describe_nonfinite(ref.tensor.name, index, None, ref.tensor.out_dtype)
            )
        self.sink.patch(ref.tensor.name, ref.start, ref.stop, at, alt)
        if self.journal is not None:
            self.journal.redone(ref.ordinal)


def run_pass2(
    plan: MergePlan,
    inputs: MergeInputs,
    pass1: Pass1Result,
    sink: Output,
    progress: ProgressFactory | None,
    journal: Journal | None,
    spill: Path | None = None,
    report: Collector | None = None,
) -> tuple[Thresholds, int, int]:
    """Merge and write every block not yet done; return the thresholds with every majority sign exact,
    how many blocks an interrupted run had done, and the input bytes of the blocks merged here."""
    return run_pass2_shared([Pass2Job(plan, pass1, sink, journal, spill, report)], inputs, progress)[0][0]


def run_pass2_shared(
    jobs: Sequence[Pass2Job], inputs: MergeInputs, progress: ProgressFactory | None
) -> tuple[list[tuple[Thresholds, int, int]], int]:
    """Pass 2 of several merges of the same ``inputs`` (:func:`run_pass2` of each), reading each input
    block once for all the merges that need it; and the input bytes of the merged blocks read for them
    all (blocks merged again included). Each merge's bytes read are its own blocks' (what it would have
    read alone)."""
    blocks = plan_blocks(jobs[0].plan.merged)
    for job in jobs[1:]:
        if job.plan.block_elements != jobs[0].plan.block_elements:
            raise ValueError("the merges of a shared pass 2 must have the same block grid")
    runners = [Pass2(job, inputs) for job in jobs]
    resumed: list[tuple[int, set[int]]] = []
    needed: dict[int, list[int]] = {}  # block ordinal: the jobs that still merge it
    for j, (job, runner) in enumerate(zip(jobs, runners, strict=True)):
        done, redone = _resume_state(job, runner, len(blocks))
        if done and job.report is not None:
            raise OptionError(
                "a report needs every block merged in one run, and this merge resumes one that merged "
                f"{len(done):,} blocks: run `ooc-ties analyze` for its report"
            )
        resumed.append((len(done), redone))
        for ref in blocks:
            if ref.ordinal not in done:
                needed.setdefault(ref.ordinal, []).append(j)
                runner.bytes_read += ref.in_nbytes
    todo = [ref for ref in blocks if ref.ordinal in needed]
    copies = [
        (t, start, stop) for t in jobs[0].plan.tensors if t.kind is TensorKind.COPY for start, stop in t.grid.blocks()
    ]
    total = sum(b.in_nbytes for b in todo) + sum((stop - start) * t.in_dtypes[0].itemsize for t, start, stop in copies)

    def task(ref: BlockRef, buffers: dict[int, dict[Any, np.ndarray]]) -> None:
        base, fts = inputs.block(ref.tensor.name, ref.start, ref.stop)
        for j in needed[ref.ordinal]:
            state = buffers.get(j)
            if state is None:
                state = buffers[j] = runners[j].new_state()
            runners[j].merge_arrays(ref, base, fts, state)
        inputs.release(ref.tensor.name, ref.start, ref.stop)

    description = "pass 2/2: merge" if len(jobs) == 1 else f"pass 2/2: merge ({len(jobs)} merges)"
    try:
        with progress_bar(progress, description, total) as bar:
            for tensor, start, stop in copies:
                values = inputs.base.read(tensor.name, start, stop)
                for runner in runners:
                    runner.sink.write(tensor.name, start, values)
                inputs.base.release(tensor.name, start, stop)
                if bar is not None:
                    bar.advance((stop - start) * tensor.in_dtypes[0].itemsize)
            threads = jobs[0].plan.resources.threads
            run_blocks(todo, task, dict, threads=threads, cost=lambda b: b.in_nbytes, progress=bar)
            for runner in runners:
                runner.writes.drain()
        results = []
        read = sum(b.in_nbytes for b in todo)
        for job, runner, (finished, redone) in zip(jobs, runners, resumed, strict=True):
            check_kept(runner.kept, runner.counted, runner.by_sample, job.pass1.thresholds, blocks, inputs)
            before = runner.bytes_read
            final = _settle_majority(runner, job.pass1, blocks, progress, redone)
            read += runner.bytes_read - before  # (blocks merged again)
            results.append((final, finished, runner.bytes_read))
        return results, read
    finally:
        for runner in runners:
            runner.writes.close()  # (after a failure, the writes not yet started are dropped)
            runner.patches.close()


def _resume_state(job: Pass2Job, runner: Pass2, n_blocks: int) -> tuple[dict[int, tuple[int, ...]], set[int]]:
    """The blocks an interrupted run of this merge finished (with their votes and kept counts, loaded
    into ``runner``) and those it had already corrected."""
    if job.journal is None:
        return {}, set()
    done, redone, _ = job.journal.finished(job.plan.n_models)
    for ordinal, counts in done.items():
        if 0 <= ordinal < n_blocks:
            pos, neg, open_ = counts[:3]
            runner.votes[ordinal] = (pos, neg, open_, open_)  # their open elements were not kept
            runner.kept[ordinal] = counts[3:]
    if done:
        logger.info("resume: %d of %d blocks were done", len(done), n_blocks)
    return done, redone


def _settle_majority(
    runner: Pass2,
    pass1: Pass1Result,
    blocks: list[BlockRef],
    progress: ProgressFactory | None,
    redone: set[int],
) -> Thresholds:
    """Replace guessed majority signs by the exact ones counted in pass 2, redoing blocks if needed.

    Only *open* elements (an exact zero vote between non-zero values) depend on the majority sign.
    When a guess was wrong, the open elements pass 2 recorded get their other result written in place;
    blocks with open elements it could not record (decided by a tie quota or a drop, or merged by an
    interrupted run) are merged again with the exact sign. ``redone``: blocks an interrupted run had already corrected.
    """
    thresholds = pass1.thresholds
    if not pass1.guessed:
        return thresholds
    exact = dict(thresholds.majority)
    redo: list[BlockRef] = []
    patch: list[BlockRef] = []
    by_key: dict[str, list[BlockRef]] = {}
    for ref in blocks:
        by_key.setdefault(thresholds.key(ref.tensor.name), []).append(ref)
    for key in sorted(pass1.guessed):
        members = by_key.get(key, [])
        votes = runner.votes[[b.ordinal for b in members]].sum(axis=0) if members else np.zeros(4, np.int64)
        exact[key] = int(np.sign(votes[0] - votes[1]))
        if (exact[key] > 0) != runner.zero_positive[key]:
            logger.info(
                "majority sign of %s: guessed %+d, exact %+d (%d open elements, %d not recorded)",
                key or "the model",
                thresholds.majority[key],
                exact[key],
                votes[2],
                votes[3],
            )
            runner.zero_positive[key] = exact[key] > 0
            for b in members:
                if runner.votes[b.ordinal, 2] == 0 or b.ordinal in redone:
                    continue
                if b.ordinal in runner.patches:
                    patch.append(b)
                else:
                    redo.append(b)
    logger.info("majority sign: %d blocks corrected in place, %d merged again", len(patch), len(redo))
    for b in patch:
        runner.patch_block(b)
    runner.redoing = True
    with progress_bar(progress, "pass 2/2: redo (majority sign)", sum(b.in_nbytes for b in redo)) as bar:
        runner.run(redo, bar)
    return dataclasses.replace(thresholds, majority=types.MappingProxyType(exact))
