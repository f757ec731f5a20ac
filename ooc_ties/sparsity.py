"""Sparsity: what the kernels need per block beyond the trim thresholds, derived from the method.

TIES and task arithmetic need nothing more: the kernels' fast path (``sparsity=None``). The other
methods hand the kernels (:func:`ooc_ties.kernels.ties.merge`, ``elect_count``) a tuple
``(thr_hi, quota_hi, masks, scales, with_base)``:

* the band's upper cut per model (breadcrumbs), from pass 1's ``outliers`` and the block's quotas;
* the block's drop masks (DARE, DELLA), drawn here from the counter-based generator of
  :mod:`ooc_ties.kernels.drop`, keyed by (seed, model, tensor name, element index), so pass 1 and pass 2
  draw the same masks for any block grid;
* each model's rescale factor for the tensor: from pass 1's exact L1 norms (:func:`l1_scale`,
  mergekit's rule) or ``float32(1 / density)`` (the DARE paper's);
* whether the method has a base (``linear`` merges the models' own values);
* the block of the sign's model (``--sign-from``), whose task value elects the sign.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ooc_ties.blocks import BlockRef
from ooc_ties.config import MergeOptions, RescaleRule
from ooc_ties.errors import OptionError
from ooc_ties.kernels.drop import dare_probability, della_keep_task, random_keep, stream_key, tensor_key
from ooc_ties.methods import Sparsify, row_length
from ooc_ties.pass1.thresholds import GroupThreshold

__all__ = ["RESCALE_EPS", "Sparsity", "l1_scale", "needs_sparsity"]

RESCALE_EPS = np.float32(1e-7)
"""mergekit leaves a task vector unscaled when either L1 norm is below this (compared in float32)."""

_EMPTY_F32 = np.empty(0, np.float32)
_EMPTY_I64 = np.empty(0, np.int64)


def needs_sparsity(options: MergeOptions) -> bool:
    """Whether the kernels need the general rule (anything but TIES' trim and task arithmetic)."""
    method = options.method
    return (
        method.sparsify not in (Sparsify.NONE, Sparsify.MAGNITUDE)
        or not method.uses_base
        or bool(options.rescale)
        or options.sign_from is not None
    )


def l1_scale(whole: np.float32, kept: np.float32) -> np.float32:
    """mergekit's L1 rescale factor ``whole / kept`` in float32, or 1 when either norm is below
    :data:`RESCALE_EPS`."""
    if not (whole >= RESCALE_EPS and kept >= RESCALE_EPS):
        return np.float32(1.0)
    return np.float32(np.float32(whole) / np.float32(kept))


@dataclass(frozen=True, slots=True)
class _TensorDraw:
    """One tensor's values for the drops and the rescale (its own, under a configuration's gradients)."""

    densities: tuple[float, ...]
    epsilons: tuple[float, ...]
    probabilities: tuple[float, ...]
    fixed_scales: np.ndarray | None
    keys: tuple[int, ...]


SignReader = Callable[[str, int, int], np.ndarray]
"""Reads elements ``[start, stop)`` of a tensor of the sign's model (``MergeInputs.sign_block``)."""


class Sparsity:
    """The general rule's per-block arguments for one merge (see the module docstring)."""

    def __init__(
        self,
        options: MergeOptions,
        n_models: int,
        key: Any,
        outliers: Mapping[str, tuple[GroupThreshold, ...]],
        scales: Mapping[str, tuple[float, ...]],
        sign: SignReader | None = None,
    ) -> None:
        self.n = n_models
        self.sign = sign
        self.options = options
        self.method = options.method
        self.key = key
        self.outliers = {k: np.array([g.value for g in v], np.float32) for k, v in outliers.items()}
        self.scales = {k: np.array(v, np.float32) for k, v in scales.items()}
        self._tensors: dict[str, _TensorDraw] = {}

    def _tensor(self, name: str) -> _TensorDraw:
        draw = self._tensors.get(name)
        if draw is None:
            options = self.options.for_tensor(name)
            densities = options.model_densities(self.n)
            fixed = None
            if options.rescale and options.rescale_rule is RescaleRule.DENSITY:
                fixed = np.array([1.0 / d for d in densities], np.float32)
            tk = tensor_key(name)
            draw = self._tensors[name] = _TensorDraw(
                densities,
                options.model_epsilons(self.n),
                tuple(dare_probability(d) for d in densities),
                fixed,
                tuple(stream_key(options.seed, t, tk) for t in range(self.n)),
            )
        return draw

    @property
    def draws(self) -> bool:
        """Whether blocks get drop masks (some tensor of some model keeps less than all)."""
        if not self.method.sparsify.random:
            return False
        tables = [self.options, *(self.options.for_tensor(name) for name in self.options.per_tensor or ())]
        return any(o.drops for o in tables)

    def masks(self, ref: BlockRef, base: Any, fts: tuple[Any, ...]) -> np.ndarray:
        """The block's drop masks, one uint8 row per model (shape ``(models, 0)`` if nothing is drawn)."""
        if not self.method.sparsify.random:
            return np.empty((self.n, 0), np.uint8)
        draw = self._tensor(ref.tensor.name)
        if min(draw.densities) >= 1.0:  # every model keeps all of this tensor
            return np.empty((self.n, 0), np.uint8)
        size = ref.stop - ref.start
        masks = np.empty((self.n, size), np.uint8)
        for t in range(self.n):
            key = np.uint64(draw.keys[t])
            if self.method.sparsify is Sparsify.RANDOM:
                random_keep(key, ref.start, draw.probabilities[t], masks[t])
            else:
                ncols = row_length(ref.tensor.shape)
                if ref.start % ncols or size % ncols:
                    raise OptionError(  # (make_plan sizes blocks to whole rows; this is a safeguard)
                        f"{ref.tensor.name}: DELLA ranks whole rows of {ncols} values, but a block cuts a row"
                    )
                della_keep_task(
                    key,
                    ref.start,
                    base,
                    fts[t],
                    self.method.uses_base,
                    ncols,
                    draw.densities[t],
                    draw.epsilons[t],
                    masks[t],
                )
        return masks

    def block_args(
        self, ref: BlockRef, base: Any, fts: tuple[Any, ...], quotas: np.ndarray, masks: np.ndarray | None = None
    ) -> tuple[np.ndarray, tuple[Any, ...] | None]:
        """The block's ``(quota, sparsity)`` kernel arguments; ``quotas``: the block's row of pass 1's
        quotas (the band's upper cut in columns ``n..2n``); ``masks``: already drawn, or drawn here."""
        quota = quotas[: self.n]
        name = ref.tensor.name
        band = self.outliers.get(self.key(name))
        if masks is None:
            masks = self.masks(ref, base, fts)
        fixed = self._tensor(name).fixed_scales if self.method.sparsify.random else None
        scales = fixed if fixed is not None else self.scales.get(name)
        return quota, (
            band if band is not None else _EMPTY_F32,
            quotas[self.n :] if band is not None else _EMPTY_I64,
            masks,
            scales if scales is not None else _EMPTY_F32,
            self.method.uses_base,
            self.sign(name, ref.start, ref.stop) if self.sign is not None else _EMPTY_F32,
        )
