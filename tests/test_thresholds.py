"""Pass 1's one-read select: a sample brackets each threshold, one read counts both histogram levels,
and a second read runs only where the exact bin lies outside the bracket. Thresholds are exact either way.

The inputs record what pass 1 reads (how often each block, and how many bytes), so the tests check what
it did, not how the code counts it: thresholds against a full sort, reads against the plan's and the
progress bar's figures, memory against the plan's estimate.
"""

from __future__ import annotations

import collections
import logging
import threading
import tracemalloc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from ooc_ties import PRESETS, MergeOptions, Resources, merge, plan_merge
from ooc_ties.dtypes import BF16
from ooc_ties.inputs import MergeInputs
from ooc_ties.io.arrays import ArraySource
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.kernels.histogram import HIGH_BINS
from ooc_ties.pass1 import order
from ooc_ties.pass1.costs import BRACKET_BINS, SAMPLE_STRIDE, plan_reads
from ooc_ties.pass1.order import choose_bracket
from ooc_ties.pass1.run import Pass1Result, compute_thresholds
from ooc_ties.plan import make_plan
from ooc_ties.reference import reference_merge

# The histograms only: no tie counts (threshold rule), no vote (positive zero sign).
ONLY_HISTOGRAMS = PRESETS["paper"].with_(zero_sign="positive")
SECOND_READ = "thresholds, second read over"


class RecordingSource(ArraySource):
    """NumPy arrays as a merge input that record every read: its element range, and its bytes."""

    def __init__(self, arrays: Mapping[str, np.ndarray], label: str) -> None:
        super().__init__(arrays, label)
        self.bytes_read = 0
        self.ranges: collections.Counter[tuple[str, int, int]] = collections.Counter()
        self._lock = threading.Lock()

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        values = super().read(name, start, stop)
        with self._lock:
            self.bytes_read += values.nbytes
            self.ranges[name, start, start + values.size] += 1
        return values


def _recording(base: Mapping[str, np.ndarray], fts: list[Mapping[str, np.ndarray]]) -> MergeInputs:
    return MergeInputs(
        RecordingSource(base, "<base>"), tuple(RecordingSource(f, f"<model {i}>") for i, f in enumerate(fts, 1))
    )


def _bytes_read(inputs: MergeInputs) -> int:
    return sum(source.bytes_read for source in inputs.all)  # type: ignore[attr-defined]


def _pass1(
    base: np.ndarray, fts: list[np.ndarray], options: MergeOptions, block: int, threads: int = 2
) -> tuple[Pass1Result, list[int]]:
    """Pass 1 over one tensor ``w`` in blocks of ``block`` elements: the result, and how many times each
    block was read."""
    inputs = _recording({"w": base}, [{"w": f} for f in fts])
    plan = make_plan(inputs.base, inputs.fts, options, Resources(threads=threads, max_block_elements=block))
    result = compute_thresholds(plan, inputs)
    ranges = inputs.base.ranges  # type: ignore[attr-defined]
    assert all(source.ranges == ranges for source in inputs.fts)  # type: ignore[attr-defined]
    assert result.bytes_read == _bytes_read(inputs)  # what pass 1 reports is what it read
    n_blocks = -(-base.size // block)
    reads = [ranges["w", i * block, min((i + 1) * block, base.size)] for i in range(n_blocks)]
    assert sum(reads) == sum(ranges.values())  # every read was of one whole block
    assert result.bytes_read <= sum(r.nbytes for r in plan_reads(plan))  # the dry run's "at most"
    return result, reads


def _sampled_twice(n_blocks: int, reads: int) -> list[int]:
    """Reads per block when every block is read ``reads`` times and the sample (every 8th block, from
    the first) once more."""
    return [reads + (i % SAMPLE_STRIDE == 0) for i in range(n_blocks)]


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
    with caplog.at_level(logging.DEBUG, logger="ooc_ties.pass1"):
        result, reads = _pass1(base, fts, ONLY_HISTOGRAMS, block)
    assert SECOND_READ not in caplog.text
    assert "threshold sample over" in caplog.text
    assert reads == _sampled_twice(64, 1)
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
    with caplog.at_level(logging.DEBUG, logger="ooc_ties.pass1"):
        result, reads = _pass1(base, fts, ONLY_HISTOGRAMS, block)
    # the threshold lies far below the span the sample chose: the two-read select runs for model 1
    assert "model 1: threshold below the span of the bracket" in caplog.text
    assert "model 2: threshold bin" in caplog.text and "in the bracket" in caplog.text
    assert SECOND_READ in caplog.text and "thresholds, third read over" in caplog.text
    assert reads == _sampled_twice(n_blocks, 3)
    _check_exact(result, base, fts, ONLY_HISTOGRAMS)


def test_a_threshold_between_bracket_bins_costs_one_more_read(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bracket of two bins far apart: the wanted bin lies in the span between them, counted exactly
    there, so only its low bits need a second read."""
    rng = np.random.default_rng(4)
    n, block = 64 * 500, 500
    base = np.zeros(n, np.float32)
    noise = rng.uniform(0, 0.01, n).astype(np.float32)
    fts = [base + _levels(rng, n, [0.0, 0.25, 0.5, 0.75], [0.3, 0.3, 0.35, 0.05]) + noise]
    wanted = _exact(base, fts[0], ONLY_HISTOGRAMS)[0] >> 16
    far = np.array([wanted - 40, wanted + 40])
    monkeypatch.setattr(order, "choose_bracket", lambda sampled, rank, size: (far, 0.5))
    with caplog.at_level(logging.DEBUG, logger="ooc_ties.pass1"):
        result, reads = _pass1(base, fts, ONLY_HISTOGRAMS, block)
    assert f"model 1: threshold bin {wanted:#x} outside the bracket" in caplog.text
    assert SECOND_READ in caplog.text and "third read" not in caplog.text
    assert reads == _sampled_twice(64, 2)
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
    result, reads = _pass1(base, [base.copy(), base.copy()], ONLY_HISTOGRAMS, 100)
    assert [(g.pattern, g.kept) for g in result.thresholds.groups[""]] == [(0, base.size)] * 2
    assert reads == _sampled_twice(40, 1)  # the zero bin is the only one: always in the bracket


def test_a_single_block_group_reads_twice() -> None:
    """A sample of a one-block group would be the whole group: the two-read select, no sample."""
    rng = np.random.default_rng(4)
    base = np.zeros(3000, np.float32)
    fts = [base + rng.standard_normal(base.size).astype(np.float32)]
    result, reads = _pass1(base, fts, ONLY_HISTOGRAMS, 4096)
    assert reads == [2]
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
    result, reads = _pass1(base, fts, options, block, threads)
    assert reads in [_sampled_twice(n_blocks, k) for k in (1, 2, 3)]
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


@dataclass
class RecordedBar:
    """A progress bar pass 1 opened: its total (grown as the pass asks), the bytes it was advanced by,
    whether it ever went past its total, and whether it was closed."""

    description: str
    total: int
    done: int = 0
    overrun: bool = False
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def advance(self, nbytes: int) -> None:
        with self.lock:
            self.done += nbytes
            self.overrun |= self.done > self.total

    def grow(self, nbytes: int) -> None:
        with self.lock:
            self.total += nbytes

    def close(self) -> None:
        self.closed = True


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    """A checkpoint's tensors as arrays in memory (bf16 as ml_dtypes' bfloat16)."""
    with Checkpoint(folder) as c:
        arrays = {}
        for name in c.names:
            info = c.info(name)
            values = np.array(c.read(name))
            arrays[name] = (values.view(ml_dtypes.bfloat16) if info.dtype == BF16 else values).reshape(info.shape)
    return arrays


def _float32_models(base: dict[str, np.ndarray], n_models: int) -> list[dict[str, np.ndarray]]:
    """Fine-tunes of ``base`` in float32 whose task values are all distinct: no ties at a threshold."""
    rng = np.random.default_rng(5)
    return [
        {name: (a.astype(np.float32) + rng.standard_normal(a.shape, np.float32) * 0.01) for name, a in base.items()}
        for _ in range(n_models)
    ]


@pytest.mark.parametrize("preset", ["paper", "mergekit"])
@pytest.mark.parametrize("density", [0.2, 1.0])
@pytest.mark.parametrize("kind", ["bf16", "f32"])
def test_pass_1_reads_no_more_than_its_progress_bar_and_the_plan_announce(
    tiny_models: tuple[Path, list[Path]], preset: str, density: float, kind: str
) -> None:
    """bf16 task vectors have ties at the thresholds; float32 ones here have none, so pass 1 skips the
    tie counts it expected (mergekit's top-k), and its progress must still end full."""
    base, fts = tiny_models
    if kind == "bf16":
        inputs = _recording(_arrays(base), [_arrays(f) for f in fts])
    else:
        base32 = {name: a.astype(np.float32) for name, a in _arrays(base).items()}
        inputs = _recording(base32, _float32_models(base32, len(fts)))
    options = PRESETS[preset].with_(density=density)
    plan = make_plan(inputs.base, inputs.fts, options, Resources(threads=2, max_block_elements=4096))
    bars: list[RecordedBar] = []

    def progress(description: str, total: int) -> RecordedBar:
        bars.append(RecordedBar(description, total))
        return bars[-1]

    result = compute_thresholds(plan, inputs, progress)
    read = _bytes_read(inputs)
    assert read == result.bytes_read
    assert read <= sum(r.nbytes for r in plan_reads(plan))  # --dry-run: "at most N passes"
    if plan.threshold_passes == 0:  # nothing to find: no read, no bar
        assert read == 0 and bars == []
    else:
        (bar,) = bars
        assert bar.description.startswith("pass 1/2")
        assert bar.closed and bar.done == bar.total and not bar.overrun  # it ends full, never past full
        assert 0 < read <= bar.total


@pytest.mark.parametrize("threads", [1, 3])
def test_a_merge_allocates_less_than_the_plan_estimates(
    tiny_models: tuple[Path, list[Path]], tmp_path: Path, threads: int
) -> None:
    """The allocations a whole merge makes (traced: NumPy's and Python's), against the plan's estimate of
    the engine's own memory. Most of them are pass 1's one-read counts: several MB per model and worker."""
    base, fts = tiny_models
    resources = Resources(threads=threads, max_block_elements=4096)  # pass 2's buffers: small, so the test is sharp
    merge(base, fts, tmp_path / "warm-up", PRESETS["paper"], resources)  # kernels loaded, modules imported
    plan = plan_merge(base, fts, PRESETS["paper"], resources)
    tracemalloc.start()
    try:
        merge(base, fts, tmp_path / "out", PRESETS["paper"], resources)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= plan.peak_memory_estimate
