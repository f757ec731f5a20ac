"""Blocks: the units every pass reads, and the groups pass 1 computes a threshold over.

A merged tensor is cut into blocks on its chunk grid (``TensorPlan.grid``); every block of the merge has
an ordinal, its place in the merge's one block order (tensor name order, then C order), which indexes
per-block results (tie quotas, votes, kept counts, the journal). A *group* is the set of blocks one
threshold is counted over: every block of the model in global scope, the blocks of one tensor in tensor
scope; its key is :data:`GLOBAL` or the tensor's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ooc_ties.config import Scope

if TYPE_CHECKING:
    from ooc_ties.plan import MergePlan, TensorPlan

__all__ = ["GLOBAL", "BlockRef", "group_blocks", "plan_blocks"]

GLOBAL = ""
"""The group key of the whole model (global scope)."""


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


def group_blocks(plan: MergePlan, blocks: list[BlockRef]) -> dict[str, list[BlockRef]]:
    """The blocks of each group, by group key."""
    if plan.options.scope is Scope.GLOBAL:
        return {GLOBAL: blocks}
    keyed: dict[str, list[BlockRef]] = {t.name: [] for t in plan.merged}  # zero-size tensors too
    for ref in blocks:
        keyed[ref.tensor.name].append(ref)
    return keyed
