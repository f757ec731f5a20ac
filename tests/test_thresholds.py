"""Pass 1's one-read select: a sample brackets each threshold, one read counts both histogram levels,
and a second read runs only where the exact bin lies outside the bracket. Thresholds are exact either way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from ooc_ties import PRESETS, MergeOptions, Resources, merge, thresholds
from ooc_ties.inputs import MergeInputs
from ooc_ties.io.arrays import ArraySource
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.kernels.histogram import HIGH_BINS, bracket_width
from ooc_ties.plan import make_plan
from ooc_ties.reference import reference_merge
from ooc_ties.thresholds import (
    BRACKET_BINS,
    SAMPLE_STRIDE,
    Pass1Result,
    choose_bracket,
    compute_thresholds,
    max_reads,
)

# The histograms only: no tie counts (threshold rule), no vote (positive zero sign).
ONLY_HISTOGRAMS = PRESETS["paper"].with_(zero_sign="positive")
SECOND_READ = "thresholds, second read over"


def _pass1(
    base: np.ndarray, fts: list[np.ndarray], options: MergeOptions, block: int, threads: int = 2
) -> tuple[Pass1Result, int, int]:
    """Pass 1 over one tensor ``w``; returns the result, the bytes of one read and of the sample."""
    inputs = MergeInputs(
        ArraySource({"w": base}, "<base>"), tuple(ArraySource({"w": f}, f"<model {i}>") for i, f in enumerate(fts))
    )
    plan = make_plan(inputs.base, inputs.fts, options, Resources(threads=threads, max_block_elements=block))
    result = compute_thresholds(plan, inputs)
    itemsize = base.itemsize + sum(f.itemsize for f in fts)
    sampled = sum(min(block, base.size - start) for start in range(0, base.size, block * SAMPLE_STRIDE))
    return result, base.size * itemsize, sampled * itemsize


def _exact(base: np.ndarray, ft: np.ndarray, options: MergeOptions) -> tuple[int, int]:
    """``(pattern, kept)`` of the threshold by sorting every magnitude (the threshold rule)."""
    mags = np.sort(np.abs(ft.astype(np.float32) - base.astype(np.float32)))
    m = int(mags.size * options.density)
    t = mags[mags.size - m - 1]
    return int(t.view(np.uint32)), int(np.count_nonzero(mags >= t))


def _check_exact(result: Pass1Result, base: np.ndarray, fts: list[np.ndarray], options: MergeOptions) -> None:
    got = [(g.pattern, g.kept) for g in result.thresholds.groups[""]]
    assert got == [_exact(base, ft, options) for ft in fts]


def _levels(rng: np.random.Generator, n: int, levels: list[float], weights: list[float]) -> np.ndarray:
    """Task values from a few magnitudes (like bf16 task vectors), random signs."""
    mags = rng.choice(np.array(levels, np.float32), size=n, p=weights)
    return (mags * rng.choice(np.array([-1, 1], np.float32), size=n)).astype(np.float32)


def test_a_representative_sample_needs_one_read(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    n, block = 64 * 500, 500
    base = (rng.standard_normal(n) * 0.02).astype(np.float32)
    # The 80% rank lies in the middle of the third level: any fair sample brackets it.
    fts = [base + _levels(rng, n, [0.0, 0.25, 0.5, 0.75], [0.3, 0.3, 0.35, 0.05]) for _ in range(2)]
    with caplog.at_level(logging.DEBUG, logger="ooc_ties.thresholds"):
        result, full, sample = _pass1(base, fts, ONLY_HISTOGRAMS, block)
    assert SECOND_READ not in caplog.text
    assert "threshold sample over" in caplog.text
    assert result.bytes_read == sample + full
    _check_exact(result, base, fts, ONLY_HISTOGRAMS)


def _unrepresentative(rng: np.random.Generator, n_blocks: int, block: int) -> np.ndarray:
    """Task values whose sampled blocks (every 8th) are large and the others small: the sample
    puts the threshold far above the truth."""
    sampled = (np.arange(n_blocks * block) // block) % SAMPLE_STRIDE == 0
    return np.where(sampled, rng.uniform(1.0, 2.0, sampled.size), rng.uniform(1e-3, 2e-3, sampled.size)).astype(
        np.float32
    )


def test_a_misleading_sample_costs_more_reads_not_exactness(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(1)
    n_blocks, block = 64, 256
    base = np.zeros(n_blocks * block, np.float32)
    fair = _levels(rng, base.size, [0.0, 0.25, 0.5, 0.75], [0.3, 0.3, 0.35, 0.05])
    fts = [base + _unrepresentative(rng, n_blocks, block), base + fair]
    with caplog.at_level(logging.DEBUG, logger="ooc_ties.thresholds"):
        result, full, sample = _pass1(base, fts, ONLY_HISTOGRAMS, block)
    # the threshold lies far below the span the sample chose: the two-read select runs for model 1
    assert "model 1: threshold below the span of the bracket" in caplog.text
    assert "model 2: threshold bin" in caplog.text and "in the bracket" in caplog.text
    assert SECOND_READ in caplog.text and "thresholds, third read over" in caplog.text
    assert result.bytes_read == sample + 3 * full
    _check_exact(result, base, fts, ONLY_HISTOGRAMS)


def test_a_threshold_between_bracket_bins_costs_one_more_read(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bracket of two bins far apart: the wanted bin lies in the span between them, counted exactly
    there, so only its low bits need a second read."""
    rng = np.random.default_rng(4)
    n, block = 64 * 500, 500
    base = np.zeros(n, np.float32)
    fts = [base + _levels(rng, n, [0.0, 0.25, 0.5, 0.75], [0.3, 0.3, 0.35, 0.05]) + rng.uniform(0, 0.01, n)]
    wanted = _exact(base, fts[0], ONLY_HISTOGRAMS)[0] >> 16
    far = np.array([wanted - 40, wanted + 40])
    monkeypatch.setattr(thresholds, "choose_bracket", lambda sampled, rank, size: (far, 0.5))
    with caplog.at_level(logging.DEBUG, logger="ooc_ties.thresholds"):
        result, full, sample = _pass1(base, fts, ONLY_HISTOGRAMS, block)
    assert f"model 1: threshold bin {wanted:#x} outside the bracket" in caplog.text
    assert SECOND_READ in caplog.text and "third read" not in caplog.text
    assert result.bytes_read == sample + 2 * full
    _check_exact(result, base, fts, ONLY_HISTOGRAMS)


@pytest.mark.parametrize("preset", ["paper", "mergekit"])
def test_merge_after_a_second_read_matches_the_reference(tmp_path: Path, preset: str) -> None:
    rng = np.random.default_rng(2)
    n_blocks, block = 64, 128
    base = (rng.standard_normal(n_blocks * block) * 0.02).astype(np.float32)
    tensors = [base] + [base + _unrepresentative(rng, n_blocks, block) * s for s in (1.0, -0.7, 0.4)]
    paths = [tmp_path / f"m{i}.safetensors" for i in range(len(tensors))]
    for path, w in zip(paths, tensors, strict=True):
        save_file({"w": w.reshape(n_blocks, block), "b": w[:100].copy()}, path)
    options = PRESETS[preset]
    result = merge(paths[0], paths[1:], tmp_path / "out", options, Resources(threads=2, max_block_elements=block))
    with Checkpoint(result.output) as c:
        got = {n: c.read(n).tobytes() for n in c.names}
    assert got == {n: a.tobytes() for n, a in reference_merge(paths[0], paths[1:], options).items()}


def test_all_zero_task_vectors() -> None:
    base = np.random.default_rng(3).standard_normal(40 * 100).astype(np.float32)
    result, full, sample = _pass1(base, [base.copy(), base.copy()], ONLY_HISTOGRAMS, 100)
    assert [(g.pattern, g.kept) for g in result.thresholds.groups[""]] == [(0, base.size)] * 2
    assert result.bytes_read == sample + full  # the zero bin is the only one: always in the bracket


def test_a_single_block_group_reads_twice() -> None:
    """A sample of a one-block group would be the whole group: the two-read select, no sample."""
    rng = np.random.default_rng(4)
    base = np.zeros(3000, np.float32)
    fts = [base + rng.standard_normal(base.size).astype(np.float32)]
    result, full, sample = _pass1(base, fts, ONLY_HISTOGRAMS, 4096)
    assert sample == full and result.bytes_read == 2 * full
    _check_exact(result, base, fts, ONLY_HISTOGRAMS)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n_blocks=st.integers(2, 40),
    block=st.integers(1, 300),
    spread=st.sampled_from([0.0, 0.1, 1.0, 5.0]),
    density=st.sampled_from([0.01, 0.2, 0.5, 0.9]),
    n_models=st.integers(1, 3),
    threads=st.integers(1, 2),
)
def test_thresholds_are_exact_whatever_the_sample(
    seed: int, n_blocks: int, block: int, spread: float, density: float, n_models: int, threads: int
) -> None:
    """Blocks with their own scales (``spread``: the sample may mislead), few or many values per bin."""
    rng = np.random.default_rng(seed)
    n = n_blocks * block
    base = (rng.standard_normal(n) * 0.02).astype(np.float32)
    scales = np.repeat(np.exp(spread * rng.standard_normal(n_blocks)), block)
    fts = [(base + (rng.standard_normal(n) * scales).astype(np.float32)).astype(np.float32) for _ in range(n_models)]
    options = ONLY_HISTOGRAMS.with_(density=density)
    result, full, sample = _pass1(base, fts, options, block, threads)
    assert result.bytes_read in (sample + full, sample + 2 * full, sample + 3 * full)
    _check_exact(result, base, fts, options)


def test_choose_bracket_dense_bins_around_the_rank() -> None:
    sampled = np.zeros(HIGH_BINS, np.int64)
    sampled[1000:1100] = 50  # 5000 values over 100 bins
    bins, chance = choose_bracket(sampled, rank=60_000, size=100_000)  # 60%: bin 1060 of the sample
    assert len(bins) == BRACKET_BINS and np.all(np.diff(bins) == 1) and bins[0] <= 1060 <= bins[-1]
    assert 0 < chance < 1


def test_choose_bracket_sparse_heavy_bins_far_apart() -> None:
    sampled = np.zeros(HIGH_BINS, np.int64)
    sampled[[100, 164, 228, 5000]] = [400, 300, 295, 5]  # bf16-like: a few heavy bins
    sampled[[101, 102, 103, 104, 105, 106, 107, 108]] = 1  # and a scatter of light ones
    # The wanted rank sits near the edge between the heavy bins 100 and 164: both must be in.
    bins, chance = choose_bracket(sampled, rank=4040, size=10_080)
    assert {100, 164} <= set(bins.tolist()) and len(bins) <= BRACKET_BINS
    assert chance > 0.9  # the light bins between them get the remaining slots


def test_choose_bracket_of_an_empty_sample_is_empty() -> None:
    bins, chance = choose_bracket(np.zeros(HIGH_BINS, np.int64), rank=1, size=10)
    assert bins.size == 0 and chance == 0.0


@pytest.mark.parametrize("preset", ["paper", "mergekit"])
@pytest.mark.parametrize("density", [0.2, 1.0])
def test_threshold_passes_and_progress_follow_one_rule(
    tiny_models: tuple[Path, list[Path]], preset: str, density: float
) -> None:
    from ooc_ties import plan_merge

    options = PRESETS[preset].with_(density=density)
    plan = plan_merge(*tiny_models, options)
    assert plan.threshold_passes == max_reads(options, SAMPLE_STRIDE, 1) / SAMPLE_STRIDE
    histograms = 0.0 if density >= 1 else 3.125
    ties = 1.0 if density < 1 and preset == "mergekit" else 0.0
    vote = 1.0 if preset == "paper" else 0.0
    assert plan.threshold_passes == histograms + ties + vote


def test_the_budget_counts_the_bracket(tiny_models: tuple[Path, list[Path]]) -> None:
    from ooc_ties import plan_merge

    plan = plan_merge(*tiny_models, PRESETS["paper"], Resources(threads=3))
    one_read = 3 * plan.n_models * bracket_width(BRACKET_BINS) * 8
    assert plan.peak_memory_estimate > one_read
