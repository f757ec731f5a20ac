"""One block's merge: the merge kernel's arguments for a block, as a value a cluster's worker can run.

:class:`BlockMerge` holds what a block's merge needs besides its inputs and outputs (thresholds, tie
quotas, weights, the guessed majority signs, the drop or band); it pickles, so pass 2's threads
(:mod:`ooc_ties.pass2`) and a cluster's workers (:mod:`ooc_ties.remote_merge`) run the same code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ooc_ties.blocks import BlockRef
from ooc_ties.config import MergeOptions
from ooc_ties.dtypes import DType
from ooc_ties.errors import NonFiniteValueError
from ooc_ties.inputs import MergeInputs
from ooc_ties.kernels.ties import merge as merge_kernel
from ooc_ties.sparsity import Sparsity
from ooc_ties.tensor_weights import TensorWeights

__all__ = ["BlockMerge", "out_storage"]


def out_storage(dtype: DType) -> np.dtype:
    """The kernel encoding of an output dtype (uint16 = bf16, int16 = f16, float32)."""
    encodings: dict[str, np.dtype] = {
        "BF16": np.dtype(np.uint16),
        "F16": np.dtype(np.int16),
        "F32": np.dtype(np.float32),
    }
    return encodings[dtype.code]


@dataclass(frozen=True, slots=True)
class BlockMerge:
    """Everything one block's merge needs besides its inputs and outputs: a pure function of them.

    It pickles (the inputs travel as their paths), so a cluster's worker runs the very code the
    driver's threads run (:class:`RemoteMerge`)."""

    inputs: MergeInputs
    """The inputs (to name the input behind a non-finite result)."""
    options: MergeOptions
    """The merge's options (each tensor's weights)."""
    n: int
    """Fine-tuned models."""
    key: Callable[[str], str]
    """A tensor's threshold group."""
    thr: Mapping[str, np.ndarray]
    """Per group, the float32 thresholds."""
    zero_positive: dict[str, bool]
    """Per group, whether an exact zero vote takes the positive sign (a guess until pass 2 settles it)."""
    guessed: frozenset[str]
    """Groups whose majority sign is a guess: their open elements are recorded."""
    quotas: np.ndarray
    """Per block, the ties each model keeps."""
    sparsity: Sparsity | None
    """The drop or band, if the method has one."""
    open_capacity: int
    """Room for a block's open elements (0: none recorded)."""
    weights: TensorWeights = dataclasses.field(init=False, compare=False)
    """Each tensor's float32 weights."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", TensorWeights(self.options, self.n))

    def merge(
        self,
        ref: BlockRef,
        base: np.ndarray,
        fts: tuple[np.ndarray, ...],
        out: np.ndarray,
        votes: np.ndarray,
        kept: np.ndarray,
        at: np.ndarray,
        alt: np.ndarray,
        *,
        redoing: bool,
        counts: tuple[np.ndarray, ...] = (),
    ) -> int:
        """Merge a block into ``out``; count its votes (``votes``: #S>0, #S<0, open elements, open
        elements not recorded) and, if ``kept`` has a row's length, the values each model kept; record its
        open elements in ``at``/``alt`` (their indices and their other result) where the majority sign is
        a guess. Returns how many were recorded (all of them, or 0).

        With ``counts`` (``--report``: the magnitudes, elected signs and outputs from
        :meth:`~ooc_ties.report.collect.Collector.fresh`), the same kernel call also counts the block's
        interference statistics into them (the kernel's ``counts`` argument)."""
        name = ref.tensor.name
        key = self.key(name)
        votes[:] = 0
        kept[:] = 0
        capacity = self.open_capacity if key in self.guessed and not redoing else 0
        quota, sparsity = self.quotas[ref.ordinal], None
        if self.sparsity is not None:
            quota, sparsity = self.sparsity.block_args(ref, base, fts, quota)
        args = (
            base,
            fts,
            self.thr[key],
            quota,
            self.weights(name),
            np.float32(self.options.lam),
            self.zero_positive[key],
            self.options.method.consensus,
            bool(self.options.normalize),
            out,
            votes,
            kept,
            at[:capacity],
            alt[:capacity],
            sparsity,
        )
        bad = merge_kernel(*args, (ref.start, *counts) if counts else None)
        if bad >= 0:
            message = self.inputs.describe_nonfinite(name, ref.start + bad, None, ref.tensor.out_dtype)
            raise NonFiniteValueError(message)
        recorded = int(votes[2] - votes[3])
        return recorded if recorded and not votes[3] else 0

    def count(
        self,
        ref: BlockRef,
        base: np.ndarray,
        fts: tuple[np.ndarray, ...],
        out: np.ndarray,
        counts: tuple[np.ndarray, ...],
    ) -> None:
        """Count a block an interrupted run merged, for the report of the resumed merge (``counts`` as for
        :meth:`merge`): the same kernel merges it into ``out``, a scratch block the caller does not write,
        and neither kept values nor open elements are recorded."""
        votes, none = np.zeros(4, np.int64), np.zeros(0, np.int64)
        self.merge(ref, base, fts, out, votes, none, none, out[:0], redoing=True, counts=counts)
