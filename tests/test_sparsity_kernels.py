"""The general rule's kernels against their NumPy oracles: band cut, drop masks, rescale, no base.

``ties.merge`` and ``ties.elect_count`` with a ``sparsity`` tuple (breadcrumbs' band, DARE/DELLA masks,
rescale factors, ``linear`` without a base, a sign's model), the exact L1 norms of ``norms`` behind mergekit's rescale,
and DELLA's mask of a task vector (``drop.della_keep_task``). Blocks come from a few magnitudes so that
exact ties at both cuts are common, quotas run out inside a block (and across tile boundaries), and every
comparison is of bytes. The layouts (input dtype, model count, output dtype) are few: each one compiles
the kernels once more.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ooc_ties.kernels import convert, drop, norms, ties
from ooc_ties.kernels.keep import keep_flags, keep_flags_oracle, kept_oracle, sparsify_oracle
from tests.conftest import read_only

STORAGE = {"bf16": np.uint16, "f16": np.int16, "f32": np.float32}
TILE = ties.TILE
MASK64 = (1 << 64) - 1

LAYOUTS = [("f32", 2, "f32"), ("bf16", 3, "bf16"), ("bf16", 3, "f16"), ("f16", 2, "f16")]
"""``(input storage, fine-tuned models, output storage)`` of the merge tests."""

SIZES = st.one_of(
    st.integers(0, 300),
    st.integers(TILE - 3, TILE + 3),
    st.integers(2 * TILE - 2, 2 * TILE + 2),
    st.integers(300, 3 * TILE + 50),
)
"""Block sizes: small, around one and two tiles, and several tiles."""

NO_SIGN = np.zeros(0, np.float32)
"""The ``sparsity`` tuple's last element when the vote elects the sign (no ``--sign-from`` model)."""


def _storage(values: np.ndarray, kind: str) -> np.ndarray:
    return convert.encode_oracle(np.asarray(values, np.float32), np.dtype(STORAGE[kind]))


def _kind_of(storage: np.ndarray) -> str:
    return next(kind for kind, dtype in STORAGE.items() if storage.dtype == dtype)


def _same_bytes(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual.view(np.uint8), expected.view(np.uint8))


# --------------------------------------------------------------------------------------------------
# ties.merge / ties.elect_count under the general rule


def _tie_block(
    rng: np.random.Generator, n: int, n_models: int, kind: str, levels: int, grid: bool, with_base: bool = True
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """A base and fine-tuned blocks whose task values (and, with ``grid``, the models' own values) take
    a few magnitudes only: exact ties at any cut taken from the data. Model 1 undoes model 0 at about
    half of the elements (its task value, or without a base its value, is the opposite): exact zero
    sums, open elements."""
    if grid:
        base = rng.integers(-8, 9, n).astype(np.float32) * np.float32(2.0**-7)
    else:
        base = (rng.standard_normal(n) * 0.02).astype(np.float32)
    base_s = _storage(base, kind)
    base_f = convert.decode_oracle(base_s)
    step = np.float32(2.0**-10)
    values = [base_f + rng.integers(-levels, levels + 1, n).astype(np.float32) * step for _ in range(n_models)]
    cancel = rng.random(n) < 0.5
    if n_models > 1:
        first = convert.decode_oracle(_storage(values[0], kind))
        values[1] = np.where(cancel, base_f + (base_f - first) if with_base else -first, values[1])
    fts = [_storage(v, kind) for v in values]
    frozen_base, *frozen_fts = read_only(base_s, *fts)
    return frozen_base, tuple(frozen_fts)


def _taus(base: np.ndarray, fts: tuple[np.ndarray, ...], with_base: bool) -> list[np.ndarray]:
    b = convert.decode_oracle(base) if with_base else np.zeros(base.shape, np.float32)
    return [convert.decode_oracle(ft) - b for ft in fts]


def _cut(a: np.ndarray, level: np.float32, quota: int) -> np.ndarray:
    """The values above ``level``, and the first ``quota`` equal to it in block order (all if < 0)."""
    equal = a == level
    return (a > level) | (equal & ((quota < 0) | (np.cumsum(equal) <= quota)))


def _keep_flags(tau: np.ndarray, sparsity: tuple, thr: np.ndarray, quota: np.ndarray, t: int) -> np.ndarray:
    """Model ``t``'s keep flags under the general rule, restated from the kernels' docstrings: kept by the
    trim, not in the band's upper cut, and kept by the drop mask."""
    thr_hi, quota_hi, masks = sparsity[:3]
    a = np.abs(tau)
    keep = _cut(a, thr[t], int(quota[t]))
    if thr_hi.size:
        keep &= ~_cut(a, thr_hi[t], int(quota_hi[t]))
    if masks.shape[1]:
        keep &= masks[t] != 0
    return keep


def _expected_kept(
    base: np.ndarray, fts: tuple[np.ndarray, ...], thr: np.ndarray, quota: np.ndarray, sparsity: tuple
) -> np.ndarray:
    """``kept`` counts: the number of true keep flags per model. The flags are checked against
    ``sparsify_oracle`` first (its trimmed values are ``tau * keep * scale``, bit for bit)."""
    thr_hi, quota_hi, masks, scales, with_base = sparsity[:5]
    counts = []
    for t, tau in enumerate(_taus(base, fts, with_base)):
        keep = _keep_flags(tau, sparsity, thr, quota, t)
        trimmed = sparsify_oracle(
            tau,
            thr[t],
            int(quota[t]),
            thr_hi[t] if thr_hi.size else None,
            int(quota_hi[t]) if thr_hi.size else 0,
            masks[t] if masks.shape[1] else None,
            scales[t] if scales.size else None,
        )
        flagged = np.where(keep, tau, tau * np.float32(0))
        if scales.size:
            flagged = flagged * scales[t]
        _same_bytes(trimmed, flagged)
        counts.append(int(np.count_nonzero(keep)))
    return np.array(counts, np.int64)


def _level(rng: np.random.Generator, a: np.ndarray, at_least: np.float32 | None = None) -> np.float32:
    """A magnitude from the data (at least ``at_least`` if any is), else +inf."""
    pool = a if at_least is None else a[a >= at_least]
    return np.float32(pool[rng.integers(0, pool.size)]) if pool.size else np.float32(np.inf)


def _quota(rng: np.random.Generator, a: np.ndarray, level: np.float32, kind: str) -> int:
    """-1 (every tie), or a quota that often runs out inside the block: up to the block's ties + 1."""
    if kind == "all":
        return -1
    ties_here = int(np.count_nonzero(a == level))
    return int(rng.integers(0, ties_here + 2))


def _general_args(
    rng: np.random.Generator,
    base: np.ndarray,
    fts: tuple[np.ndarray, ...],
    p: dict,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """``thr``, ``quota``, ``weights`` and the ``sparsity`` tuple for a block, as ``p`` asks."""
    n_models, n = len(fts), base.size
    with_base = p["with_base"]
    mags = [np.abs(tau) for tau in _taus(base, fts, with_base)]
    thr = np.zeros(n_models, np.float32)
    quota = np.full(n_models, -1, np.int64)
    thr_hi = np.zeros(n_models, np.float32)
    quota_hi = np.zeros(n_models, np.int64)
    for t, a in enumerate(mags):
        thr[t] = 0.0 if (p["trim"] == "none" or not n) else _level(rng, a)
        quota[t] = _quota(rng, a, thr[t], p["quota"])
        if p["band"] == "above":  # a cut above the trim: a band of kept values
            thr_hi[t] = _level(rng, a, thr[t]) if n else np.inf
        elif p["band"] == "any":  # anywhere, below the trim too (then nothing is kept)
            thr_hi[t] = _level(rng, a) if n else np.inf
        else:
            thr_hi[t] = np.inf
        quota_hi[t] = _quota(rng, a, thr_hi[t], p["quota_hi"])
    if p["band"] == "empty":
        thr_hi, quota_hi = np.zeros(0, np.float32), np.zeros(0, np.int64)
    if p["masks"]:
        density = rng.uniform(0.0, 1.0, (n_models, 1))
        nonzero = rng.integers(1, 256, (n_models, n))  # any non-zero byte keeps
        masks = np.where(rng.random((n_models, n)) < density, nonzero, 0).astype(np.uint8)
    else:
        masks = np.zeros((n_models, 0), np.uint8)
    if p["scales"] == "random":
        scales = rng.uniform(0.25, 4.0, n_models).astype(np.float32)
    elif p["scales"] == "density":
        scales = (1.0 / rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], n_models)).astype(np.float32)
    elif p["scales"] == "same":  # one factor for every model: cancelling values still cancel
        scales = np.full(n_models, rng.uniform(0.25, 4.0), np.float32)
    else:
        scales = np.zeros(0, np.float32)
    weights = {
        "ones": np.ones(n_models),
        "random": rng.uniform(0.1, 2.0, n_models),
        "with_zero": np.where(np.arange(n_models) == 0, 0.0, 1.0),
        "negative": rng.uniform(-1.0, 1.0, n_models),
    }[p["weights"]].astype(np.float32)
    if p["sign"]:  # a sign's model, in the models' storage: its task value elects, not the vote
        b = convert.decode_oracle(base) if with_base else np.zeros(n, np.float32)
        values = b + rng.integers(-3, 4, n).astype(np.float32) * np.float32(2.0**-10)
        (sign,) = read_only(_storage(values, _kind_of(base)))
    else:
        sign = NO_SIGN
    return thr, quota, weights, (thr_hi, quota_hi, masks, scales, with_base, sign)


general_params = st.fixed_dictionaries(
    {
        "trim": st.sampled_from(["data", "none"]),
        "quota": st.sampled_from(["all", "some"]),
        "band": st.sampled_from(["empty", "above", "any", "inf"]),
        "quota_hi": st.sampled_from(["all", "some"]),
        "masks": st.booleans(),
        "scales": st.sampled_from(["empty", "same", "random", "density"]),
        "with_base": st.booleans(),
        "sign": st.booleans(),
        "weights": st.sampled_from(["ones", "ones", "ones", "random", "with_zero", "negative"]),
        "lam": st.sampled_from([1.0, 0.5, 1.7, -0.3]),
        "zero_positive": st.booleans(),
        "consensus": st.booleans(),
        "normalize": st.booleans(),
        "capacity": st.sampled_from([0, 1, 4096]),
    }
)


def _first_bad(encoded: np.ndarray) -> int:
    bad = np.flatnonzero(~np.isfinite(convert.decode_oracle(encoded)))
    return int(bad[0]) if bad.size else -1


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=SIZES,
    layout=st.sampled_from(LAYOUTS),
    levels=st.integers(0, 6),
    grid=st.booleans(),
    p=general_params,
)
def test_merge_and_elect_count_under_the_general_rule_match_oracles(
    seed: int, n: int, layout: tuple[str, int, str], levels: int, grid: bool, p: dict
) -> None:
    kind, n_models, out_kind = layout
    rng = np.random.default_rng(seed)
    base, fts = _tie_block(rng, n, n_models, kind, levels, grid, p["with_base"])
    thr, quota, weights, sparsity = _general_args(rng, base, fts, p)
    storage = np.dtype(STORAGE[out_kind])
    lam, zero_positive, consensus, normalize = np.float32(p["lam"]), p["zero_positive"], p["consensus"], p["normalize"]
    expected_kept = _expected_kept(base, fts, thr, quota, sparsity)

    out = np.empty(n, storage)
    votes = np.zeros(4, np.int64)
    kept = np.zeros(n_models, np.int64)
    open_at = np.full(p["capacity"], -1, np.int64)
    open_alt = np.zeros(p["capacity"], storage)
    flags = (zero_positive, consensus, normalize)
    bad = ties.merge(base, fts, thr, quota, weights, lam, *flags, out, votes, kept, open_at, open_alt, sparsity)
    expected, expected_votes = ties.merge_oracle(
        base,
        fts,
        thr,
        quota,
        weights,
        lam,
        zero_positive,
        storage,
        consensus=consensus,
        normalize=normalize,
        sparsity=sparsity,
    )
    _same_bytes(out, expected)
    np.testing.assert_array_equal(votes[:3], expected_votes)
    np.testing.assert_array_equal(kept, expected_kept)
    assert bad == _first_bad(expected)
    # under the general rule no open element is recorded, whatever the room for them
    assert votes[3] == votes[2]
    assert (open_at == -1).all() and not open_alt.view(np.uint8).any()

    counts = np.zeros(3, np.int64)
    kept[:] = 0
    ties.elect_count(base, fts, thr, quota, weights, counts, kept, sparsity)
    np.testing.assert_array_equal(counts, ties.elect_count_oracle(base, fts, thr, quota, weights, sparsity))
    np.testing.assert_array_equal(kept, expected_kept)
    counts[:] = 0
    ties.elect_count(base, fts, thr, quota, weights, counts, np.zeros(0, np.int64), sparsity)  # nothing counted
    np.testing.assert_array_equal(counts, ties.elect_count_oracle(base, fts, thr, quota, weights, sparsity))


def test_the_general_rule_on_a_worked_example() -> None:
    """Trim at 2 (no tie kept), band cut at 4 (the first tie cut), a mask, a scale of 2, one model."""
    tau = np.array([1, 2, 3, 4, 4, 5, -3, 3, -4, 2.5], np.float32)
    base, ft = read_only(np.full(tau.size, 1.0, np.float32), np.float32(1) + tau)
    thr, quota = np.array([2.0], np.float32), np.array([0], np.int64)
    mask = np.array([[1, 1, 1, 1, 1, 1, 1, 0, 1, 7]], np.uint8)
    band = (np.array([4.0], np.float32), np.array([1], np.int64))
    sparsity = (*band, mask, np.array([2.0], np.float32), True, NO_SIGN)
    out = np.empty(tau.size, np.float32)
    votes, kept = np.zeros(4, np.int64), np.zeros(1, np.int64)
    weights = np.ones(1, np.float32)
    at, alt = np.full(4, -1, np.int64), np.zeros(4, np.float32)
    ties.merge(base, (ft,), thr, quota, weights, np.float32(1), True, True, False, out, votes, kept, at, alt, sparsity)
    # kept: 3 (index 2), the second 4 (index 4), -3 (6), -4 (8), 2.5 (9); 5 is above the cut, the 3 at
    # index 7 is masked out, and the first 4 is the cut's one tie
    assert kept.tolist() == [5]
    assert (out - np.float32(1)).tolist() == [0, 0, 6, 0, 8, 0, -6, 0, -8, 5]
    assert votes.tolist() == [3, 2, 0, 0]
    # a sign's model whose task value is -1 everywhere elects negative: only the negative values agree
    (sign,) = read_only(np.zeros(tau.size, np.float32))
    sparsity = (*sparsity[:5], sign)
    votes[:] = 0
    ties.merge(base, (ft,), thr, quota, weights, np.float32(1), True, True, False, out, votes, kept, at, alt, sparsity)
    assert (out - np.float32(1)).tolist() == [0, 0, 0, 0, 0, 0, -6, 0, -8, 0]
    assert votes.tolist() == [0, 10, 0, 0]


def test_open_elements_are_not_recorded_under_the_general_rule() -> None:
    """Two models that cancel everywhere: every element is open, none recorded, though there is room;
    without a consensus nothing is open."""
    rng = np.random.default_rng(3)
    n = TILE + 100
    tau = rng.integers(1, 5, n).astype(np.float32) * np.float32(2.0**-8)
    base, *frozen = read_only(np.full(n, 0.5, np.float32), np.float32(0.5) + tau, np.float32(0.5) - tau)
    fts = tuple(frozen)
    thr, quota, weights = np.zeros(2, np.float32), np.full(2, -1, np.int64), np.ones(2, np.float32)
    empty = (np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros((2, 0), np.uint8), np.zeros(0, np.float32))
    for sparsity in ((*empty, True, NO_SIGN), (*empty[:3], np.full(2, 1.5, np.float32), True, NO_SIGN)):
        for consensus in (True, False):
            out, votes = np.empty(n, np.float32), np.zeros(4, np.int64)
            at, alt = np.full(n, -1, np.int64), np.zeros(n, np.float32)
            kept = np.zeros(2, np.int64)
            flags = (True, consensus, True)
            ties.merge(base, fts, thr, quota, weights, np.float32(1), *flags, out, votes, kept, at, alt, sparsity)
            assert votes.tolist() == ([0, 0, n, n] if consensus else [0, 0, 0, 0])
            assert (at == -1).all() and kept.tolist() == [n, n]
            expected, _ = ties.merge_oracle(
                base,
                fts,
                thr,
                quota,
                weights,
                np.float32(1),
                True,
                np.dtype(np.float32),
                consensus=consensus,
                sparsity=sparsity,
            )
            _same_bytes(out, expected)
        out, votes = np.empty(n, np.float32), np.zeros(4, np.int64)  # the fast path records them all
        at, alt = np.full(n, -1, np.int64), np.zeros(n, np.float32)
        ties.merge(base, fts, thr, quota, weights, np.float32(1), True, True, True, out, votes, kept, at, alt)
        assert votes.tolist() == [0, 0, n, 0] and at.tolist() == list(range(n))


# --------------------------------------------------------------------------------------------------
# the neutral general rule is the fast path


def _neutral(form: str, n_models: int, n: int) -> tuple:
    """A ``sparsity`` that changes nothing: the empty forms, or explicit no-ops (a band cut at +inf with
    quota 0, masks of all ones, scales of 1)."""
    if form == "empty":
        return (
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
            np.zeros((n_models, 0), np.uint8),
            np.zeros(0, np.float32),
        )
    return (
        np.full(n_models, np.inf, np.float32),
        np.zeros(n_models, np.int64),
        np.ones((n_models, n), np.uint8),
        np.ones(n_models, np.float32),
    )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=SIZES,
    layout=st.sampled_from(LAYOUTS),
    levels=st.integers(0, 6),
    grid=st.booleans(),
    quotas=st.sampled_from(["all", "some", "none", "mixed"]),
    form=st.sampled_from(["empty", "explicit"]),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    lam=st.sampled_from([1.0, 0.5, -0.3]),
)
def test_a_neutral_general_rule_gives_the_fast_paths_bytes(
    seed: int,
    n: int,
    layout: tuple[str, int, str],
    levels: int,
    grid: bool,
    quotas: str,
    form: str,
    flags: tuple[bool, bool, bool],
    lam: float,
) -> None:
    kind, n_models, out_kind = layout
    rng = np.random.default_rng(seed)
    base, fts = _tie_block(rng, n, n_models, kind, levels, grid)
    mags = [np.abs(tau) for tau in _taus(base, fts, True)]
    thr = np.array([_level(rng, a) if n else 0.0 for a in mags], np.float32)
    quota = np.array(
        [
            _quota(rng, a, thr[t], "all" if quotas == "all" or (quotas == "mixed" and t % 2) else "some")
            if quotas != "none"
            else 0
            for t, a in enumerate(mags)
        ],
        np.int64,
    )
    weights = rng.uniform(-0.5, 2.0, n_models).astype(np.float32)
    sparsity = (*_neutral(form, n_models, n), True, NO_SIGN)
    storage = np.dtype(STORAGE[out_kind])
    results = []
    for general in (None, sparsity):
        out, votes, kept = np.empty(n, storage), np.zeros(4, np.int64), np.zeros(n_models, np.int64)
        at, alt = np.zeros(0, np.int64), np.zeros(0, storage)
        bad = ties.merge(base, fts, thr, quota, weights, np.float32(lam), *flags, out, votes, kept, at, alt, general)
        counts, counted = np.zeros(3, np.int64), np.zeros(n_models, np.int64)
        ties.elect_count(base, fts, thr, quota, weights, counts, counted, general)
        results.append((out, votes[:3], kept, bad, counts, counted))
    (fast_out, *fast), (general_out, *general_rest) = results
    _same_bytes(general_out, fast_out)
    for a, b in zip(general_rest, fast, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fast[1], kept_oracle(base, fts, thr, quota))


# --------------------------------------------------------------------------------------------------
# exact L1 norms


def _nearest_f32(x: Fraction) -> np.float32:
    """The float32 nearest a non-negative rational, ties to even; +inf past float32's range."""
    if x == 0:
        return np.float32(0.0)
    e = x.numerator.bit_length() - x.denominator.bit_length()  # 2**(e - 1) < x < 2**(e + 1)
    if Fraction(2) ** e > x:
        e -= 1
    if Fraction(2) ** (e + 1) <= x:
        e += 1
    quantum = Fraction(2) ** max(e - 23, -149)  # 24 significant bits, or the subnormal spacing
    q, r = divmod(x / quantum, 1)
    if r > Fraction(1, 2) or (r == Fraction(1, 2) and q % 2):
        q += 1
    value = q * quantum
    if value >= Fraction(2) ** 128:
        return np.float32(np.inf)
    return np.float32(float(value))  # exact: 24 bits within float32's range


def test_nearest_f32_helper() -> None:
    for x in (1.0, 3.0, 2.0**-149, 1.5 * 2.0**-149, 2.0**-126, float(np.finfo(np.float32).max), 0.1):
        assert _nearest_f32(Fraction(x)) == np.float32(x)
    assert _nearest_f32(Fraction(2.0**-150)) == 0  # halfway to the smallest subnormal: to even 0
    assert _nearest_f32(Fraction(3, 2**151)) == np.float32(2.0**-149)
    assert _nearest_f32(Fraction(1) + Fraction(1, 2**24)) == 1  # a tie: to even
    assert _nearest_f32(Fraction(1) + Fraction(3, 2**24)) == np.float32(1 + 2.0**-22)
    big = Fraction(2**128 - 2**103)  # halfway between float32's max and 2**128
    assert _nearest_f32(big) == np.inf and _nearest_f32(big - 1) == np.finfo(np.float32).max


def _random_finite(rng: np.random.Generator, n: int, lo: int, hi: int, kind: str) -> np.ndarray:
    """Random finite values whose float32 biased exponent lies in ``[lo, hi]`` (0: subnormal or zero),
    random signs and significands; bf16 keeps the top half of the pattern (the exponent unchanged)."""
    sign = rng.integers(0, 2, n, dtype=np.uint64) << np.uint64(31)
    exponent = rng.integers(lo, hi + 1, n, dtype=np.uint64) << np.uint64(23)
    significand = rng.integers(0, 1 << 23, n, dtype=np.uint64)
    significand[rng.random(n) < 0.05] = 0  # some zeros and powers of two
    bits = (sign | exponent | significand).astype(np.uint32)
    if kind == "bf16":
        return (bits >> np.uint32(16)).astype(np.uint16)
    return bits.view(np.float32)


def _exact_l1(base: np.ndarray, ft: np.ndarray, with_base: bool, keep: np.ndarray) -> tuple[Fraction, Fraction, bool]:
    """The exact sums of ``|tau|`` (all, kept) and whether some ``tau`` is not finite."""
    b = convert.decode_oracle(base) if with_base else np.zeros(ft.shape, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        tau = np.abs(convert.decode_oracle(ft) - b)
    if not np.isfinite(tau).all():
        return Fraction(0), Fraction(0), True
    values = [Fraction(float(x)) for x in tau.tolist()]
    whole = sum(values, Fraction(0))
    kept = sum((x for x, k in zip(values, keep.tolist(), strict=True) if k), Fraction(0))
    return whole, kept, False


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 3000),
    kind=st.sampled_from(["f32", "bf16"]),
    ft_exponents=st.sampled_from([(0, 0), (0, 3), (0, 130), (100, 130), (120, 254), (250, 254), (0, 254)]),
    base_exponents=st.sampled_from([(0, 0), (0, 2), (110, 125), (0, 254)]),
    with_base=st.booleans(),
    pieces=st.integers(1, 6),
)
def test_l1_counts_and_exact_sum_match_exact_rational_sums(
    seed: int,
    n: int,
    kind: str,
    ft_exponents: tuple[int, int],
    base_exponents: tuple[int, int],
    with_base: bool,
    pieces: int,
) -> None:
    rng = np.random.default_rng(seed)
    base_values = _random_finite(rng, n, *base_exponents, kind)
    ft_values = _random_finite(rng, n, *ft_exponents, kind)
    base, ft = read_only(base_values, ft_values)
    keep = np.where(rng.random(n) < rng.random(), rng.integers(1, 256, n), 0).astype(np.uint8)
    whole = np.zeros(norms.EXPONENTS, np.int64)
    kept = np.zeros(norms.EXPONENTS, np.int64)
    norms.l1_counts(base, ft, with_base, keep, whole, kept)

    exact_whole, exact_kept, overflow = _exact_l1(base, ft, with_base, keep)
    if overflow:  # some |tau| is inf: counted at exponent 255, the sum is inf
        assert whole[255] > 0 and norms.exact_sum(whole) == np.inf
    else:
        assert whole[255] == 0 == kept[255]
        assert norms.exact_sum(whole) == _nearest_f32(exact_whole)
        assert norms.exact_sum(kept) == _nearest_f32(exact_kept)
        assert norms.l1_counts_oracle(base, ft, with_base, keep) == (float(exact_whole), float(exact_kept))
    assert (whole >= kept).all() and (kept >= 0).all()

    # blocks in any order, counted apart or into the same counters: the same counters
    cuts = [0, *sorted(rng.integers(0, n + 1, pieces - 1).tolist()), n]
    spans = list(itertools.pairwise(cuts))
    rng.shuffle(spans)
    parts = np.zeros((len(spans), 2, norms.EXPONENTS), np.int64)
    shared = np.zeros((2, norms.EXPONENTS), np.int64)
    for i, (a, b) in enumerate(spans):
        norms.l1_counts(base[a:b], ft[a:b], with_base, keep[a:b], parts[i, 0], parts[i, 1])
        norms.l1_counts(base[a:b], ft[a:b], with_base, keep[a:b], shared[0], shared[1])
    np.testing.assert_array_equal(parts.sum(axis=0), np.stack([whole, kept]))
    np.testing.assert_array_equal(shared, np.stack([whole, kept]))


@settings(max_examples=100, deadline=None)
@given(
    counters=st.dictionaries(
        st.integers(0, 254), st.one_of(st.integers(0, 1 << 24), st.integers(0, 1 << 39)), min_size=0, max_size=12
    )
)
def test_exact_sum_is_the_nearest_float32_of_its_counters(counters: dict[int, int]) -> None:
    counts = np.zeros(norms.EXPONENTS, np.int64)
    for e, c in counters.items():
        counts[e] = c
    exact = sum((Fraction(c) * Fraction(2) ** (max(e, 1) - 150) for e, c in counters.items()), Fraction(0))
    assert norms.exact_sum(counts) == _nearest_f32(exact)


def test_exact_sum_rounds_once() -> None:
    """1 + 2**-24 + 2**-80 is just above a float32 tie: correctly rounded it is 1 + 2**-23, where
    rounding to float64 first (the oracle's float) and then to float32 gives 1."""
    ft = np.array([1.0, 2.0**-24, 2.0**-80], np.float32)
    base, ft = read_only(np.zeros(3, np.float32), ft)
    whole, kept = np.zeros(norms.EXPONENTS, np.int64), np.zeros(norms.EXPONENTS, np.int64)
    norms.l1_counts(base, ft, True, np.ones(3, np.uint8), whole, kept)
    assert norms.exact_sum(whole) == np.float32(1 + 2.0**-23) == norms.exact_sum(kept)
    assert np.float32(norms.l1_counts_oracle(base, ft, True, np.ones(3, np.uint8))[0]) == 1.0


def test_exact_sum_ties_go_to_even() -> None:
    """Sums exactly halfway between two float32 neighbours round to the even one, in any binade."""
    for scale in (2.0**-100, 1.0, 2.0**100):
        for k in range(4):
            x = np.float32(scale * (1 + k * 2.0**-23))
            quarter = np.float32(scale * 2.0**-25)
            base, ft = read_only(np.zeros(3, np.float32), np.array([x, quarter, -quarter], np.float32))
            whole, kept = np.zeros(norms.EXPONENTS, np.int64), np.zeros(norms.EXPONENTS, np.int64)
            norms.l1_counts(base, ft, False, np.array([1, 1, 0], np.uint8), whole, kept)
            up = np.nextafter(x, np.float32(np.inf))
            assert norms.exact_sum(whole) == (x if k % 2 == 0 else up)  # x + half an ulp
            assert norms.exact_sum(kept) == x  # x + a quarter of an ulp
            assert norms.exact_sum(whole) == _nearest_f32(Fraction(float(x)) + 2 * Fraction(float(quarter)))


def test_exact_sum_inf_and_overflow() -> None:
    counts = np.zeros(norms.EXPONENTS, np.int64)
    counts[255] = 1
    assert norms.exact_sum(counts) == np.inf
    counts[:] = 0
    assert norms.exact_sum(counts) == 0
    base, ft = read_only(np.zeros(3, np.float32), np.array([3e38, -3e38, np.inf], np.float32))
    whole, kept = np.zeros(norms.EXPONENTS, np.int64), np.zeros(norms.EXPONENTS, np.int64)
    keep = np.array([1, 1, 0], np.uint8)
    norms.l1_counts(base, ft, False, keep, whole, kept)
    assert whole[255] == 1 << 23 and kept[255] == 0  # inf's significand: the implicit bit alone
    assert norms.exact_sum(whole) == np.inf  # inf counted
    assert norms.exact_sum(kept) == np.inf  # 6e38: past float32's range
    counts[:] = 0
    counts[254] = (1 << 24) - 1  # (2**24 - 1) * 2**104: float32's max
    assert norms.exact_sum(counts) == np.finfo(np.float32).max
    counts[1] = 1  # + 2**-149: still rounds to the max
    assert norms.exact_sum(counts) == np.finfo(np.float32).max


# --------------------------------------------------------------------------------------------------
# DELLA's mask of a task vector

_DENSITY_EPSILON = st.one_of(
    st.floats(0.02, 0.98).flatmap(
        lambda d: st.tuples(st.just(d), st.floats(-0.999, 0.999).map(lambda f: f * min(d, 1 - d)))
    ),
    st.sampled_from([(1.0, 0.3), (0.0, 0.3), (0.5, 0.49), (0.5, 0.0)]),
)


def _pool_values(rng: np.random.Generator, n: int, pool: int) -> np.ndarray:
    mags = np.abs(rng.standard_normal(pool) * 10.0 ** rng.integers(-6, 1, pool)).astype(np.float32)
    mags[0] = 0.0
    out: np.ndarray = mags[rng.integers(0, pool, n)] * rng.choice(np.array([-1, 1], np.float32), n)
    return out


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["f32", "bf16"]),
    ncols=st.one_of(st.integers(1, 40), st.integers(41, 1500)),
    nrows=st.integers(1, 5),
    first_row=st.integers(0, 1 << 20),
    pool=st.sampled_from([1, 3, 50, 100_000]),
    options=_DENSITY_EPSILON,
    with_base=st.booleans(),
    key=st.integers(0, MASK64),
    seed=st.integers(0, 2**32 - 1),
)
def test_della_keep_task_matches_oracle_on_the_task_vector(
    kind: str,
    ncols: int,
    nrows: int,
    first_row: int,
    pool: int,
    options: tuple[float, float],
    with_base: bool,
    key: int,
    seed: int,
) -> None:
    density, epsilon = options
    rng = np.random.default_rng(seed)
    n = ncols * nrows
    base_values = _pool_values(rng, n, pool)
    base_s = _storage(base_values, kind)
    ft_s = _storage(convert.decode_oracle(base_s) + _pool_values(rng, n, pool), kind)
    base, ft = read_only(base_s, ft_s)
    b = convert.decode_oracle(base) if with_base else np.zeros(n, np.float32)
    tau = convert.decode_oracle(ft) - b
    start = first_row * ncols
    expected = drop.della_keep_oracle(key, start, tau, ncols, density, epsilon)
    keep = np.full(n, 9, np.uint8)
    count = drop.della_keep_task(np.uint64(key), start, base, ft, with_base, ncols, density, epsilon, keep)
    np.testing.assert_array_equal(keep, expected.astype(np.uint8))
    assert count == np.count_nonzero(expected)
    # a block of several rows is the rows' blocks one after another
    cut = int(rng.integers(0, nrows + 1)) * ncols
    parts = np.full(n, 9, np.uint8)
    for a, z in ((0, cut), (cut, n)):
        drop.della_keep_task(
            np.uint64(key), start + a, base[a:z], ft[a:z], with_base, ncols, density, epsilon, parts[a:z]
        )
    np.testing.assert_array_equal(parts, keep)


@pytest.mark.parametrize(("n", "ncols"), [(10, 4), (10, 0), (10, -2), (3, 4), (1, 2)])
def test_della_keep_task_refuses_partial_rows(n: int, ncols: int) -> None:
    base, ft = read_only(np.zeros(n, np.float32), np.arange(n, dtype=np.float32))
    keep = np.zeros(n, np.uint8)
    with pytest.raises(ValueError, match="whole rows"):
        drop.della_keep_task(np.uint64(1), 0, base, ft, True, ncols, 0.5, 0.1, keep)


# --------------------------------------------------------------------------------------------------
# keep.keep_flags (pass 1's masks of a magnitude trim, for the L1 rescale)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.sampled_from([1, 7, 300, 5000]),
    kind=st.sampled_from(["f32", "bf16"]),
    with_base=st.booleans(),
    band=st.booleans(),
)
def test_keep_flags_match_the_oracle(seed: int, n: int, kind: str, with_base: bool, band: bool) -> None:
    """The trim's keep flags, less the band's upper cut, with tie quotas at both cuts, as ``merge`` keeps."""
    rng = np.random.default_rng(seed)
    base, (ft,) = _tie_block(rng, n, 1, kind, 4, grid=True, with_base=with_base)
    a = np.abs(_taus(base, (ft,), with_base)[0])
    thr = _level(rng, a)
    quota = _quota(rng, a, thr, "any")
    thr_hi, quota_hi = np.float32(np.inf), 0
    if band:
        thr_hi = _level(rng, a, thr)
        quota_hi = _quota(rng, a, thr_hi, "any")
    keep = np.empty(n, np.uint8)
    kept = keep_flags(base, ft, with_base, thr, quota, np.float32(thr_hi), quota_hi, keep)
    expected = keep_flags_oracle(base, ft, with_base, thr, quota, np.float32(thr_hi), quota_hi)
    np.testing.assert_array_equal(keep.astype(bool), expected)
    assert kept == int(expected.sum())
    restated = _cut(a, thr, quota) & ~_cut(a, np.float32(thr_hi), quota_hi)
    np.testing.assert_array_equal(expected, restated)
