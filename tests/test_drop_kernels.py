"""The random-drop kernels (DARE, DELLA) against their NumPy oracles, the generator's spec and quality.

Golden values pin the generator's formulas (a change to any constant changes every mask a merge has
ever produced). Hypothesis varies keys, starts, lengths, splits, probabilities, row shapes and dtypes;
magnitudes come from small pools so that exact ties are common. The statistical tests use bounds of
5.5 standard deviations or more: a correct generator fails one of them about once in 10**7 runs, and
their seeds are fixed, so they pass or fail the same way every time.
"""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ooc_ties.errors import OptionError
from ooc_ties.kernels import drop

MASK64 = (1 << 64) - 1
Z = 5.5
"""Standard deviations allowed by the statistical tests."""


def _u64(key: int) -> np.uint64:
    # kernels take keys as uint64 (a Python int below 2**63 would compile a second, int64 version)
    return np.uint64(key)


def _splitmix64(seed: int, count: int) -> list[int]:
    """The reference SplitMix64 generator (Steele, Lea and Flood 2014; Vigna's splitmix64.c)."""
    state = seed
    out = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


def _split(rng: np.random.Generator, n: int, pieces: int, step: int = 1) -> list[int]:
    """Sorted cut points 0 = c0 <= ... <= ck = n, multiples of ``step`` (empty pieces allowed)."""
    inner = rng.integers(0, n // step + 1, size=pieces - 1) * step
    return [0, *sorted(int(c) for c in inner), n]


def _mask_bytes(keep: np.ndarray) -> str:
    return np.packbits(keep.astype(bool), bitorder="little").tobytes().hex()


# --------------------------------------------------------------------------------------------------
# the generator's spec


def test_bits_are_splitmix64_outputs() -> None:
    # splitmix64.c seeded with 0 starts 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F
    assert [int(drop.element_bits(_u64(0), i)) for i in range(3)] == [
        0xE220A8397B1DCDAF,
        0x6E789E6AA1B965F4,
        0x06C45D188009454F,
    ]
    for key in (0, 1, 0x0123456789ABCDEF, MASK64):
        expected = _splitmix64(key, 300)
        assert [int(drop.element_bits(_u64(key), i)) for i in range(300)] == expected
        assert drop.bits_oracle(key, 0, 300).tolist() == expected
        assert drop.bits_oracle(key, 200, 100).tolist() == expected[200:]


def test_keys_are_pinned() -> None:
    name = "model.layers.0.mlp.down_proj.weight"
    tk = drop.tensor_key(name)
    assert tk == int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") == 0x55F21C122A88A1D2
    assert drop.stream_key(0, 0, tk) == 0xB809B80AB7D9CC99
    assert drop.stream_key(42, 3, tk) == 0x628F817365A9E976
    assert drop.stream_key(-1, 0, 0) == drop.stream_key(MASK64, 0, 0) == 0xF4C5F3A54E47F82B  # modulo 2**64


def test_masks_are_pinned() -> None:
    key = drop.stream_key(42, 3, drop.tensor_key("model.layers.0.mlp.down_proj.weight"))
    keep = np.empty(64, bool)
    drop.random_keep(_u64(key), 1000, 0.5, keep)
    assert _mask_bytes(keep) == "df27920ae2e12d28"
    row = np.array([3, 1, 1, 2, -1, 0, 5, 4, 2, 2, 0.5, 7, 6, 1, 3, 9] * 4, np.float32)
    drop.della_keep(_u64(key), 64, row, 16, 0.5, 0.3, keep)
    assert _mask_bytes(keep) == "4248e9bb8fdae97b"


def test_stream_keys_do_not_collide() -> None:
    tensors = [drop.tensor_key(f"model.layers.{i}.self_attn.q_proj.weight") for i in range(40)]
    keys = {drop.stream_key(seed, model, tk) for seed in range(20) for model in range(8) for tk in tensors}
    assert len(keys) == 20 * 8 * 40
    assert all(0 <= k <= MASK64 for k in keys)


# --------------------------------------------------------------------------------------------------
# DARE: kernel against oracle

_P_SPECIAL = [0.0, 1.0, -0.5, 1.5, 2.0**-24, 1 - 2.0**-24, 0.5, 0.3, float(np.float32(0.1)), 2.0**-30]


@settings(max_examples=80, deadline=None)
@given(
    key=st.integers(0, MASK64),
    start=st.integers(0, 1 << 40),
    n=st.integers(0, 5000),
    p=st.one_of(
        st.sampled_from(_P_SPECIAL),
        st.floats(-0.1, 1.1),
        st.integers(0, 1 << 24).map(lambda k: k / 2.0**24),
        st.integers(1, (1 << 24) - 1).map(lambda k: math.nextafter(k / 2.0**24, 1.0)),
    ),
    pieces=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_keep_matches_oracle_whatever_the_tiles(
    key: int, start: int, n: int, p: float, pieces: int, seed: int
) -> None:
    expected = drop.random_keep_oracle(key, start, n, p)
    whole = np.empty(n, bool)
    assert drop.random_keep(_u64(key), start, p, whole) == np.count_nonzero(expected)
    np.testing.assert_array_equal(whole, expected)
    cuts = _split(np.random.default_rng(seed), n, pieces)
    tiled = np.empty(n, bool)
    kept = 0
    for a, b in itertools.pairwise(cuts):
        kept += drop.random_keep_tile(_u64(key), start + a, b - a, p, tiled[a:b])
    np.testing.assert_array_equal(tiled, expected)
    assert kept == np.count_nonzero(expected)


def test_random_keep_into_uint8() -> None:
    key = drop.stream_key(7, 1, drop.tensor_key("lm_head.weight"))
    as_bool = np.empty(10_000, bool)
    as_u8 = np.full(10_000, 9, np.uint8)
    drop.random_keep(_u64(key), 123, 0.25, as_bool)
    drop.random_keep(_u64(key), 123, 0.25, as_u8)
    np.testing.assert_array_equal(as_u8, as_bool.view(np.uint8))


def test_the_threshold_is_u_below_p_times_2_to_the_24() -> None:
    key = drop.stream_key(3, 0, drop.tensor_key("w"))
    u = drop.bits_oracle(key, 0, 4000) >> np.uint64(40)
    for i in (5, 77, 1234, 3999):
        ui = int(u[i])
        keep = np.empty(1, bool)
        exact = ui / 2.0**24  # u < u is false: dropped
        for p, kept in ((exact, False), (math.nextafter(exact, 2.0), True), ((ui + 1) / 2.0**24, True)):
            drop.random_keep_tile(_u64(key), i, 1, p, keep)
            assert bool(keep[0]) is kept, (ui, p)


def test_random_keep_extremes() -> None:
    key = _u64(drop.stream_key(0, 0, 0))
    keep = np.empty(20_000, bool)
    assert drop.random_keep(key, 0, 1.0, keep) == 20_000 and keep.all()
    assert drop.random_keep(key, 0, 7.0, keep) == 20_000 and keep.all()
    assert drop.random_keep(key, 0, 0.0, keep) == 0 and not keep.any()
    assert drop.random_keep(key, 0, -1.0, keep) == 0 and not keep.any()
    assert drop.random_keep(key, 0, math.nan, keep) == 0 and not keep.any()


def test_dare_probability_is_float32_density() -> None:
    assert drop.dare_probability(0.1) == float(np.float32(0.1)) != 0.1
    assert drop.dare_probability(1.0) == 1.0


# --------------------------------------------------------------------------------------------------
# the generator's quality


def _within(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= Z * math.sqrt(n * p * (1 - p))


def test_keep_rates_of_many_streams_are_binomial() -> None:
    n = 1 << 16
    z_scores = []
    for seed in range(3):
        for model in range(4):
            for t in range(8):
                p = (0.1, 0.5, 0.9, 0.03)[(seed + model + t) % 4]
                key = drop.stream_key(seed, model, drop.tensor_key(f"layer.{t}.weight"))
                keep = np.empty(n, bool)
                count = drop.random_keep(_u64(key), 1 << 20, p, keep)
                assert _within(count, n, p), (seed, model, t, count)
                z_scores.append((count - n * p) / math.sqrt(n * p * (1 - p)))
    z = np.array(z_scores)
    # 96 independent z-scores: mean ~ N(0, 1/96), sum of squares ~ chi2(96) (mean 96, sd 13.9)
    assert abs(z.mean()) * math.sqrt(z.size) < Z
    assert abs((z**2).sum() - z.size) < Z * math.sqrt(2 * z.size)


def test_u_is_uniform() -> None:
    n = 1 << 20
    u = drop.bits_oracle(drop.stream_key(0, 0, drop.tensor_key("x")), 0, n) >> np.uint64(40)
    for shift in (16, 8, 0):  # the top, middle and bottom 8 of u's 24 bits
        counts = np.bincount(((u >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.int64), minlength=256)
        chi2 = ((counts - n / 256) ** 2 / (n / 256)).sum()  # 255 degrees of freedom: mean 255, sd 22.6
        assert abs(chi2 - 255) < Z * math.sqrt(2 * 255), (shift, chi2)


def _uniform(seed: int, model: int, name: str, n: int, start: int = 0) -> np.ndarray:
    key = drop.stream_key(seed, model, drop.tensor_key(name))
    u: np.ndarray = (drop.bits_oracle(key, start, n) >> np.uint64(40)).astype(np.float64) / 2.0**24
    return u


def _uncorrelated(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(abs(np.corrcoef(a, b)[0, 1]) < Z / math.sqrt(a.size))


def test_adjacent_elements_are_independent() -> None:
    n = 1 << 20
    u = _uniform(0, 0, "model.embed_tokens.weight", n + 1)
    assert _uncorrelated(u[:-1], u[1:])
    keep = u < 0.3
    both = int(np.count_nonzero(keep[:-1] & keep[1:]))
    assert _within(both, n, 0.09)


def test_models_seeds_and_tensors_give_unrelated_streams() -> None:
    n = 1 << 20
    u = _uniform(0, 0, "a.weight", n)
    for other in (
        _uniform(0, 1, "a.weight", n),  # the next model
        _uniform(1, 0, "a.weight", n),  # the next seed
        _uniform(0, 0, "b.weight", n),  # another tensor
        _uniform(1, 1, "a.weight", n),
    ):
        assert _uncorrelated(u, other)
        assert _within(int(np.count_nonzero((u < 0.5) == (other < 0.5))), n, 0.5)
    assert _uncorrelated(u[1:], _uniform(0, 1, "a.weight", n - 1))  # nor shifted by one element
    assert _uncorrelated(u, _uniform(1, 0, "a.weight", n, start=1))


# --------------------------------------------------------------------------------------------------
# DELLA: options


def test_della_epsilon_accepted() -> None:
    assert drop.parse_della_epsilon(0.5, 0.15) == 0.15
    assert drop.parse_della_epsilon(0.5, 0.0) == 0.0
    assert drop.parse_della_epsilon(0.5, -0.2) == -0.2  # mergekit allows it: p then falls with rank
    assert drop.parse_della_epsilon(1.0, 0.9) == 0.9  # keep all: epsilon unused, as in mergekit
    assert drop.parse_della_epsilon(0.0, 0.9) == 0.9  # keep none


@pytest.mark.parametrize(
    ("density", "epsilon"), [(0.9, 0.15), (0.1, 0.15), (0.5, 0.5), (0.5, -0.5), (0.3, math.nan), (math.nan, 0.1)]
)
def test_della_epsilon_rejected(density: float, epsilon: float) -> None:
    with pytest.raises(OptionError) as caught:
        drop.parse_della_epsilon(density, epsilon)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in message and f"density {density!r}" in message and f"epsilon {epsilon!r}" in message
    assert "(0, 1)" in message


# --------------------------------------------------------------------------------------------------
# DELLA: ranks


def test_ranks_break_ties_by_index_and_ignore_signs() -> None:
    row = np.array([3, 1, 1, 2, -1, 0, -0.0, 2], np.float32)
    out = np.empty(row.size, np.int32)
    drop.rank_rows(row, row.size, out)
    assert out.tolist() == [8, 3, 4, 6, 5, 1, 2, 7]
    special = np.array([np.nan, np.inf, 1, -np.inf, -np.nan, 0], np.float32)
    out = np.empty(special.size, np.int32)
    drop.rank_rows(special, special.size, out)
    assert out.tolist() == [5, 3, 2, 4, 6, 1]  # +-inf tie, then the NaNs by index
    np.testing.assert_array_equal(out, drop.row_ranks_oracle(special, special.size))


def _magnitudes(rng: np.random.Generator, n: int, dtype: str, pool: int) -> np.ndarray:
    """Values from a pool of ``pool`` magnitudes (ties galore), random signs, some +-0."""
    mags = np.abs(rng.standard_normal(pool) * 10.0 ** rng.integers(-8, 1, pool)).astype(np.float32)
    mags[0] = 0.0
    values: np.ndarray = mags[rng.integers(0, pool, n)] * rng.choice(np.array([-1, 1], np.float32), n)
    if dtype == "bf16":
        bits: np.ndarray = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncated: still many ties
        return bits
    return values


@settings(max_examples=80, deadline=None)
@given(
    dtype=st.sampled_from(["f32", "bf16"]),
    ncols=st.one_of(st.integers(1, 40), st.integers(41, 3000)),
    nrows=st.integers(1, 5),
    pool=st.sampled_from([1, 2, 7, 100, 100_000]),
    seed=st.integers(0, 2**32 - 1),
)
def test_row_ranks_match_oracle(dtype: str, ncols: int, nrows: int, pool: int, seed: int) -> None:
    mags = _magnitudes(np.random.default_rng(seed), nrows * ncols, dtype, pool)
    out = np.empty(mags.size, np.int32)
    drop.rank_rows(mags, ncols, out)
    np.testing.assert_array_equal(out, drop.row_ranks_oracle(mags, ncols))
    assert (np.sort(out.reshape(nrows, ncols), axis=1) == np.arange(1, ncols + 1)).all()


def test_row_ranks_reject_partial_rows() -> None:
    out = np.empty(10, np.int32)
    with pytest.raises(ValueError, match="whole rows"):
        drop.rank_rows(np.zeros(10, np.float32), 4, out)


# --------------------------------------------------------------------------------------------------
# DELLA: keep masks

_DENSITY_EPSILON = st.one_of(
    st.floats(0.02, 0.98).flatmap(
        lambda d: st.tuples(st.just(d), st.floats(-0.999, 0.999).map(lambda f: f * min(d, 1 - d)))
    ),
    st.sampled_from([(1.0, 0.3), (0.0, 0.3), (1.5, 0.0), (-0.1, 0.0), (0.5, 0.49), (0.5, 0.0)]),
)


@settings(max_examples=80, deadline=None)
@given(
    dtype=st.sampled_from(["f32", "bf16"]),
    ncols=st.one_of(st.integers(1, 40), st.integers(41, 2000)),
    nrows=st.integers(1, 6),
    first_row=st.integers(0, 1 << 20),
    pool=st.sampled_from([1, 3, 50, 100_000]),
    options=_DENSITY_EPSILON,
    key=st.integers(0, MASK64),
    seed=st.integers(0, 2**32 - 1),
)
def test_della_keep_matches_oracle_whatever_the_blocks(
    dtype: str,
    ncols: int,
    nrows: int,
    first_row: int,
    pool: int,
    options: tuple[float, float],
    key: int,
    seed: int,
) -> None:
    density, epsilon = options
    rng = np.random.default_rng(seed)
    mags = _magnitudes(rng, nrows * ncols, dtype, pool)
    start = first_row * ncols
    expected = drop.della_keep_oracle(key, start, mags, ncols, density, epsilon)
    keep = np.empty(mags.size, bool)
    assert drop.della_keep(_u64(key), start, mags, ncols, density, epsilon, keep) == np.count_nonzero(expected)
    np.testing.assert_array_equal(keep, expected)
    cuts = _split(rng, mags.size, int(rng.integers(1, 5)), step=ncols)
    blocks = np.empty(mags.size, bool)
    for a, b in itertools.pairwise(cuts):
        drop.della_keep_block(_u64(key), start + a, mags[a:b], ncols, density, epsilon, blocks[a:b])
    np.testing.assert_array_equal(blocks, expected)


def test_della_keep_is_the_same_for_the_signed_task_vector() -> None:
    rng = np.random.default_rng(5)
    tau = _magnitudes(rng, 64 * 30, "f32", 40)
    key = _u64(drop.stream_key(1, 2, drop.tensor_key("t")))
    signed = np.empty(tau.size, bool)
    unsigned = np.empty(tau.size, bool)
    drop.della_keep(key, 0, tau, 64, 0.4, 0.1, signed)
    drop.della_keep(key, 0, np.abs(tau), 64, 0.4, 0.1, unsigned)
    np.testing.assert_array_equal(signed, unsigned)


def test_della_probability_follows_mergekits_expression() -> None:
    ranks = np.arange(1, 6)
    p = drop.della_probability_oracle(ranks, 5, 0.5, 0.1)
    assert p.dtype == np.float32
    low, eps = np.float32(0.5 - 0.1), np.float32(0.1)
    assert p.tolist() == [low + np.float32(q / 4 * 2) * eps for q in range(5)]
    assert p[0] == np.float32(0.4) and abs(p[-1] - 0.6) < 1e-7 and abs(p[2] - 0.5) < 1e-7
    # one column: rank_norm = 1/2, so p = float32(density - epsilon) + float32(epsilon)
    assert drop.della_probability_oracle(np.array([1]), 1, 0.5, 0.1).tolist() == [low + eps]


def test_della_probability_is_torchs() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for _ in range(50):
        ncols = int(rng.integers(2, 5000))
        density = float(rng.uniform(0.05, 0.95))
        epsilon = float(rng.uniform(-1, 1) * min(density, 1 - density) * 0.999)
        ranks = torch.arange(ncols).to(torch.float32) + 1  # mergekit's lines, minus the argsorts
        rank_norm = ((ranks - ranks.min()) / (ranks.max() - ranks.min())).clamp(0, 1)
        probs = (density - epsilon) + rank_norm * 2 * epsilon
        expected = drop.della_probability_oracle(np.arange(1, ncols + 1), ncols, density, epsilon)
        np.testing.assert_array_equal(probs.numpy(), expected)


def test_della_single_column_keeps_about_density() -> None:
    n = 200_000
    mags = np.ones(n, np.float32)
    keep = np.empty(n, bool)
    kept = drop.della_keep(_u64(drop.stream_key(0, 0, 1)), 0, mags, 1, 0.3, 0.2, keep)
    assert _within(kept, n, float(np.float32(0.3 - 0.2) + np.float32(0.2)))


def test_della_keep_rate_rises_with_rank_as_the_formula_says() -> None:
    ncols, nrows = 32, 40_000
    rng = np.random.default_rng(11)
    mags = _magnitudes(rng, ncols * nrows, "bf16", 20)  # many ties: ranks decided by index
    keep = np.empty(mags.size, bool)
    density, epsilon = 0.5, 0.3
    drop.della_keep(_u64(drop.stream_key(9, 0, drop.tensor_key("w"))), 0, mags, ncols, density, epsilon, keep)
    ranks = drop.row_ranks_oracle(mags, ncols)
    counts = np.bincount(ranks[keep] - 1, minlength=ncols)  # kept elements of each rank, over the rows
    p = drop.della_probability_oracle(np.arange(1, ncols + 1), ncols, density, epsilon).astype(np.float64)
    for r in range(ncols):
        assert _within(int(counts[r]), nrows, float(p[r])), (r, counts[r], p[r])
    slope = np.polyfit(np.arange(ncols), counts / nrows, 1)[0]
    assert abs(slope - 2 * epsilon / (ncols - 1)) < 0.1 * 2 * epsilon / (ncols - 1)


def test_della_extremes_and_partial_rows() -> None:
    mags = np.arange(40, dtype=np.float32)
    keep = np.empty(40, bool)
    key = _u64(7)
    assert drop.della_keep(key, 0, mags, 8, 1.0, 0.5, keep) == 40 and keep.all()
    assert drop.della_keep(key, 0, mags, 8, 0.0, 0.5, keep) == 0 and not keep.any()
    with pytest.raises(ValueError, match="whole rows"):
        drop.della_keep(key, 0, mags, 7, 0.5, 0.1, keep)
