"""The merge plan: from headers only, what will be merged or copied, in which blocks, at what cost.

Planning validates that the checkpoints line up (same tensors, shapes, compatible dtypes), picks the
block size from the memory budget, lays the output out in shards, and estimates bytes, memory and disk.
It reads no tensor data, so ``--dry-run`` is instant and a mismatch fails before any work starts.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ooc_ties.chunk_grid import ChunkGrid
from ooc_ties.config import MergeOptions
from ooc_ties.dtypes import F32, F64, I8, DType
from ooc_ties.errors import IncompatibleCheckpointsError, OptionError
from ooc_ties.io.direct import ALIGNMENT, BOUNCE_BYTES
from ooc_ties.io.writer import ShardLayout, layout_shards
from ooc_ties.methods import Sparsify, row_length
from ooc_ties.pass1.costs import SAMPLE_STRIDE, VOTE_STRIDE, max_reads, pass1_memory, plan_reads
from ooc_ties.resources import Resources
from ooc_ties.sources import TensorSource
from ooc_ties.tensor import Tensor

__all__ = ["MAX_BLOCK_ELEMENTS", "MergePlan", "TensorKind", "TensorPlan", "make_plan"]

MAX_BLOCK_ELEMENTS = 1 << 22
"""Largest block (4 Mi elements): larger blocks gain nothing and coarsen progress and load balance."""
MIN_BLOCK_ELEMENTS = 1 << 12
"""Smallest block the budget may force (below it, per-block overhead dominates)."""


class TensorKind(enum.Enum):
    MERGE = "merge"
    """A float tensor, merged."""
    COPY = "copy"
    """A non-float tensor (an integer buffer, a mask), copied from the base; all inputs must agree."""


@dataclass(frozen=True, slots=True)
class TensorPlan:
    """What happens to one tensor."""

    name: str
    """Tensor name."""
    shape: tuple[int, ...]
    """Its shape (the same in every input)."""
    kind: TensorKind
    """Merged or copied."""
    in_dtypes: tuple[DType, ...]
    """Dtype in the base, then in each fine-tuned model."""
    out_dtype: DType
    """Dtype written."""
    grid: ChunkGrid
    """The blocks it is processed in."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def in_nbytes(self) -> int:
        """Bytes of this tensor over all inputs."""
        return self.numel * sum(d.itemsize for d in self.in_dtypes)

    @property
    def out_nbytes(self) -> int:
        return self.numel * self.out_dtype.itemsize

    @property
    def output(self) -> Tensor:
        """The tensor written."""
        return Tensor(self.name, self.out_dtype, self.shape)


@dataclass(frozen=True, slots=True)
class MergePlan:
    """Everything decided before reading any tensor data."""

    options: MergeOptions
    """The merge semantics."""
    resources: Resources
    """Budget, threads, shard size."""
    n_models: int
    """Number of fine-tuned models."""
    tensors: tuple[TensorPlan, ...]
    """Every tensor, in name order."""
    shards: tuple[ShardLayout, ...]
    """The output files."""
    block_elements: int
    """Largest block, in elements."""
    work_bytes_per_element: int
    """Working memory one block element needs in pass 2 (output buffer and decode scratch)."""

    @property
    def merged(self) -> tuple[TensorPlan, ...]:
        return tuple(t for t in self.tensors if t.kind is TensorKind.MERGE)

    @property
    def merged_parameters(self) -> int:
        return sum(t.numel for t in self.merged)

    @property
    def merge_input_bytes(self) -> int:
        """Bytes one read of the merged tensors of every input moves."""
        return sum(t.in_nbytes for t in self.merged)

    @property
    def output_bytes(self) -> int:
        return sum(t.out_nbytes for t in self.tensors)

    @property
    def threshold_passes(self) -> float:
        """The most reads of the inputs before pass 2 for a group of many blocks, in whole reads, a sample
        (every 8th block) counted as an eighth, the sign-vote sample (every 16th) as a sixteenth:
        :func:`ooc_ties.pass1.costs.max_reads`. :meth:`describe` counts this plan's own groups, from the
        same statement (:func:`ooc_ties.pass1.costs.pass1_reads`)."""
        whole = SAMPLE_STRIDE * VOTE_STRIDE
        return max_reads(self.options, whole, VOTE_STRIDE, SAMPLE_STRIDE) / whole

    @property
    def peak_memory_estimate(self) -> int:
        """Upper bound of the engine's own allocations (the runtime itself comes on top)."""
        return _fixed_bytes(self.n_models, self.resources.threads, self.total_blocks) + (
            self.resources.threads * self.block_elements * self.work_bytes_per_element
        )

    @property
    def total_blocks(self) -> int:
        return sum(t.grid.nblocks for t in self.tensors)

    def describe(self) -> str:
        """A human-readable summary (``--dry-run``)."""
        o = self.options
        merged = self.merged
        copied = [t for t in self.tensors if t.kind is TensorKind.COPY]
        lines = [
            f"merge: {o.method.title}, {_count(self.n_models, 'fine-tuned model')}, {_describe_options(o)}",
            f"tensors: {len(merged)} merged ({self.merged_parameters:,} parameters), {len(copied)} copied",
            f"blocks: {self.total_blocks:,} of up to {self.block_elements:,} elements, "
            f"{_count(self.resources.threads, 'thread')}",
            self._describe_reads(),
            f"writes: {_human(self.output_bytes)} in {len(self.shards)} file(s)",
            f"peak memory (engine): {_human(self.peak_memory_estimate)} "
            f"of a {_human(self.resources.memory_budget)} budget",
            f"disk needed: {_human(self.output_bytes)} (plus headers and config files"
            + (", and records of open elements beyond the memory budget's share)" if o.majority_vote else ")"),
        ]
        if self.resources.cluster is not None:
            lines.append(
                f"cluster: each worker thread needs about {_human(self.worker_memory_estimate)} "
                "(one block's inputs, outputs and accumulators); the driver keeps the per-block counts "
                "and the journal, the workers' open-element records go to the output's state folder"
            )
        return "\n".join(lines)

    @property
    def worker_memory_estimate(self) -> int:
        """What one task of a cluster's worker allocates at most: pass 1's accumulators for one thread,
        and one block's working set with its copies of the output and open-element records."""
        out_bytes = max((t.out_dtype.itemsize for t in self.merged), default=4)
        return pass1_memory(self.n_models, 1) + self.block_elements * (self.work_bytes_per_element + 8 + out_bytes)

    def _describe_reads(self) -> str:
        """The reads pass 1 expects and the most it may make, over this plan's groups, and pass 2's."""
        reads = plan_reads(self)
        one = max(1, self.merge_input_bytes)
        expected = 1 + sum(r.nbytes for r in reads if r.expected) / one
        most = 1 + sum(r.nbytes for r in reads) / one
        names = ", ".join([*(r.what for r in reads if r.expected), "merge"])
        line = f"reads: {_count(expected, 'pass', 'passes')} over {_human(self.merge_input_bytes)} expected ({names})"
        extra = [r.unless for r in reads if not r.expected]
        return f"{line}, at most {most:.3g} if {' or '.join(extra)}" if extra else line


def _describe_options(o: MergeOptions) -> str:
    """The options that matter for the method, as the plan states them."""

    def listed(value: float | tuple[float, ...] | None) -> str:
        return "/".join(f"{d:g}" for d in value) if isinstance(value, tuple) else f"{value:g}"

    parts = []
    if o.method.sparsifies:
        parts.append(f"density {listed(o.density)}")
    if o.gamma is not None:
        parts.append(f"gamma {listed(o.gamma)}")
    if o.epsilon is not None:
        parts.append(f"epsilon {listed(o.epsilon)}")
    if o.method.trims:
        parts += [f"scope {o.scope.value}", f"trim {o.trim.value}"]
    if o.method.sparsify.random:
        parts.append(f"seed {o.seed}")
        parts.append(f"rescale {o.rescale_rule.value}" if o.rescale else "no rescale")
    if o.method.consensus:
        parts.append(f"zero sign {o.zero_sign.value}")
    parts += [f"lambda {o.lam}", "normalized" if o.normalize else "not normalized"]
    return ", ".join(parts)


def _count(n: float, one: str, many: str | None = None) -> str:
    """``n`` and a noun, singular when ``n`` is 1: ``1 thread``, ``2 threads``, ``2.25 passes``."""
    number = f"{n:,}" if isinstance(n, int) else f"{n:.3g}"
    return f"{number} {one if n == 1 else many or one + 's'}"


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    raise AssertionError("unreachable")


def _fixed_bytes(n_models: int, threads: int, total_blocks: int) -> int:
    """Pass 1's histograms (:func:`~ooc_ties.pass1.costs.pass1_memory`), the per-block tie quotas, votes and
    kept counts, and the bounce buffer of direct writes."""
    per_block = (2 * n_models + 4) * 8  # tie quotas and kept counts per model, four vote counts
    return pass1_memory(n_models, threads) + total_blocks * per_block + BOUNCE_BYTES + ALIGNMENT


def _check_inputs(base: TensorSource, fts: Sequence[TensorSource]) -> None:
    names = set(base.names)
    for ft in fts:
        missing = sorted(names - set(ft.names))
        if missing:
            raise IncompatibleCheckpointsError(
                f"{ft.label}: tensor {missing[0]!r} is missing (it is in the base, {base.where(missing[0])})"
            )
        extra = sorted(set(ft.names) - names)
        if extra:
            raise IncompatibleCheckpointsError(f"{ft.where(extra[0])} is not in the base model {base.label}")
        for name in base.names:
            b, f = base.info(name), ft.info(name)
            if b.shape != f.shape:
                raise IncompatibleCheckpointsError(
                    f"{ft.where(name)} has shape {list(f.shape)}, but the base has {list(b.shape)} ({base.label})"
                )
            if b.dtype.is_float != f.dtype.is_float or (not b.dtype.is_float and b.dtype != f.dtype):
                raise IncompatibleCheckpointsError(
                    f"{ft.where(name)} has dtype {f.dtype}, but the base has {b.dtype} ({base.label})"
                )


def _check_sign(base: TensorSource, sign: TensorSource) -> None:
    """The sign's model (``--sign-from``): a model like the fine-tuned ones, or a file of elected signs
    (``--save-signs``: int8, the merged tensors only)."""
    if any(sign.info(name).dtype != I8 for name in sign.names):
        _check_inputs(base, [sign])
        return
    floats = {name for name in base.names if base.info(name).dtype.is_float}
    missing = sorted(floats - set(sign.names))
    if missing:
        raise IncompatibleCheckpointsError(f"{sign.label}: the sign of tensor {missing[0]!r} is missing")
    for name in sign.names:
        if name not in floats:
            raise IncompatibleCheckpointsError(f"{sign.where(name)} is not a merged tensor of the base {base.label}")
        if sign.info(name).shape != base.info(name).shape:
            raise IncompatibleCheckpointsError(
                f"{sign.where(name)} has shape {list(sign.info(name).shape)}, but the base has "
                f"{list(base.info(name).shape)} ({base.label})"
            )


def _merged_dtype(options: MergeOptions, dtype: DType) -> DType:
    """The output dtype of a merged tensor stored as ``dtype`` in the base (float64 becomes float32)."""
    return options.out_dtype or (F32 if dtype == F64 else dtype)


def make_plan(
    base: TensorSource,
    fts: Sequence[TensorSource],
    options: MergeOptions,
    resources: Resources,
    sign: TensorSource | None = None,
) -> MergePlan:
    """Validate that the checkpoints line up (``sign``: the sign's model, ``--sign-from``) and plan the
    merge."""
    if not fts:
        raise OptionError(f"no fine-tuned model given: {options.method.name} needs at least one")
    options.model_weights(len(fts))  # checks the number of weights
    if (sign is None) != (options.sign_from is None):
        raise OptionError("sign_from names the sign's model, which must be opened with the inputs")
    _check_inputs(base, fts)
    if sign is not None:
        _check_sign(base, sign)
    n = len(fts)

    floats = [name for name in base.names if base.info(name).dtype.is_float]
    out_dtypes = {_merged_dtype(options, base.info(name).dtype) for name in floats}
    mixed = any(len({ft.info(name).dtype for ft in fts}) > 1 for name in floats)
    # Pass 2 holds two output blocks per worker for each output dtype (one being merged, one queued for
    # writing: write_queue pools buffers per dtype), and decodes each input to float32 when the
    # fine-tuned models of a tensor come in different dtypes (the kernels need one dtype for all).
    per_element = 2 * sum(d.itemsize for d in out_dtypes) + (4 * (n + 1) if mixed else 0)
    if options.method.sparsify.random:
        per_element += n  # each worker's drop masks: a byte per element and model
    if options.majority_vote:  # each worker's records of open elements: an int64 index and a value
        per_element += 8 + max((d.itemsize for d in out_dtypes), default=0)
    fixed = _fixed_bytes(n, resources.threads, 0)
    room = resources.memory_budget - fixed
    block = min(MAX_BLOCK_ELEMENTS, room // max(1, resources.threads * per_element))
    if resources.max_block_elements is not None and block >= 1:
        block = min(block, resources.max_block_elements)
    elif block < MIN_BLOCK_ELEMENTS:
        need = fixed + resources.threads * MIN_BLOCK_ELEMENTS * per_element
        raise OptionError(
            f"memory budget {_human(resources.memory_budget)} is too small for {n} models on "
            f"{resources.threads} threads (need at least {_human(need)})"
        )

    if options.method.sparsify is Sparsify.DELLA and floats:
        widest = max(floats, key=lambda name: row_length(base.info(name).shape))
        row = row_length(base.info(widest).shape)
        if block < row:
            fix = (
                "raise --memory-budget"
                if row <= MAX_BLOCK_ELEMENTS
                else f"longer than the largest block, {MAX_BLOCK_ELEMENTS:,} values, whatever the budget"
            )
            raise OptionError(
                f"{base.where(widest)}: DELLA ranks whole rows, and this tensor has rows of {row:,} values, but "
                f"memory budget {_human(resources.memory_budget)} gives blocks of {block:,} ({fix})"
            )
    tensors = []
    for name in base.names:
        b = base.info(name)
        in_dtypes = (b.dtype, *(ft.info(name).dtype for ft in fts))
        if b.dtype.is_float:
            kind = TensorKind.MERGE
            out_dtype = _merged_dtype(options, b.dtype)
        else:
            kind, out_dtype = TensorKind.COPY, b.dtype
        tensors.append(TensorPlan(name, b.shape, kind, in_dtypes, out_dtype, ChunkGrid.for_block_size(b.shape, block)))
    plan = MergePlan(
        options=options,
        resources=resources,
        n_models=n,
        tensors=tuple(tensors),
        shards=layout_shards([(t.name, t.out_nbytes) for t in tensors], resources.shard_size),
        block_elements=block,
        work_bytes_per_element=per_element,
    )
    if plan.peak_memory_estimate > resources.memory_budget:
        raise OptionError(
            f"memory budget {_human(resources.memory_budget)} is too small: the per-block bookkeeping of "
            f"{plan.total_blocks:,} blocks needs {_human(plan.peak_memory_estimate)}"
        )
    return plan
