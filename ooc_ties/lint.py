"""Inputs that are legal but almost surely a mistake: one WARNING line each, and the merge goes on.

* a fine-tuned model given twice (the same values: it counts twice in the vote and the mean);
* the base given as a fine-tuned model (a zero task vector: it only dilutes the mean);
* a fine-tuned model whose task vector is about as large as the base itself (it was probably not
  fine-tuned from this base, and the merge of unrelated models is noise);
* a weight of 0 (the model does not contribute). Every weight 0 is an error (``config.parse_weights``).

The value checks look at a fixed sample of every merged tensor (:data:`SPAN` elements at its start
and at its middle), a few pages per tensor and model, so they cost nothing next to the merge and need
no statistics from pass 1. The size of a task vector is the root mean of ``|tau|^2 / |base|^2`` over
the tensors, each counted by its sampled values: so the large matrices decide it, not the norm
weights, whose base values near 1 would hide any change.

A sample can miss a model that differs from another only in tensors' unsampled parts: these are
warnings, not proofs, and the messages say "sampled".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from ooc_ties.inputs import MergeInputs, kernel_array
from ooc_ties.kernels.convert import decode_oracle
from ooc_ties.plan import MergePlan

__all__ = ["LARGE_TASK_VECTOR", "SPAN", "lint_inputs", "sample_warnings", "weight_warnings"]

logger = logging.getLogger(__name__)

SPAN = 1024
"""Elements sampled at the start and at the middle of every merged tensor."""
LARGE_TASK_VECTOR = 0.5
"""A task vector whose sampled L2 norm is at least half the base's is "as large as the base": real
fine-tunes change a model by a few percent (``|tau| / |base|`` about 0.001-0.1), while two unrelated
models of one architecture differ by about ``sqrt(2)`` times either's norm."""


def _role(t: int, inputs: MergeInputs) -> str:
    return f"fine-tuned model {t + 1} ({inputs.fts[t].label})"


def weight_warnings(weights: np.ndarray, inputs: MergeInputs) -> list[str]:
    """A line for each fine-tuned model whose weight is 0."""
    return [
        f"{_role(t, inputs)} has weight 0: it does not contribute to the merge"
        for t in range(len(weights))
        if weights[t] == 0
    ]


def _spans(numel: int) -> list[tuple[int, int]]:
    if numel <= 2 * SPAN:
        return [(0, numel)] if numel else []
    middle = numel // 2
    return [(0, SPAN), (middle, middle + SPAN)]


def sample_warnings(plan: MergePlan, inputs: MergeInputs) -> list[str]:
    """Lines for models given twice, the base given as a fine-tune, and task vectors as large as the
    base, judged on a sample of every merged tensor (see the module docstring)."""
    n = plan.n_models
    zero = np.ones(n, np.bool_)
    relative_sq = np.zeros(n, np.float64)  # sum over tensors of (sampled values) * |tau|^2 / |base|^2
    same = np.ones((n, n), np.bool_)
    sampled = 0
    for tensor in plan.merged:
        tau_sq = np.zeros(n, np.float64)
        base_sq = 0.0
        count = 0
        for start, stop in _spans(tensor.numel):
            base, *fts = (
                decode_oracle(kernel_array(source.read(tensor.name, start, stop), source.info(tensor.name).dtype))
                for source in inputs.all
            )
            inputs.release(tensor.name, start, stop)
            finite = np.isfinite(base) & np.logical_and.reduce([np.isfinite(f) for f in fts])
            b = base[finite].astype(np.float64)
            base_sq += float(b @ b)
            values = [f[finite] for f in fts]
            for t in range(n):
                tau = values[t].astype(np.float64) - b
                tau_sq[t] += float(tau @ tau)
                for u in range(t + 1, n):
                    same[t, u] &= bool(np.array_equal(values[t], values[u]))
            count += int(finite.sum())
        zero &= tau_sq == 0
        if base_sq > 0:
            relative_sq += count * tau_sq / base_sq
        sampled += count
    if sampled == 0:
        return []
    lines: list[str] = []
    with_base = plan.options.method.uses_base  # (linear's base only gives the layout: one of its models may be it)
    for t in np.flatnonzero(zero & with_base).tolist():
        lines.append(
            f"{_role(t, inputs)} equals the base at all {sampled:,} sampled values: its task vector is zero "
            "(the base given as a fine-tuned model?)"
        )
    for t in range(n):
        for u in range(t + 1, n):
            if same[t, u] and not zero[t]:
                lines.append(
                    f"fine-tuned models {t + 1} and {u + 1} ({inputs.fts[t].label}, {inputs.fts[u].label}) hold "
                    f"the same values at all {sampled:,} sampled values: the same model given twice?"
                )
    for t in range(n):
        ratio = math.sqrt(relative_sq[t] / sampled)
        if not zero[t] and ratio >= LARGE_TASK_VECTOR:
            lines.append(
                f"{_role(t, inputs)}: its task vector is as large as the base itself (|tau| / |base| = "
                f"{ratio:.3g} on sampled values; fine-tunes are usually below 0.1): was it fine-tuned from "
                f"this base ({inputs.base.label})?"
            )
    return lines


def lint_inputs(
    plan: MergePlan, inputs: MergeInputs, *, sample: bool = True, others: Sequence[MergePlan] = ()
) -> list[str]:
    """Log a WARNING line for each suspicious input (``sample``: also the value checks, which read a
    few pages of every tensor); return the lines. ``others``: more merges of the same inputs (a grid),
    whose weights are checked too, each set of weights once."""
    lines: Sequence[str] = []
    seen: set[tuple[float, ...]] = set()
    for each in (plan, *others):
        weights = each.options.model_weights(each.n_models)
        if tuple(weights.tolist()) not in seen:
            seen.add(tuple(weights.tolist()))
            lines = [*lines, *(line for line in weight_warnings(weights, inputs) if line not in lines)]
    if sample:
        lines = [*lines, *sample_warnings(plan, inputs)]
    for line in lines:
        logger.warning("%s", line)
    return list(lines)
