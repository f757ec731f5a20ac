"""Every kernel against its NumPy oracle, on random data rich in the hard cases.

The comparison table ``CASES`` drives the tests: each row runs a kernel and its oracle on the same
generated block and demands bit-identical results. bf16 data with a few distinct magnitudes makes exact
ties and exact zero sums common; hypothesis varies sizes, model counts, dtypes, thresholds and quotas.
Inputs are read-only, like the engine's memory maps, and by default keep to the dtypes and model counts
of ``conftest.SHARED_LAYOUTS``, so that these tests and the end-to-end tests share compiled kernels;
``pytest -m slow`` runs every layout.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import EVERY_LAYOUT, LAYOUT_SCOPES, OUTPUT_KINDS, SHARED_LAYOUTS
from hypothesis import given, settings
from hypothesis import strategies as st

from ooc_ties.kernels import convert, histogram, ties
from ooc_ties.kernels.keep import kept_oracle, trim_oracle
from tests.conftest import read_only

# --------------------------------------------------------------------------------------------------
# conversions


def test_decode_every_16_bit_pattern() -> None:
    patterns = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    for arr in (patterns, patterns.view(np.int16)):
        out = np.empty(arr.size, np.float32)
        convert.decode(arr, out)
        expected = convert.decode_oracle(arr)
        same = (out.view(np.uint32) == expected.view(np.uint32)) | (np.isnan(out) & np.isnan(expected))
        assert same.all(), arr.dtype


def _hard_floats(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random bit patterns, normal values over many scales, and the rounding edge cases of bf16/f16."""
    bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    scaled = (rng.standard_normal(n) * 10.0 ** rng.integers(-9, 6, n)).astype(np.float32)
    edges = np.array(
        [
            0.0,
            65504,
            65519.996,
            65520,
            65536,
            2**-24,
            2**-25,
            2**-25 * 1.0000001,
            1.5 * 2**-24,
            2.5 * 2**-24,
            2**-14,
            2**-14 * (1 - 2**-11),
            3.4e38,
            np.inf,
        ],
        np.float32,
    )
    ties_bf16 = np.array([0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x7F7F8000, 0x00008000], np.uint32).view(np.float32)
    values = np.concatenate([bits, scaled, edges, ties_bf16])
    values = np.concatenate([values, -values])
    return values[~np.isnan(values)]


@pytest.mark.parametrize("storage", [np.uint16, np.int16, np.float32], ids=["bf16", "f16", "f32"])
def test_encode_matches_oracle(storage: type) -> None:
    values = _hard_floats(np.random.default_rng(0), 400_000)
    out = np.empty(values.size, storage)
    convert.encode(values, out)
    np.testing.assert_array_equal(out, convert.encode_oracle(values, np.dtype(storage)))


def test_bf16_encoding_is_round_half_even_like_torch() -> None:
    # 1 + 2**-8 is halfway between bf16 neighbours 1 and 1 + 2**-7: stays at the even one (0x3F80);
    # 1 + 3 * 2**-8 is halfway between 0x3F81 and 0x3F82: goes to the even 0x3F82.
    values = np.array([0x3F808000, 0x3F818000, 0x7F7FFFFF], np.uint32).view(np.float32)
    out = np.empty(3, np.uint16)
    convert.encode(values, out)
    assert out.tolist() == [0x3F80, 0x3F82, 0x7F80]


def test_f16_encoding_agrees_with_numpy_on_a_dense_sweep() -> None:
    # Every 97th float32 pattern between 2**-26 and 2**17: all subnormal and overflow boundaries.
    lo, hi = np.float32(2**-26).view(np.uint32), np.float32(2**17).view(np.uint32)
    values = np.arange(lo, hi, 97, dtype=np.uint32).view(np.float32)
    values = np.concatenate([values, -values])
    out = np.empty(values.size, np.int16)
    convert.encode(values, out)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.int16)
    np.testing.assert_array_equal(out, expected)


# --------------------------------------------------------------------------------------------------
# blocks rich in ties


STORAGE = {"bf16": np.uint16, "f16": np.int16, "f32": np.float32, "f64": np.float64}
KIND = {np.dtype(storage): kind for kind, storage in STORAGE.items()}
Case = tuple[int, tuple[np.ndarray, tuple[np.ndarray, ...]]]


def _storage(values: np.ndarray, kind: str) -> np.ndarray:
    if kind == "f64":
        return values.astype(np.float64)
    return convert.encode_oracle(values.astype(np.float32), np.dtype(STORAGE[kind]))


def _block(seed: int, n: int, n_models: int, kind: str, levels: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """A base and fine-tuned blocks whose task values come from a few levels: many exact ties."""
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal(n) * 0.02).astype(np.float32)
    base_s = _storage(base, kind)
    base_f = convert.decode_oracle(base_s)
    step = np.float32(2.0**-10)
    fts = []
    for _ in range(n_models):
        delta = rng.integers(-levels, levels + 1, n).astype(np.float32) * step
        fts.append(_storage(base_f + delta, kind))
    frozen_base, *frozen_fts = read_only(base_s, *fts)
    return frozen_base, tuple(frozen_fts)


def _thresholds_from_data(base: np.ndarray, fts: tuple[np.ndarray, ...], rng: np.random.Generator) -> np.ndarray:
    """Thresholds equal to actual magnitudes in the data (so ties at the threshold occur)."""
    out = []
    for ft in fts:
        mags = np.abs(convert.decode_oracle(ft) - convert.decode_oracle(base))
        out.append(mags[rng.integers(0, mags.size)] if mags.size else 0.0)
    return np.array(out, np.float32)


def blocks(every: bool) -> st.SearchStrategy[Case]:
    """``(seed, (base, fine-tuned blocks))`` of any layout (``every``), or of the shared layouts."""
    layouts = EVERY_LAYOUT if every else sorted(SHARED_LAYOUTS)
    return st.builds(
        lambda seed, n, layout, levels: (seed, _block(seed, n, layout[1], layout[0], levels)),
        seed=st.integers(0, 2**31),
        n=st.integers(0, 3000),
        layout=st.sampled_from(layouts),
        levels=st.integers(0, 6),
    )


def _output(data: st.DataObject, every: bool, kind: str, n_models: int) -> np.dtype:
    """An output storage for inputs of ``kind``: any (``every``), or one the shared layouts list."""
    outs = OUTPUT_KINDS if every else SHARED_LAYOUTS[kind, n_models]
    return np.dtype(STORAGE[data.draw(st.sampled_from(outs), label="output")])


@pytest.mark.parametrize("every", LAYOUT_SCOPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_high_histogram_matches_oracle(every: bool, data: st.DataObject) -> None:
    _, (base, fts) = data.draw(blocks(every))
    hist = np.zeros((len(fts), histogram.HIGH_BINS), np.int64)
    bad = np.full(len(fts), -1, np.int64)
    histogram.high_histogram(base, fts, hist, bad)
    expected_hist, expected_bad = histogram.high_histogram_oracle(base, fts)
    np.testing.assert_array_equal(hist, expected_hist)
    np.testing.assert_array_equal(bad, expected_bad)


@pytest.mark.parametrize("every", LAYOUT_SCOPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_low_histogram_and_count_equal_match_oracles(every: bool, data: st.DataObject) -> None:
    seed, (base, fts) = data.draw(blocks(every))
    rng = np.random.default_rng(seed)
    patterns = _thresholds_from_data(base, fts, rng).view(np.uint32).astype(np.int64)
    patterns[rng.random(len(fts)) < 0.2] = -1  # some models skipped
    high = np.where(patterns >= 0, patterns >> 16, -1)
    low = np.zeros((len(fts), histogram.LOW_BINS), np.int64)
    histogram.low_histogram(base, fts, high, low)
    np.testing.assert_array_equal(low, histogram.low_histogram_oracle(base, fts, high))
    counts = np.zeros(len(fts), np.int64)
    histogram.count_equal(base, fts, patterns, counts)
    np.testing.assert_array_equal(counts, histogram.count_equal_oracle(base, fts, patterns))


def _bracket_slots(
    base: np.ndarray, fts: tuple[np.ndarray, ...], rng: np.random.Generator, max_slots: int
) -> tuple[np.ndarray, int]:
    """Random brackets: bins the data fill, their neighbours (values at the bracket's edges) and empty
    bins, up to ``max_slots`` per model; some models get none."""
    n_slots = int(rng.integers(1, max_slots + 1))
    slots = np.full((len(fts), histogram.HIGH_BINS), -1, np.int32)
    for t, ft in enumerate(fts):
        used = np.unique(histogram.magnitude_bits_oracle(base, ft) >> 16)
        used = used[used < 0x7F80]
        candidates = np.unique(np.concatenate([used, used + 1, used - 1, rng.integers(0, 0x7F80, 3)]))
        candidates = candidates[(candidates >= 0) & (candidates < 0x7F80)]
        k = int(rng.integers(0, min(n_slots, candidates.size) + 1))
        chosen = rng.choice(candidates, size=k, replace=False)
        slots[t, chosen] = rng.permutation(n_slots)[:k]  # any slot order, unused slots allowed
    return slots, n_slots


@pytest.mark.parametrize("every", LAYOUT_SCOPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bracket_histogram_matches_oracle(every: bool, data: st.DataObject) -> None:
    seed, (base, fts) = data.draw(blocks(every))
    slots, n_slots = _bracket_slots(base, fts, np.random.default_rng(seed), 8)
    counts = np.zeros((len(fts), histogram.bracket_width(n_slots)), np.int64)
    bad = np.full(len(fts), -1, np.int64)
    table = histogram.bracket_table(slots)
    span = histogram.bracket_span(slots)
    histogram.bracket_histogram(base, fts, table, span, counts, bad)
    histogram.bracket_histogram(base, fts, table, span, counts, bad)  # counts add up over blocks
    high, low = histogram.bracket_split(counts, slots)
    expected_high, expected_low, expected_bad = histogram.bracket_histogram_oracle(base, fts, slots, n_slots)
    np.testing.assert_array_equal(high, 2 * expected_high)
    np.testing.assert_array_equal(low, 2 * expected_low)
    np.testing.assert_array_equal(bad, expected_bad)
    # inside the span the same high-bits histogram as the two-read kernel, the same count of finite
    # values, and for a bracketed bin the same low bits
    two_read = np.zeros((len(fts), histogram.HIGH_BINS), np.int64)
    histogram.high_histogram(base, fts, two_read, np.full(len(fts), -1, np.int64))
    for t, (first, end) in enumerate(span):
        np.testing.assert_array_equal(high[t, first:end], 2 * two_read[t, first:end])
        assert high[t].sum() == 2 * two_read[t].sum()
    bins = np.array([int(np.argmax(row)) if (row >= 0).any() else -1 for row in slots], np.int64)
    lows = np.zeros((len(fts), histogram.LOW_BINS), np.int64)
    histogram.low_histogram(base, fts, bins, lows)
    for t in range(len(fts)):
        if bins[t] >= 0:
            np.testing.assert_array_equal(low[t, slots[t, bins[t]]], 2 * lows[t])


def test_bracket_histogram_edges_and_zeros() -> None:
    """Patterns at the first and last low bits of a bracketed bin and just outside it, and exact zeros."""
    b = 0x3F80  # the bin of 1.0
    patterns = np.array(
        [(b << 16) - 1, b << 16, (b << 16) | 0xFFFF, (b + 1) << 16, (b << 16) | 0x1234, 0, 0, 0], np.uint32
    )
    ft = patterns.view(np.float32)
    base = np.zeros(ft.size, np.float32)
    zeros = base.copy()  # an all-zero task vector
    slots = np.full((2, histogram.HIGH_BINS), -1, np.int32)
    slots[0, b] = 1
    slots[1, 0] = 0
    counts = np.zeros((2, histogram.bracket_width(2)), np.int64)
    bad = np.full(2, -1, np.int64)
    base, ft, zeros = read_only(base, ft, zeros)
    histogram.bracket_histogram(
        base, (ft, zeros), histogram.bracket_table(slots), histogram.bracket_span(slots), counts, bad
    )
    high, low = histogram.bracket_split(counts, slots)
    # the span is bin b alone: the values below it (the three zeros too) count in bin b - 1
    assert high[0, b - 1] == 4 and high[0, b] == 3 and high[0, b + 1] == 1 and high[0].sum() == 8
    assert low[0, 1, 0] == 1 and low[0, 1, 0xFFFF] == 1 and low[0, 1, 0x1234] == 1 and low[0, 1].sum() == 3
    assert low[0, 0].sum() == 0
    assert high[1, 0] == 8 and low[1, 0, 0] == 8 and high[1].sum() == 8
    assert bad.tolist() == [-1, -1]


def test_bracket_histogram_reports_first_non_finite() -> None:
    base = np.zeros(10, np.float32)
    ft = np.ones(10, np.float32)
    ft[[3, 7, 9]] = [np.nan, np.inf, -np.inf]  # one in the unrolled part's lane 3, one in the tail
    slots = np.full((2, histogram.HIGH_BINS), -1, np.int32)
    slots[:, 0x3F80] = 0  # 1.0: in the bracket
    counts = np.zeros((2, histogram.bracket_width(1)), np.int64)
    bad = np.full(2, -1, np.int64)
    base, zeros, ft = read_only(base, base, ft)
    histogram.bracket_histogram(
        base, (zeros, ft), histogram.bracket_table(slots), histogram.bracket_span(slots), counts, bad
    )
    high, low = histogram.bracket_split(counts, slots)
    assert bad.tolist() == [-1, 3]
    assert high[1].sum() == 7 and high[1, 0x3F80] == 7 and low[1, 0, 0] == 7
    assert high[0].sum() == 10 and high[0, 0x3F7F] == 10  # zeros, below the span


def test_bracket_histogram_non_finite_beyond_the_first_tile() -> None:
    """Blocks longer than a tile, with non-finite values in a later tile and in the block's tail."""
    rng = np.random.default_rng(7)
    n = 3 * histogram.TILE + 6
    base = rng.standard_normal(n).astype(np.float32)
    ft = base + rng.standard_normal(n).astype(np.float32)
    ft[[histogram.TILE + 5, n - 2]] = [np.inf, np.nan]
    base, *frozen = read_only(base, base + np.float32(0.5), ft)
    fts = tuple(frozen)
    slots, n_slots = _bracket_slots(base, fts, rng, 8)
    counts = np.zeros((2, histogram.bracket_width(n_slots)), np.int64)
    bad = np.full(2, -1, np.int64)
    histogram.bracket_histogram(base, fts, histogram.bracket_table(slots), histogram.bracket_span(slots), counts, bad)
    high, low = histogram.bracket_split(counts, slots)
    expected_high, expected_low, expected_bad = histogram.bracket_histogram_oracle(base, fts, slots, n_slots)
    assert bad.tolist() == expected_bad.tolist() == [-1, histogram.TILE + 5]
    np.testing.assert_array_equal(high, expected_high)
    np.testing.assert_array_equal(low, expected_low)


def test_bracket_table_refuses_non_finite_bins() -> None:
    slots = np.full((1, histogram.HIGH_BINS), -1, np.int32)
    slots[0, 0x7F80] = 0
    with pytest.raises(ValueError, match="non-finite"):
        histogram.bracket_table(slots)


def test_high_histogram_reports_first_non_finite() -> None:
    base = np.zeros(10, np.float32)
    ft = np.zeros(10, np.float32)
    ft[[3, 7]] = [np.nan, np.inf]
    hist = np.zeros((2, histogram.HIGH_BINS), np.int64)
    bad = np.full(2, -1, np.int64)
    base, zeros, ft = read_only(base, base, ft)
    histogram.high_histogram(base, (zeros, ft), hist, bad)
    assert bad.tolist() == [-1, 3]
    assert hist[1].sum() == 8


merge_params = st.fixed_dictionaries(
    {
        "quota_kind": st.sampled_from(["all", "some", "none"]),
        "weights": st.sampled_from(["ones", "random", "with_zero", "negative"]),
        "lam": st.sampled_from([1.0, 0.5, 1.7, -0.3]),
        "zero_positive": st.booleans(),
        "capacity": st.sampled_from([0, 1, 3, 4096]),
    }
)


def _recorded_oracle(
    base: np.ndarray,
    fts: tuple[np.ndarray, ...],
    thr: np.ndarray,
    quota: np.ndarray,
    weights: np.ndarray,
    capacity: int,
) -> np.ndarray:
    """The indices of the open elements :func:`ties.merge` records, by the rule it states: the first
    ``capacity`` open elements in block order, leaving out those with a value exactly at its model's
    threshold under a tie quota (whether that value is kept depends on the ties before it)."""
    b = convert.decode_oracle(base)
    taus = [convert.decode_oracle(ft) - b for ft in fts]
    v = [np.float32(weights[t]) * trim_oracle(tau, thr[t], int(quota[t])) for t, tau in enumerate(taus)]
    s = np.zeros(b.size, np.float32)
    for vt in v:
        s = s + vt
    open_ = (s == 0) & np.any([vt != 0 for vt in v], axis=0)
    undecided = np.any([(quota[t] >= 0) & (np.abs(tau) == thr[t]) for t, tau in enumerate(taus)], axis=0)
    return np.flatnonzero(open_ & ~undecided)[:capacity]


def _merge_args(seed: int, fts: tuple[np.ndarray, ...], base: np.ndarray, params: dict) -> tuple:
    rng = np.random.default_rng(seed + 1)
    n_models = len(fts)
    thr = _thresholds_from_data(base, fts, rng)
    quota = {
        "all": np.full(n_models, -1),
        "some": rng.integers(0, 50, n_models),
        "none": np.zeros(n_models, np.int64),
    }[params["quota_kind"]].astype(np.int64)
    weights = {
        "ones": np.ones(n_models),
        "random": rng.uniform(0.1, 2.0, n_models),
        "with_zero": np.where(np.arange(n_models) == 0, 0.0, 1.0),
        "negative": rng.uniform(-1.0, 1.0, n_models),
    }[params["weights"]].astype(np.float32)
    return thr, quota, weights, np.float32(params["lam"]), params["zero_positive"]


@pytest.mark.parametrize("every", LAYOUT_SCOPES)
@settings(max_examples=80, deadline=None)
@given(data=st.data(), params=merge_params)
def test_merge_matches_oracle(every: bool, data: st.DataObject, params: dict) -> None:
    seed, (base, fts) = data.draw(blocks(every))
    thr, quota, weights, lam, zero_positive = _merge_args(seed, fts, base, params)
    storage = _output(data, every, KIND[base.dtype], len(fts))
    out = np.empty(base.size, storage)
    votes = np.zeros(4, np.int64)
    capacity = params["capacity"]
    open_at = np.full(capacity, -1, np.int64)
    open_alt = np.empty(capacity, storage)
    kept = np.zeros(len(fts), np.int64)
    flags = (zero_positive, True, True)  # zero sign, consensus, normalize: TIES
    bad = ties.merge(base, fts, thr, quota, weights, lam, *flags, out, votes, kept, open_at, open_alt)
    expected, expected_votes = ties.merge_oracle(base, fts, thr, quota, weights, lam, zero_positive, storage)
    np.testing.assert_array_equal(out.view(np.uint8), expected.view(np.uint8))
    np.testing.assert_array_equal(votes[:3], expected_votes)
    np.testing.assert_array_equal(kept, kept_oracle(base, fts, thr, quota))
    assert bad == -1  # inputs are small: nothing overflows
    # The recorded open elements hold the result under the other sign; the rest are counted as lost.
    expected_at = _recorded_oracle(base, fts, thr, quota, weights, capacity)
    recorded = int(votes[2] - votes[3])
    assert recorded == expected_at.size
    at = open_at[:recorded]
    np.testing.assert_array_equal(at, expected_at)
    flipped, _ = ties.merge_oracle(base, fts, thr, quota, weights, lam, not zero_positive, storage)
    np.testing.assert_array_equal(open_alt[:recorded].view(np.uint8), flipped[at].view(np.uint8))
    patched = out.copy()
    patched[at] = open_alt[:recorded]
    if votes[3] == 0:  # every open element recorded: patching gives exactly the merge under the other sign
        np.testing.assert_array_equal(patched.view(np.uint8), flipped.view(np.uint8))


@pytest.mark.parametrize("every", LAYOUT_SCOPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), params=merge_params)
def test_elect_count_matches_oracle(every: bool, data: st.DataObject, params: dict) -> None:
    seed, (base, fts) = data.draw(blocks(every))
    thr, quota, weights, _, _ = _merge_args(seed, fts, base, params)
    counts = np.zeros(3, np.int64)
    kept = np.zeros(len(fts), np.int64)
    ties.elect_count(base, fts, thr, quota, weights, counts, kept)
    np.testing.assert_array_equal(counts, ties.elect_count_oracle(base, fts, thr, quota, weights))
    np.testing.assert_array_equal(kept, kept_oracle(base, fts, thr, quota))
    no_count = np.zeros(0, np.int64)  # an empty ``kept``: nothing counted, the votes the same
    counts[:] = 0
    ties.elect_count(base, fts, thr, quota, weights, counts, no_count)
    np.testing.assert_array_equal(counts, ties.elect_count_oracle(base, fts, thr, quota, weights))


def test_exact_zero_sums_follow_the_zero_sign_rule() -> None:
    # Two models with opposite task values: the vote is exactly 0 everywhere.
    base, *frozen = read_only(
        np.zeros(4, np.float32), np.array([1, -2, 0, 3], np.float32), np.array([-1, 2, 0, -3], np.float32)
    )
    fts = tuple(frozen)
    args = (np.zeros(2, np.float32), np.full(2, -1, np.int64), np.ones(2, np.float32), np.float32(1))
    positive = np.empty(4, np.float32)
    negative = np.empty(4, np.float32)
    votes = np.zeros(4, np.int64)
    at, alt = np.zeros(2, np.int64), np.empty(2, np.float32)
    ties.merge(base, fts, *args, True, True, True, positive, votes, np.zeros(len(fts), np.int64), at, alt)
    assert at.tolist() == [0, 1] and alt.tolist() == [-1, -2]  # capacity 2: the third is lost
    ties.merge(base, fts, *args, False, True, True, negative, votes, np.zeros(len(fts), np.int64), at, alt)
    assert positive.tolist() == [1, 2, 0, 3]
    assert negative.tolist() == [-1, -2, 0, -3]
    assert votes.tolist() == [0, 0, 6, 2]  # three open elements (index 2 has no non-zero value), twice


def test_quota_keeps_the_first_ties_in_block_order() -> None:
    base, ft = read_only(np.zeros(6, np.float32), np.array([1, -1, 1, 2, 1, -1], np.float32))
    out = np.empty(6, np.float32)
    votes = np.zeros(4, np.int64)
    thr, quota, weights = np.array([1.0], np.float32), np.array([2]), np.ones(1, np.float32)
    kept = np.zeros(1, np.int64)
    ties.merge(base, (ft,), thr, quota, weights, np.float32(1), True, True, True, out, votes, kept, *_no_record())
    # |tau| > 1 is always kept; of the four values equal to 1 only the first two (indices 0 and 1).
    assert out.tolist() == [1, -1, 0, 2, 0, 0]
    assert votes.tolist() == [2, 1, 0, 0]


def _no_record(out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """No room to record open elements (``open_at``, ``open_alt`` in the storage of ``out``)."""
    return np.zeros(0, np.int64), np.zeros(0, np.float32 if out is None else out.dtype)


def test_an_open_element_decided_by_a_tie_quota_is_not_recorded() -> None:
    base, *frozen = read_only(np.zeros(2, np.float32), np.array([1, 2], np.float32), np.array([-1, -2], np.float32))
    fts = tuple(frozen)
    thr, quota, weights = np.array([1.0, 1.0], np.float32), np.array([1, -1]), np.ones(2, np.float32)
    votes = np.zeros(4, np.int64)
    at, alt = np.zeros(4, np.int64), np.empty(4, np.float32)
    kept = np.zeros(len(fts), np.int64)
    out = np.empty(2, np.float32)
    ties.merge(base, fts, thr, quota, weights, np.float32(1), True, True, True, out, votes, kept, at, alt)
    assert votes.tolist() == [0, 0, 2, 1]  # element 0 has a value at model 0's threshold, under a quota
    assert at[0] == 1 and alt[0] == -2.0


def test_merge_reports_overflow_in_the_output_dtype() -> None:
    # bf16 inputs (60000 and 70000 round to 59904 and 70144): their mean does not fit in float16
    bf16 = np.dtype(np.uint16)
    base, ft = read_only(
        convert.encode_oracle(np.full(3, 60000.0, np.float32), bf16),
        convert.encode_oracle(np.array([60000.0, 70000.0, 60001.0], np.float32), bf16),
    )
    out = np.empty(3, np.int16)  # float16
    args = (np.zeros(3, np.float32), np.full(3, -1), np.ones(3, np.float32), np.float32(1), True)
    counts = (np.zeros(4, np.int64), np.zeros(3, np.int64))
    bad = ties.merge(base, (ft, ft, ft), *args, True, True, out, *counts, *_no_record(out))
    assert bad == 1


@pytest.mark.parametrize("every", LAYOUT_SCOPES)
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), params=merge_params, data=st.data())
def test_open_elements_are_recorded_with_their_other_result(
    every: bool, seed: int, params: dict, data: st.DataObject
) -> None:
    """Fine-tunes built to cancel exactly at many elements: every recorded open element holds the
    oracle's result under the other sign, and patching them all gives the other sign's merge."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5000))
    base = rng.standard_normal(n).astype(np.float32)
    tau = (rng.standard_normal(n) * 0.01).astype(np.float32)
    cancel = rng.random(n) < 0.3
    ft1 = base + tau
    ft2 = np.where(cancel, base - tau, base + (rng.standard_normal(n) * 0.01).astype(np.float32)).astype(np.float32)
    ft3 = (base + tau * np.float32(0.5)).astype(np.float32)
    base, *frozen = read_only(base, ft1.astype(np.float32), ft2, ft3)
    fts = tuple(frozen[: int(rng.integers(2, 4))])
    thr, quota, weights, lam, zero_positive = _merge_args(seed, fts, base, params)
    weights = np.ones(len(fts), np.float32) if params["weights"] != "random" else weights
    storage = _output(data, every, "f32", len(fts))
    capacity = params["capacity"]
    out, votes = np.empty(n, storage), np.zeros(4, np.int64)
    at, alt = np.full(capacity, -1, np.int64), np.empty(capacity, storage)
    kept = np.zeros(len(fts), np.int64)
    ties.merge(base, fts, thr, quota, weights, lam, zero_positive, True, True, out, votes, kept, at, alt)
    flipped, _ = ties.merge_oracle(base, fts, thr, quota, weights, lam, not zero_positive, storage)
    recorded = int(votes[2] - votes[3])
    expected_at = _recorded_oracle(base, fts, thr, quota, weights, capacity)
    assert recorded == expected_at.size
    np.testing.assert_array_equal(at[:recorded], expected_at)
    np.testing.assert_array_equal(alt[:recorded].view(np.uint8), flipped[at[:recorded]].view(np.uint8))
    if votes[3] == 0:
        out[at[:recorded]] = alt[:recorded]
        np.testing.assert_array_equal(out.view(np.uint8), flipped.view(np.uint8))
