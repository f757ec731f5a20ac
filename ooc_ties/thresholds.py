"""Pass 1: exact trim thresholds, tie quotas and the majority sign, without sorting anything.

For each *group* (the whole model in global scope, one tensor in tensor scope) and each fine-tuned model,
the wanted order statistic of ``|tau|`` is found by a two-level radix select over float32 bit patterns:

1. a histogram of the high 16 bits over every block names the bin holding the wanted rank;
2. a histogram of the low 16 bits of the values in that bin names the exact bit pattern.

Both are integer histograms added across blocks, so the threshold is exactly the value a full sort
would give. The two levels share one read: a high-bits histogram of a fixed sample of the group's blocks
(every :data:`SAMPLE_STRIDE`-th) names the few bins most likely to hold the wanted rank (the
*bracket*, see :func:`choose_bracket`), and one read of every block counts the high-bits histogram
between the bracket's lowest and highest bins (its *span*), the values below and above the span, and
the low bits of every value in the bracket. If the exact bin, known after that read, is in the bracket
the pattern is exact at once; if it is in the span, a second read counts the low bits of that bin; if
it lies outside the span, the two-read select runs for that model. Either way the result is the same,
bit for bit. Then, only where needed:

3. the ``topk`` rule keeps exactly ``m`` values, so when some values equal to the threshold must be
   dropped, the number of such values in every block is counted, and a running sum tells each block
   how many of its own to keep (lowest flat index first);
4. the ``majority`` zero-sign rule needs the sign of (#positive - #negative) elected signs over the
   group, counted with the final trim. Pass 1 first votes on a fixed sample of blocks (every
   :data:`SAMPLE_STRIDE`-th); when the sample is decisive it only *guesses* the sign from it, and
   pass 2, which counts the votes of every block anyway, settles the exact sign and corrects the
   elements whose result depended on a wrong guess (see ``merge.py``). Otherwise the other blocks vote
   too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ooc_ties.config import MergeOptions, Scope, TrimRule, ZeroSign
from ooc_ties.errors import NonFiniteValueError, OptionError
from ooc_ties.identity import InputsIdentity
from ooc_ties.inputs import MergeInputs
from ooc_ties.kernels.histogram import (
    HIGH_BINS,
    LOW_BINS,
    bracket_counts,
    bracket_histogram,
    bracket_span,
    bracket_split,
    bracket_table,
    count_equal,
    high_histogram,
    low_histogram,
)
from ooc_ties.kernels.ties import elect_count
from ooc_ties.plan import MergePlan, TensorPlan
from ooc_ties.progress import Progress, ProgressFactory, progress_bar
from ooc_ties.schedule import run_blocks

__all__ = [
    "BRACKET_BINS",
    "GLOBAL",
    "SAMPLE_STRIDE",
    "BlockRef",
    "GroupThreshold",
    "Pass1Read",
    "Pass1Result",
    "Thresholds",
    "choose_bracket",
    "compute_thresholds",
    "max_reads",
    "pass1_reads",
    "plan_blocks",
    "plan_reads",
    "vote_sample",
]

GLOBAL = ""
"""The group key of the whole model (global scope)."""

logger = logging.getLogger(__name__)

SAMPLE_STRIDE = 8
"""Pass 1 samples every 8th block of a group (the first block at least): its high-bits histogram
brackets the thresholds, and its votes guess the majority sign."""
BRACKET_BINS = 8
"""High bins whose low bits the one-read select counts, per model: ``8 * 512 KiB`` of int64 counts per
model and worker (see ``plan._fixed_bytes``)."""
RANK_SLACK = 0.01
"""The sample's estimate of the wanted rank is trusted to within about 1% of the group (one standard
deviation). Blocks differ more than a binomial sample's error says: on the synthetic 1B tensors, a
sample of 1 block in 4 put the 80% rank 1.3% of the tensor away from the truth."""
OPEN_CAPACITY = 4096
"""Pass 2 records at most this many open elements per block (with their result under the other sign)."""
OPEN_RECORD_BYTES = 12
"""Memory of one recorded open element: its index and its other result."""
PATCH_SHARE = 16
"""Recorded open elements may use up to 1/16 of the memory budget over the whole merge."""
DECISIVE_MARGIN = 10.0
"""A sample is *decisive* if ``|pos - neg| >= 10 * sqrt(pos + neg)``: far beyond a coin's chance."""

_FORMAT = "ooc-ties-thresholds/2"


@dataclass(frozen=True, slots=True)
class GroupThreshold:
    """The trim of one fine-tuned model over one group."""

    size: int
    """Values in the group."""
    pattern: int
    """Float32 bit pattern of the threshold ``t``: values with ``|tau| > t`` are kept."""
    keep_equal: int
    """How many values with ``|tau| == t`` are kept, lowest flat index first; ``-1``: all of them."""
    kept: int
    """Values kept in all."""

    @property
    def value(self) -> float:
        return float(np.uint32(self.pattern).view(np.float32))

    @classmethod
    def keep_all(cls, size: int) -> GroupThreshold:
        return cls(size, 0, -1, size)


@dataclass(frozen=True, slots=True)
class ThresholdBasis:
    """The options pass 1 depends on: thresholds are valid for another merge only with the same basis."""

    scope: Scope
    """Global (one group) or per tensor (one group per tensor)."""
    density: float
    """Density of the trim."""
    trim: TrimRule
    """The tie rule at the threshold."""
    zero_sign: ZeroSign
    """The zero-sign rule (the majority vote depends on it)."""
    weights: tuple[float, ...]
    """Per-model weights as float32 values (the majority vote is weighted)."""

    @classmethod
    def of(cls, options: MergeOptions, n_models: int) -> ThresholdBasis:
        weights = tuple(float(w) for w in options.model_weights(n_models))
        return cls(options.scope, options.density, options.trim, options.zero_sign, weights)

    def to_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope.value,
            "density": self.density,
            "trim": self.trim.value,
            "zero_sign": self.zero_sign.value,
            "weights": list(self.weights),
        }


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The result of pass 1 that does not depend on block sizes: save it, load it, merge with it again.

    The merged output does not depend on ``lambda`` or the output dtype through pass 1, so thresholds
    computed once serve any number of merges that differ only in those (see :func:`ooc_ties.merge`).
    """

    basis: ThresholdBasis
    """The options they were computed under."""
    groups: Mapping[str, tuple[GroupThreshold, ...]]
    """Per group key (:data:`GLOBAL` or a tensor name), one threshold per fine-tuned model."""
    majority: Mapping[str, int]
    """Per group key, the majority sign (+1, 0 or -1); empty unless the zero-sign rule is majority."""
    inputs: InputsIdentity | None = None
    """What the inputs were (files, sizes, times, sampled content: :mod:`ooc_ties.identity`); ``None`` if
    an input had no identity (arrays in memory, a remote store)."""

    @property
    def scope(self) -> Scope:
        return self.basis.scope

    def key(self, tensor: str) -> str:
        return GLOBAL if self.scope is Scope.GLOBAL else tensor

    def for_tensor(self, tensor: str) -> tuple[GroupThreshold, ...]:
        return self.groups[self.key(tensor)]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "basis": self.basis.to_json(),
            "inputs": self.inputs.to_json() if self.inputs is not None else None,
            "groups": {
                k: [
                    {
                        "size": g.size,
                        "threshold": g.value,
                        "pattern": g.pattern,
                        "keep_equal": g.keep_equal,
                        "kept": g.kept,
                    }
                    for g in v
                ]
                for k, v in self.groups.items()
            },
            "majority": dict(self.majority),
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "thresholds") -> Thresholds:
        """Rebuild from :meth:`to_json` output; ``where`` names the source in error messages."""
        try:
            if data["format"] != _FORMAT:
                raise OptionError(f"{where}: format {data['format']!r} is not {_FORMAT!r}")
            b = data["basis"]
            basis = ThresholdBasis(
                Scope(b["scope"]),
                float(b["density"]),
                TrimRule(b["trim"]),
                ZeroSign(b["zero_sign"]),
                tuple(float(w) for w in b["weights"]),
            )
            groups = {
                str(key): tuple(
                    GroupThreshold(int(g["size"]), int(g["pattern"]), int(g["keep_equal"]), int(g["kept"]))
                    for g in entries
                )
                for key, entries in data["groups"].items()
            }
            majority = {str(k): int(v) for k, v in data["majority"].items()}
            inputs = InputsIdentity.from_json(data["inputs"]) if data["inputs"] is not None else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise OptionError(f"{where}: not a thresholds file ({type(exc).__name__}: {exc})") from None
        return cls(basis, types.MappingProxyType(groups), types.MappingProxyType(majority), inputs)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Thresholds:
        """Read a file written by :meth:`save`."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise OptionError(f"{path}: cannot read thresholds ({exc.strerror})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OptionError(f"{path}: thresholds file is not valid JSON ({exc})") from None
        return cls.from_json(data, str(path))

    def check_fits(self, plan: MergePlan, inputs: MergeInputs) -> None:
        """Refuse thresholds computed under other options, or for other inputs, than this merge's."""
        if len(self.basis.weights) != plan.n_models:
            raise OptionError(
                f"thresholds were computed for {len(self.basis.weights)} fine-tuned models; "
                f"this merge has {plan.n_models}"
            )
        wanted = ThresholdBasis.of(plan.options, plan.n_models)
        if self.basis != wanted:
            theirs, ours = self.basis.to_json(), wanted.to_json()
            diff = ", ".join(f"{k} {theirs[k]!r} (merge has {ours[k]!r})" for k in ours if theirs[k] != ours[k])
            raise OptionError(f"thresholds were computed with other options: {diff}")
        now = inputs.identity()
        if now is None or self.inputs is None:
            logger.warning(
                "thresholds: an input is in memory or on a remote store, so only pass 2's kept counts check "
                "that they were computed for these inputs"
            )
        else:
            why = self.inputs.mismatch(now)
            if why is not None:
                raise OptionError(f"thresholds were computed for other inputs: {why}")
        sizes = _group_sizes(plan)
        if set(sizes) != set(self.groups):
            missing = sorted(set(sizes) ^ set(self.groups))[0]
            raise OptionError(f"thresholds do not cover the same tensors as this merge (e.g. {missing!r})")
        for key, size in sizes.items():
            given = self.groups[key]
            if len(given) != plan.n_models or any(g.size != size for g in given):
                label = "the model" if key == GLOBAL else f"tensor {key!r}"
                raise OptionError(f"thresholds for {label} were computed for other sizes or model counts")
            if self.basis.zero_sign is ZeroSign.MAJORITY and key not in self.majority:
                raise OptionError(f"thresholds lack the majority sign of group {key!r}")


def _group_sizes(plan: MergePlan) -> dict[str, int]:
    if plan.options.scope is Scope.GLOBAL:
        return {GLOBAL: plan.merged_parameters}
    return {t.name: t.numel for t in plan.merged}


@dataclass(frozen=True, slots=True)
class BlockRef:
    """One block of one merged tensor, with its position among all blocks of the merge."""

    tensor: TensorPlan
    """The tensor."""
    start: int
    """First element."""
    stop: int
    """One past the last element."""
    ordinal: int
    """Index of this block in the merge's block order (tensor name order, then C order)."""

    @property
    def in_nbytes(self) -> int:
        return (self.stop - self.start) * sum(d.itemsize for d in self.tensor.in_dtypes)


def plan_blocks(tensors: Sequence[TensorPlan]) -> list[BlockRef]:
    """Every block of ``tensors`` in merge order, numbered."""
    refs: list[BlockRef] = []
    for tensor in tensors:
        for start, stop in tensor.grid.blocks():
            refs.append(BlockRef(tensor, start, stop, len(refs)))
    return refs


def _select(hist: np.ndarray, rank: int) -> tuple[int, int]:
    """The bin holding the ``rank``-th smallest value (1-based), and how many values lie below it."""
    cumulative = np.cumsum(hist)
    index = int(np.searchsorted(cumulative, rank))
    return index, int(cumulative[index] - hist[index])


def _wanted_rank(size: int, density: float, trim: TrimRule) -> tuple[int, int] | None:
    """``(rank, m)``: the ascending rank of the threshold and the count kept; ``None`` to keep all."""
    m = int(size * density)  # in double precision, as the reference code does
    if trim is TrimRule.TOPK:
        m = max(1, m)  # mergekit keeps at least one value
        return None if m >= size else (size - m + 1, m)
    return None if m >= size else (size - m, m)


class _Pass1:
    def __init__(self, plan: MergePlan, inputs: MergeInputs, bar: Progress | None) -> None:
        self.plan = plan
        self.inputs = inputs
        self.bar = bar
        self.bytes_read = 0
        self.budget = 0
        """Bytes the progress total covers: read so far, and what the current group is expected to read."""
        self.n = plan.n_models
        self.threads = plan.resources.threads
        self.weights = plan.options.model_weights(self.n)

    def _run(
        self,
        label: str,
        blocks: Sequence[BlockRef],
        work: Callable[[BlockRef, np.ndarray, tuple[np.ndarray, ...], Any], None],
        new_state: Callable[[], Any],
    ) -> list[Any]:
        """Run ``work(ref, base, fts, state)`` on every block's inputs; return the worker states."""
        logger.debug("pass 1: %s over %d blocks", label, len(blocks))
        nbytes = sum(b.in_nbytes for b in blocks)
        if self.bar is not None and self.bytes_read + nbytes > self.budget:  # a read beyond the expected ones
            self.bar.grow(self.bytes_read + nbytes - self.budget)
            self.budget = self.bytes_read + nbytes
        self.bytes_read += nbytes

        def task(ref: BlockRef, state: Any) -> None:
            base, fts = self.inputs.block(ref.tensor.name, ref.start, ref.stop)
            work(ref, base, fts, state)
            self.inputs.release(ref.tensor.name, ref.start, ref.stop)

        return run_blocks(blocks, task, new_state, threads=self.threads, cost=lambda b: b.in_nbytes, progress=self.bar)

    def _check_finite(self, ref: BlockRef, bad: np.ndarray) -> None:
        for t in range(self.n):
            if bad[t] >= 0:
                index = ref.start + int(bad[t])
                raise NonFiniteValueError(self.inputs.describe_nonfinite(ref.tensor.name, index, t))

    def high(self, label: str, blocks: Sequence[BlockRef], *, check: bool = True) -> np.ndarray:
        """High-bits histograms of ``blocks``; a non-finite value is an error only if ``check``."""

        def work(ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], hist: np.ndarray) -> None:
            bad = np.full(self.n, -1, np.int64)  # per block: a worker goes on after another block fails
            high_histogram(base, fts, hist, bad)
            if check:
                self._check_finite(ref, bad)

        states = self._run(label, blocks, work, lambda: np.zeros((self.n, HIGH_BINS), np.int64))
        return sum(states, np.zeros((self.n, HIGH_BINS), np.int64))

    def bracketed(
        self, label: str, blocks: Sequence[BlockRef], slots: np.ndarray, span: np.ndarray
    ) -> list[np.ndarray]:
        """One read for both levels: per worker, the counts of :func:`bracket_histogram` for ``slots``
        and their ``span`` (:func:`bracket_span`)."""
        table = bracket_table(slots)

        def work(ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], counts: np.ndarray) -> None:
            bad = np.full(self.n, -1, np.int64)
            bracket_histogram(base, fts, table, span, counts, bad)
            self._check_finite(ref, bad)

        return self._run(label, blocks, work, lambda: bracket_counts(self.n, BRACKET_BINS, table))

    def low(self, label: str, blocks: Sequence[BlockRef], high_bins: np.ndarray) -> np.ndarray:
        def work(ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], hist: np.ndarray) -> None:
            low_histogram(base, fts, high_bins, hist)

        states = self._run(label, blocks, work, lambda: np.zeros((self.n, LOW_BINS), np.int64))
        return sum(states, np.zeros((self.n, LOW_BINS), np.int64))

    def equal_counts(self, label: str, blocks: Sequence[BlockRef], patterns: np.ndarray) -> np.ndarray:
        """``(len(blocks), models)``: values equal to each model's pattern, per block of the group."""
        rows = {ref.ordinal: row for row, ref in enumerate(blocks)}
        out = np.zeros((len(blocks), self.n), np.int64)

        def work(ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], _: None) -> None:
            count_equal(base, fts, patterns, out[rows[ref.ordinal]])

        self._run(label, blocks, work, lambda: None)
        return out

    def vote(self, label: str, blocks: Sequence[BlockRef], thr: np.ndarray, quotas: np.ndarray) -> tuple[int, int, int]:
        """``(#S > 0, #S < 0, #open)`` over ``blocks``."""

        def work(ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], counts: np.ndarray) -> None:
            elect_count(base, fts, thr, quotas[ref.ordinal], self.weights, counts)

        states = self._run(label, blocks, work, lambda: np.zeros(3, np.int64))
        total = sum(states, np.zeros(3, np.int64))
        return int(total[0]), int(total[1]), int(total[2])

    def majority(
        self, blocks: Sequence[BlockRef], result: tuple[GroupThreshold, ...], quotas: np.ndarray, label: str
    ) -> tuple[int, bool]:
        """The group's majority sign, and whether it is only a guess from a sample of its blocks.

        Pass 2 counts every block's votes anyway and settles the exact sign. A wrong guess costs
        correcting the *open* elements, which pass 2 records with their other result (see
        ``merge.py``), or merging again the blocks whose open elements it could not record. So the
        sample's sign is taken when the sample is decisive (a wrong guess is then very unlikely), or
        when the open elements the sample predicts fit the room pass 2 has for them; otherwise every
        block votes here (bf16 models often have a few percent of open elements).
        """
        thr = np.array([g.value for g in result], np.float32)
        sample = vote_sample(blocks)
        pos, neg, open_ = self.vote(f"{label}majority sign (sample)", sample, thr, quotas)
        if len(sample) == len(blocks):
            return int(np.sign(pos - neg)), False
        decisive = abs(pos - neg) >= DECISIVE_MARGIN * math.sqrt(max(pos + neg, 1))
        rate = open_ / max(1, sum(b.stop - b.start for b in sample))
        expected = rate * sum(b.stop - b.start for b in blocks)
        room = self.plan.resources.memory_budget // PATCH_SHARE
        fits = expected * OPEN_RECORD_BYTES <= room / 2 and rate * self.plan.block_elements <= OPEN_CAPACITY / 2
        logger.debug(
            "majority sign of %s: sample %d vs %d, about %d open elements (%s)",
            label or "the model",
            pos,
            neg,
            expected,
            "decisive" if decisive else "recordable" if fits else "too many to record: full vote",
        )
        if decisive or fits:
            return int(np.sign(pos - neg)), True
        # Every block votes; the sample's blocks have (integer counts add in any order).
        sampled = {b.ordinal for b in sample}
        rest = [b for b in blocks if b.ordinal not in sampled]
        more_pos, more_neg, _ = self.vote(f"{label}majority sign", rest, thr, quotas)
        return int(np.sign(pos + more_pos - neg - more_neg)), False

    def group(
        self, key: str, blocks: Sequence[BlockRef], quotas: np.ndarray, label: str, given: Thresholds | None
    ) -> tuple[tuple[GroupThreshold, ...], int | None, bool]:
        """Thresholds of one group, its block quotas (written into ``quotas``), its majority sign, and
        whether that sign is a guess (see :meth:`majority`).

        With ``given`` thresholds only the block quotas are computed (they depend on the block grid).
        """
        options = self.plan.options
        size = sum(b.stop - b.start for b in blocks)
        wanted = _wanted_rank(size, options.density, options.trim) if size and given is None else None
        if given is not None:
            result = given.groups[key]
        elif wanted is None:
            result = tuple(GroupThreshold.keep_all(size) for _ in range(self.n))
        else:
            rank, m = wanted
            groups = []
            for high_bin, below_high, low in self.levels(blocks, rank, size, label):
                low_bin, below_low = _select(low, rank - below_high)
                equal = int(low[low_bin])
                less = below_high + below_low
                pattern = (high_bin << 16) | low_bin
                if options.trim is TrimRule.THRESHOLD:
                    groups.append(GroupThreshold(size, pattern, -1, size - less))
                else:
                    keep_equal = m - (size - less - equal)
                    groups.append(GroupThreshold(size, pattern, -1 if keep_equal == equal else keep_equal, m))
            result = tuple(groups)
        self._quotas(blocks, result, quotas, label)
        if options.zero_sign is not ZeroSign.MAJORITY:
            return result, None, False
        if given is not None:
            return result, given.majority[key], False
        return (result, *self.majority(blocks, result, quotas, label))

    def levels(self, blocks: Sequence[BlockRef], rank: int, size: int, label: str) -> list[tuple[int, int, np.ndarray]]:
        """Per model: the high bin holding the ``rank``-th smallest ``|tau|`` of the group, how many values
        lie below that bin, and the bin's low-bits histogram (exactly the two-read select's)."""
        sample = vote_sample(blocks)
        if len(sample) == len(blocks):  # the sample would be the whole group: the two-read select
            high = self.high(f"{label}thresholds", blocks)
            picks = [_select(high[t], rank) for t in range(self.n)]
            bins = np.array([b for b, _ in picks], np.int64)
            low = self.low(f"{label}thresholds, second read", blocks, bins)
            return [(b, below, low[t]) for t, (b, below) in enumerate(picks)]
        # The sample only steers: a non-finite value is reported by the full read, in block order.
        sampled = self.high(f"{label}threshold sample", sample, check=False)
        slots = np.full((self.n, HIGH_BINS), -1, np.int32)
        chance = []
        for t in range(self.n):
            bins, p = choose_bracket(sampled[t], rank, size)
            slots[t, bins] = np.arange(len(bins))
            chance.append(p)
        del sampled
        span = bracket_span(slots)
        states = self.bracketed(f"{label}thresholds", blocks, slots, span)
        split = [bracket_split(counts, slots) for counts in states]
        high = sum((h for h, _ in split), np.zeros((self.n, HIGH_BINS), np.int64))
        picks = [_select(high[t], rank) for t in range(self.n)]
        lows: list[np.ndarray] = []
        outside = np.full(self.n, -1, np.int64)  # a bin in the span but not in the bracket: its low bits
        unknown = np.zeros(self.n, np.bool_)  # beyond the span: the bin itself is not known
        for t, (b, _) in enumerate(picks):
            slot = int(slots[t, b])
            lows.append(sum((low[t, slot] for _, low in split), np.zeros(LOW_BINS, np.int64)))
            if not span[t, 0] <= b < span[t, 1]:
                unknown[t] = True
            elif slot < 0:
                outside[t] = b
            where = f"bin {b:#x} {'outside' if slot < 0 else 'in'}"
            logger.debug(
                "pass 1: %smodel %d: threshold %s the bracket (estimated chance %.3f)",
                label,
                t + 1,
                f"{'below' if b < span[t, 0] else 'above'} the span of" if unknown[t] else where,
                chance[t],
            )
        del states, split
        if unknown.any():  # the two-read select; only the models that need it are kept
            full = self.high(f"{label}thresholds, second read", blocks)
            for t in np.flatnonzero(unknown).tolist():
                picks[t] = _select(full[t], rank)
                outside[t] = picks[t][0]
        if (outside >= 0).any():
            label_low = "third read" if unknown.any() else "second read"
            low = self.low(f"{label}thresholds, {label_low}", blocks, outside)
            for t in range(self.n):
                if outside[t] >= 0:
                    lows[t] = low[t]
        return [(b, below, lows[t]) for t, (b, below) in enumerate(picks)]

    def _quotas(
        self, blocks: Sequence[BlockRef], groups: tuple[GroupThreshold, ...], quotas: np.ndarray, label: str
    ) -> None:
        ordinals = [b.ordinal for b in blocks]
        quotas[ordinals] = -1
        split = [t for t, g in enumerate(groups) if g.keep_equal >= 0]
        if not split:
            return
        patterns = np.array([g.pattern if g.keep_equal >= 0 else -1 for g in groups], np.int64)
        counts = self.equal_counts(f"{label}tie counts", blocks, patterns)
        for t in split:
            per_block = counts[:, t]
            before = np.cumsum(per_block) - per_block
            quotas[ordinals, t] = np.clip(groups[t].keep_equal - before, 0, per_block)


@dataclass(frozen=True, slots=True)
class Pass1Result:
    """What pass 1 hands to pass 2."""

    thresholds: Thresholds
    """Thresholds and majority signs (independent of the block grid)."""
    quotas: np.ndarray
    """``(blocks, models)`` ties to keep per block (``-1``: all), in :func:`plan_blocks` order."""
    bytes_read: int
    """Input bytes pass 1 read."""
    guessed: frozenset[str]
    """Group keys whose majority sign in ``thresholds`` is a guess from a sample, for pass 2 to settle."""


def vote_sample(blocks: Sequence[BlockRef]) -> list[BlockRef]:
    """The blocks of a group pass 1 samples: to bracket the thresholds and to guess the majority sign."""
    return list(blocks[::SAMPLE_STRIDE])


def choose_bracket(sampled: np.ndarray, rank: int, size: int, bins: int = BRACKET_BINS) -> tuple[np.ndarray, float]:
    """The high bins most likely to hold the ``rank``-th smallest of ``size`` values, judged from a
    sample's high-bits histogram ``sampled``: at most ``bins`` of them, in ascending order, and the
    estimated chance that the wanted bin is one of them.

    The wanted value sits at position ``p = rank / size * s`` of the ``s`` sampled values, give or take
    ``sigma``: the binomial error of a sample of ``s`` values, or :data:`RANK_SLACK` of ``s``, whichever
    is larger (blocks are not independent values). Each bin the sample saw gets the chance that a normal
    ``N(p, sigma)`` falls within the positions it covers; the bracket is the ``bins`` likeliest. So where
    bins are dense it is the run of bins around ``p``, and where they are sparse (bf16 task vectors, whose
    magnitudes are a few multiples of the base's steps) it is the few heavy bins within reach, however far
    apart. The choice only decides whether a second read is needed, never the result.
    """
    s = int(sampled.sum())
    seen = np.flatnonzero(sampled)
    if s == 0:
        return seen, 0.0
    q = rank / size
    p = q * s
    sigma = max(math.sqrt(s * q * (1.0 - q)), RANK_SLACK * s, 1.0)
    below = np.cumsum(sampled)[seen] - sampled[seen]
    lo = (below - p) / sigma
    hi = (below + sampled[seen] - p) / sigma
    near = (hi > -12.0) & (lo < 12.0)  # the rest have no chance worth a slot
    seen, lo, hi = seen[near], lo[near], hi[near]
    erf = np.frompyfunc(math.erf, 1, 1)
    chance = (0.5 * (erf(hi / math.sqrt(2.0)) - erf(lo / math.sqrt(2.0)))).astype(np.float64)
    best = np.lexsort((seen, -chance))[:bins]  # likeliest first; equal chances: lower bins
    return np.sort(seen[best]), float(chance[best].sum())


def compute_thresholds(
    plan: MergePlan, inputs: MergeInputs, progress: ProgressFactory | None = None, given: Thresholds | None = None
) -> Pass1Result:
    """Pass 1: the thresholds, and the per-block tie quotas pass 2 needs.

    With ``given`` thresholds (checked against the plan) nothing is recomputed but the tie quotas.

    Progress is one bar whose total starts at the reads pass 1 expects (:func:`pass1_reads`) and grows
    when a read beyond them starts; expected reads a group turns out not to need (tie counts where no
    tie is split) are counted as done when the group ends, so the bar ends at its total exactly.
    """
    if given is not None:
        given.check_fits(plan, inputs)
    blocks = plan_blocks(plan.merged)
    quotas = np.full((len(blocks), plan.n_models), -1, np.int64)
    keyed = _groups(plan, blocks)
    expected = {
        key: sum(r.nbytes for r in _group_reads(plan, b, given is not None) if r.expected) for key, b in keyed.items()
    }
    with progress_bar(progress, "pass 1/2: thresholds", sum(expected.values())) as bar:
        runner = _Pass1(plan, inputs, bar)
        thresholds, guessed = _compute(plan, runner, keyed, expected, quotas, given)
    return Pass1Result(thresholds, quotas, runner.bytes_read, guessed)


@dataclass(frozen=True, slots=True)
class Pass1Read:
    """One read pass 1 makes, or may make, of a group (see :func:`pass1_reads`)."""

    what: str
    """What it reads for, as the dry run names it."""
    nbytes: int
    """Bytes it reads."""
    unless: str = ""
    """Empty for a read pass 1 expects to make; else the condition under which it is made."""

    @property
    def expected(self) -> bool:
        return not self.unless


def pass1_reads(options: MergeOptions, full: int, sample: int, given: bool = False) -> tuple[Pass1Read, ...]:
    """Every read pass 1 makes or may make of a group of ``full`` bytes whose sample
    (:func:`vote_sample`) has ``sample`` bytes. This is the one statement of what pass 1 reads: the
    dry run's expected and most reads (``MergePlan.describe``), ``MergePlan.threshold_passes`` and the
    progress total (the expected reads, grown by the others as they start) are all taken from it.

    * Thresholds (density below 1): the sample, and one read for both histogram levels; a second read
      if a threshold lies outside its bracket and a third if it lies outside the bracket's span too.
      When the sample is the whole group (one block), two reads.
    * Tie counts (``topk``, density below 1): one read, skipped where no tie straddles a cut-off. It is
      counted as expected: with bf16 or f16 task vectors ties at the cut-off are the rule.
    * The majority sign (``majority``): the sample's votes; the other blocks vote too (one read in
      all) only if the sample is not decisive and the open elements it predicts do not fit pass 2's
      room for them. When the sample is the whole group, one read.

    ``given`` thresholds skip the histograms and the vote (the tie counts depend on the block grid).
    """
    trims = options.density < 1.0
    reads: list[Pass1Read] = []
    if trims and not given:
        if sample < full:
            reads += [
                Pass1Read("threshold sample", sample),
                Pass1Read("one-read thresholds", full),
                Pass1Read("more threshold reads", 2 * full, "a threshold falls outside its sampled bracket"),
            ]
        else:
            reads.append(Pass1Read("two-read thresholds", 2 * full))
    if trims and options.trim is TrimRule.TOPK:
        reads.append(Pass1Read("tie counts", full))
    if options.zero_sign is ZeroSign.MAJORITY and not given:
        if sample < full:
            reads += [
                Pass1Read("sign-vote sample", sample),
                Pass1Read("other blocks' sign votes", full - sample, "the majority-sign sample is not decisive"),
            ]
        else:
            reads.append(Pass1Read("sign vote", full))
    return tuple(reads)


def max_reads(options: MergeOptions, full: int, sample: int, given: bool = False) -> int:
    """The most pass 1 reads of a group, in bytes: every read of :func:`pass1_reads`."""
    return sum(r.nbytes for r in pass1_reads(options, full, sample, given))


def plan_reads(plan: MergePlan, given: bool = False) -> tuple[Pass1Read, ...]:
    """The reads of :func:`pass1_reads` over every group of ``plan``, added up by what they are for, in
    the order pass 1 makes them; reads of no bytes are left out."""
    total: dict[tuple[str, str], int] = {}
    for group in _groups(plan, plan_blocks(plan.merged)).values():
        for read in _group_reads(plan, group, given):
            total[read.what, read.unless] = total.get((read.what, read.unless), 0) + read.nbytes
    return tuple(Pass1Read(what, nbytes, unless) for (what, unless), nbytes in total.items() if nbytes)


def _group_reads(plan: MergePlan, blocks: Sequence[BlockRef], given: bool) -> tuple[Pass1Read, ...]:
    """:func:`pass1_reads` of one group."""
    full = sum(b.in_nbytes for b in blocks)
    sample = sum(b.in_nbytes for b in vote_sample(blocks))
    return pass1_reads(plan.options, full, sample, given)


def _groups(plan: MergePlan, blocks: list[BlockRef]) -> dict[str, list[BlockRef]]:
    """The blocks of each group, by group key."""
    if plan.options.scope is Scope.GLOBAL:
        return {GLOBAL: blocks}
    keyed: dict[str, list[BlockRef]] = {t.name: [] for t in plan.merged}  # zero-size tensors too
    for ref in blocks:
        keyed[ref.tensor.name].append(ref)
    return keyed


def _compute(
    plan: MergePlan,
    runner: _Pass1,
    keyed: dict[str, list[BlockRef]],
    expected: Mapping[str, int],
    quotas: np.ndarray,
    given: Thresholds | None,
) -> tuple[Thresholds, frozenset[str]]:
    bar = runner.bar
    groups: dict[str, tuple[GroupThreshold, ...]] = {}
    majority: dict[str, int] = {}
    guessed: set[str] = set()
    for key, group_blocks in keyed.items():
        runner.budget = runner.bytes_read + expected[key]
        label = "" if key == GLOBAL else f"{key}: "
        group, sign, guess = runner.group(key, group_blocks, quotas, label, given)
        groups[key] = group
        if sign is not None:
            majority[key] = sign
        if guess:
            guessed.add(key)
        if bar is not None:
            bar.advance(runner.budget - runner.bytes_read)  # expected reads the group did not need
    basis = ThresholdBasis.of(plan.options, plan.n_models)
    thresholds = Thresholds(
        basis, types.MappingProxyType(groups), types.MappingProxyType(majority), runner.inputs.identity()
    )
    return thresholds, frozenset(guessed)
