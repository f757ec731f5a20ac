"""The in-RAM NumPy reference: the specification the out-of-core engine must match byte for byte.

It follows the TIES reference code's structure (flatten, ``topk_values_mask``, ``resolve_sign``,
``disjoint_merge``) on whole task vectors held in memory, with full sorts instead of histograms. It is
meant for small models (tests) and for the benchmark where the model fits in RAM; it shares no code
with the engine's kernels or pass 1, so agreement between the two is evidence, not tautology.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np

from ooc_ties.config import PRESETS, MergeOptions, RescaleRule, Scope, TrimRule, ZeroSign
from ooc_ties.dtypes import BF16, F16, F32, F64, I8, DType
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.kernels.drop import (
    dare_probability,
    della_keep_oracle,
    random_keep_oracle,
    stream_key,
    tensor_key,
)
from ooc_ties.methods import Sparsify, row_length

__all__ = ["reference_merge", "sparsified", "ties_vectors"]


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


def _top_masks(magnitude: np.ndarray, m: int, trim: TrimRule, exact: bool = False) -> np.ndarray:
    """The ``m`` largest of ``magnitude`` under the trim rule: ``topk`` exactly ``m``, equal magnitudes by
    lowest index first; ``threshold`` every value at least the ``(d - m)``-th smallest (1-based), so
    ``m = 0`` keeps the largest unless the count is ``exact`` (the band's cuts)."""
    d = magnitude.size
    if m >= d:
        return np.ones(d, bool)
    if m <= 0 and (exact or trim is TrimRule.TOPK):
        return np.zeros(d, bool)
    if trim is TrimRule.THRESHOLD:
        kth = np.sort(magnitude)[d - m - 1]
        keep: np.ndarray = magnitude >= kth
        return keep
    keep = np.zeros(d, bool)
    keep[np.argsort(-magnitude, kind="stable")[:m]] = True  # largest first, ties by lowest index
    return keep


def _trim_masks(tau: np.ndarray, options: MergeOptions) -> np.ndarray:
    """Which entries of each row of ``tau`` (models x values) the magnitude trim or the band keeps."""
    n_models, d = tau.shape
    densities = options.model_densities(n_models)
    masks = np.ones(tau.shape, bool)
    for t in range(n_models):
        if densities[t] >= 1.0:
            continue
        magnitude = np.abs(tau[t])
        if options.method.sparsify is Sparsify.BAND:  # mergekit's magnitude_outliers, in counts
            target = int(densities[t] * d)
            top = int(options.model_gammas(n_models)[t] * d)
            bottom = max(0, d - target - top)
            masks[t] = _top_masks(magnitude, d - bottom, options.trim, exact=True)
            masks[t] &= ~_top_masks(magnitude, d - bottom - target, options.trim, exact=True)
        else:
            m = int(d * densities[t])
            masks[t] = _top_masks(magnitude, max(1, m) if options.trim is TrimRule.TOPK else m, options.trim)
    return masks


def _exact_l1(values: np.ndarray) -> np.float32:
    """``sum |values|`` exactly (rational arithmetic), rounded once to float32 (nearest, ties to even)."""
    total = sum((Fraction(float(x)) for x in np.abs(values).tolist()), Fraction(0))
    nearest = np.float32(float(total))  # float64 first: exact for these sums, or off by < 1/2 ulp of float64
    for candidate in (np.nextafter(nearest, np.float32(-np.inf)), np.nextafter(nearest, np.float32(np.inf))):
        if abs(Fraction(float(candidate)) - total) < abs(Fraction(float(nearest)) - total):
            nearest = candidate
    return nearest


def _drop_masks(tau: np.ndarray, name: str, shape: tuple[int, ...], options: MergeOptions) -> np.ndarray:
    """DARE's or DELLA's keep masks of one tensor's task vectors (models x values)."""
    n_models = len(tau)
    densities = options.model_densities(n_models)
    masks = np.ones(tau.shape, bool)
    for t in range(n_models):
        if densities[t] >= 1.0:
            continue
        key = stream_key(options.seed, t, tensor_key(name))
        if options.method.sparsify is Sparsify.RANDOM:
            masks[t] = random_keep_oracle(key, 0, tau.shape[1], dare_probability(densities[t]))
        else:
            epsilon = options.model_epsilons(n_models)[t]
            masks[t] = della_keep_oracle(key, 0, tau[t], row_length(shape), densities[t], epsilon)
    return masks


def _rescale(tau: np.ndarray, masks: np.ndarray, options: MergeOptions) -> np.ndarray:
    """Each model's rescale factor of one tensor (float32), or all ones."""
    n_models = len(tau)
    scales = np.ones(n_models, np.float32)
    if not options.rescale:
        return scales
    for t in range(n_models):
        if options.rescale_rule is RescaleRule.DENSITY:
            scales[t] = np.float32(1.0 / options.model_densities(n_models)[t])
            continue
        if masks[t].all():
            continue  # nothing dropped: mergekit returns the task vector as it is
        whole, kept = _exact_l1(tau[t]), _exact_l1(tau[t][masks[t]])
        if whole >= np.float32(1e-7) and kept >= np.float32(1e-7):  # mergekit's eps
            scales[t] = np.float32(whole / kept)
    return scales


def sparsified(tau: np.ndarray, tensors: Sequence[tuple[str, tuple[int, ...]]], options: MergeOptions) -> np.ndarray:
    """Each model's task vector (rows of ``tau``, the ``tensors`` one after another) as the method
    sparsifies and rescales it: ``(tau * keep) * scale`` in float32."""
    if options.method.trims and not options.rescale:
        return tau * _trim_masks(tau, options).astype(np.float32)
    if not options.method.sparsifies:
        return tau
    trim = _trim_masks(tau, options) if options.method.trims else None  # (over the whole group)
    out = np.empty_like(tau)
    offset = 0
    for name, shape in tensors:
        size = int(np.prod(shape, dtype=np.int64))
        part = tau[:, offset : offset + size]
        if trim is not None:
            masks = trim[:, offset : offset + size]
        else:
            masks = _drop_masks(part, name, shape, options)
        scales = _rescale(part, masks, options)
        out[:, offset : offset + size] = (part * masks.astype(np.float32)) * scales[:, None]
        offset += size
    return out


def ties_vectors(
    tau: np.ndarray,
    base: np.ndarray,
    options: MergeOptions,
    weights: np.ndarray,
    tensors: Sequence[tuple[str, tuple[int, ...]]] = (),
    sign: np.ndarray | None = None,
) -> np.ndarray:
    """The merge on flat vectors: ``tau`` (models x values) and ``base`` (values); float32 result.
    ``tensors``: the names and shapes of the tensors the values are (the random drops need them);
    ``sign``: the sign's model's task vector (``sign_from``), which elects in place of the vote."""
    trimmed = sparsified(tau, tensors, options)
    v = weights[:, None] * trimmed
    agrees = np.ones(tau.shape, bool)
    if options.method.consensus:
        vote = np.zeros(base.shape, np.float32)
        for row in v:  # in the order the models were given
            vote = vote + row
        if sign is not None:
            vote = sign
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


def _sign_values(
    elector: Checkpoint, names: Sequence[str], base_flat: np.ndarray, load: Callable[[Checkpoint, str], np.ndarray]
) -> np.ndarray:
    """The sign's model's task values (``--sign-from``), or a file of elected signs' values (int8)."""
    if all(elector.info(n).dtype == I8 for n in names):
        signs: np.ndarray = np.concatenate([np.asarray(elector.read(n)).reshape(-1) for n in names])
        return signs.astype(np.float32)
    values: np.ndarray = np.concatenate([load(elector, n) for n in names]) - base_flat
    return values


def reference_merge(
    base: str | os.PathLike[str],
    finetuned: Sequence[str | os.PathLike[str]],
    options: MergeOptions = PRESETS["paper"],
) -> dict[str, np.ndarray]:
    """Every output tensor (flat, in storage dtype) of a TIES merge computed in RAM."""
    with contextlib.ExitStack() as stack:
        b = stack.enter_context(Checkpoint(base))
        fts = [stack.enter_context(Checkpoint(p)) for p in finetuned]
        elector = stack.enter_context(Checkpoint(options.sign_from)) if options.sign_from is not None else None
        floats = [n for n in b.names if b.info(n).dtype.is_float]
        out: dict[str, np.ndarray] = {n: np.array(b.read(n)) for n in b.names if n not in floats}

        def load(c: Checkpoint, name: str) -> np.ndarray:
            return _to_f32(np.array(c.read(name)), c.info(name).dtype)

        groups = [floats] if options.scope is Scope.GLOBAL else [[n] for n in floats]
        for names in groups:
            base_flat = np.concatenate([load(b, n) for n in names]) if names else np.zeros(0, np.float32)
            if not options.method.uses_base:  # linear: the models' own values, merged onto zeros
                base_flat = np.zeros_like(base_flat)
            tau = np.stack(
                [np.concatenate([load(ft, n) for n in names]) - base_flat if names else base_flat for ft in fts]
            )
            own = options.for_tensor(names[0]) if len(names) == 1 else options  # (per_tensor: tensor scope)
            weights = own.model_weights(len(fts))
            sign = _sign_values(elector, names, base_flat, load) if elector and names else None
            merged = ties_vectors(tau, base_flat, own, weights, [(n, b.info(n).shape) for n in names], sign)
            offset = 0
            for n in names:
                size = b.info(n).numel
                dtype = options.out_dtype or (F32 if b.info(n).dtype == F64 else b.info(n).dtype)
                out[n] = _from_f32(merged[offset : offset + size], dtype)
                offset += size
        return out
