"""The in-RAM NumPy reference: the specification the out-of-core engine must match byte for byte.

It follows the TIES reference code's structure (flatten, ``topk_values_mask``, ``resolve_sign``,
``disjoint_merge``) on whole task vectors held in memory, with full sorts instead of histograms. It is
meant for small models (tests) and for the benchmark where the model fits in RAM; it shares no code
with the engine's kernels or pass 1, so agreement between the two is evidence, not tautology.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import numpy as np

from ooc_ties.config import PRESETS, MergeOptions, Scope, TrimRule, ZeroSign
from ooc_ties.dtypes import BF16, F16, F32, F64, DType
from ooc_ties.io.checkpoint import Checkpoint

__all__ = ["reference_merge", "ties_vectors"]


def _to_f32(raw: np.ndarray, dtype: DType) -> np.ndarray:
    if dtype == BF16:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def _from_f32(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Round float32 to ``dtype``'s storage, nearest-even (NumPy's own casts for f16)."""
    if dtype == BF16:
        u = values.view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    if dtype == F16:
        return values.astype(np.float16)
    return values.astype(np.float32)


def _trim_masks(tau: np.ndarray, densities: tuple[float, ...], trim: TrimRule) -> np.ndarray:
    """Which entries of each row of ``tau`` (models x values) survive the trim (row ``t`` at density
    ``densities[t]``)."""
    n_models, d = tau.shape
    magnitude = np.abs(tau)
    masks = np.ones(tau.shape, bool)
    for t in range(n_models):
        m = int(d * densities[t])
        if trim is TrimRule.TOPK:
            m = max(1, m)
        if m >= d:
            continue
        masks[t] = False
        if trim is TrimRule.THRESHOLD:
            kth = np.sort(magnitude[t])[d - m - 1]  # the (d - m)-th smallest, 1-based
            masks[t] = magnitude[t] >= kth
        else:
            order = np.argsort(-magnitude[t], kind="stable")  # largest first, ties by lowest index
            masks[t, order[:m]] = True
    return masks


def ties_vectors(tau: np.ndarray, base: np.ndarray, options: MergeOptions, weights: np.ndarray) -> np.ndarray:
    """The merge on flat vectors: ``tau`` (models x values) and ``base`` (values); float32 result. TIES
    trims, elects and takes the disjoint mean; task arithmetic adds every weighted task vector."""
    trimmed = tau * _trim_masks(tau, options.model_densities(len(tau)), options.trim).astype(np.float32)
    v = weights[:, None] * trimmed
    agrees = np.ones(tau.shape, bool)
    if options.method.consensus:
        vote = np.zeros(base.shape, np.float32)
        for row in v:  # in the order the models were given
            vote = vote + row
        if options.zero_sign is ZeroSign.MAJORITY:
            majority = np.sign(np.count_nonzero(vote > 0) - np.count_nonzero(vote < 0))
            positive = (vote > 0) | ((vote == 0) & (majority > 0))
        else:
            positive = vote >= 0
        agrees = np.stack([np.where(positive, row > 0, row < 0) for row in v])
    num = np.zeros(base.shape, np.float32)
    den = np.zeros(base.shape, np.float32)
    for t, row in enumerate(v):
        num = num + row * agrees[t].astype(np.float32)
        den = den + weights[t] * agrees[t].astype(np.float32)
    if options.method.consensus:
        den[den == 0] = 1
    else:
        den[np.abs(den) < np.float32(1e-8)] = 1
    mixed = num / den if options.normalize else num
    result: np.ndarray = base + np.float32(options.lam) * mixed
    return result


def reference_merge(
    base: str | os.PathLike[str],
    finetuned: Sequence[str | os.PathLike[str]],
    options: MergeOptions = PRESETS["paper"],
) -> dict[str, np.ndarray]:
    """Every output tensor (flat, in storage dtype) of a TIES merge computed in RAM."""
    with contextlib.ExitStack() as stack:
        b = stack.enter_context(Checkpoint(base))
        fts = [stack.enter_context(Checkpoint(p)) for p in finetuned]
        weights = options.model_weights(len(fts))
        floats = [n for n in b.names if b.info(n).dtype.is_float]
        out: dict[str, np.ndarray] = {n: np.array(b.read(n)) for n in b.names if n not in floats}

        def load(c: Checkpoint, name: str) -> np.ndarray:
            return _to_f32(np.array(c.read(name)), c.info(name).dtype)

        groups = [floats] if options.scope is Scope.GLOBAL else [[n] for n in floats]
        for names in groups:
            base_flat = np.concatenate([load(b, n) for n in names]) if names else np.zeros(0, np.float32)
            tau = np.stack(
                [np.concatenate([load(ft, n) for n in names]) - base_flat if names else base_flat for ft in fts]
            )
            merged = ties_vectors(tau, base_flat, options, weights)
            offset = 0
            for n in names:
                size = b.info(n).numel
                dtype = options.out_dtype or (F32 if b.info(n).dtype == F64 else b.info(n).dtype)
                out[n] = _from_f32(merged[offset : offset + size], dtype)
                offset += size
        return out
