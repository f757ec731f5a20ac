"""Time every kernel beside its NumPy oracle, from the one table of pairs (``ooc_ties.kernels.pairs``).

    python bench/kernel_bench.py [--elements 4194304] [--repeat 5] [KERNEL ...]

Each pair's case builds a block of ``--elements`` values (three bf16 fine-tunes and a base, with ties
and cancelling values), then the kernel and the oracle each run ``--repeat`` times after a warm-up
(the kernel's compilation); the best time per element is printed, with the oracle's and their ratio,
and the two results are checked equal. One thread, warm caches: a kernel's cost, not a merge's
(bench/bench_merge.py measures whole merges). The kernels of the cases asked for take turns in each
round, so that on a shared machine they see the same load.

Besides the table's cases (whose thresholds have tie quotas that may run out in the block, half of
them under the general rule), two cases time the common path of a TIES merge, every tie kept and no
general rule: ``merge_trim``, and ``counted_trim``, the same merge counting what ``merge --report``
reports (the merge kernel's ``counts``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ooc_ties.kernels import convert, report, ties
from ooc_ties.kernels.pairs import PAIRS, Close

Thunks = tuple[Callable[[], Any], Callable[[], Any]]


def _trim_models(rng: np.random.Generator, n: int) -> tuple[Any, ...]:
    """Three bf16 models and a base as in the table's cases (task values of a few magnitudes, model 1
    undoing model 0 at half of the elements), a threshold per model from its data, every tie kept,
    the weights 1, 0.5, 2."""
    base = convert.encode_oracle((rng.standard_normal(n) * 0.02).astype(np.float32), np.dtype(np.uint16))
    b = convert.decode_oracle(base)
    values = [b + rng.integers(-6, 7, n).astype(np.float32) * np.float32(2.0**-9) for _ in range(3)]
    values[1] = np.where(rng.random(n) < 0.5, b + (b - values[0]), values[1])
    fts = tuple(convert.encode_oracle(v, np.dtype(np.uint16)) for v in values)
    thr = np.array([np.abs(convert.decode_oracle(ft) - b)[rng.integers(0, n)] for ft in fts], np.float32)
    return base, fts, thr, np.full(3, -1, np.int64), np.array([1.0, 0.5, 2.0], np.float32)


def _merge_trim(rng: np.random.Generator, n: int) -> Thunks:
    base, fts, thr, quota, weights = _trim_models(rng, n)
    out = np.empty(n, np.uint16)
    none = np.zeros(0, np.int64)
    lam = np.float32(0.7)

    def kernel() -> bytes:
        votes = np.zeros(4, np.int64)
        no_alt = np.zeros(0, np.uint16)
        ties.merge(base, fts, thr, quota, weights, lam, True, True, True, out, votes, none, none, no_alt)
        return out.tobytes()

    def oracle() -> bytes:
        merged, _ = ties.merge_oracle(base, fts, thr, quota, weights, lam, True, np.dtype(np.uint16))
        return bytes(merged.tobytes())

    return kernel, oracle


def _counted_trim(rng: np.random.Generator, n: int) -> Thunks:
    base, fts, thr, quota, weights = _trim_models(rng, n)
    out = np.empty(n, np.uint16)
    none = np.zeros(0, np.int64)
    lam = np.float32(0.7)

    def split(arrays: tuple[np.ndarray, ...]) -> tuple[Close, bytes]:
        merged, votes, magnitudes, elected, norms, dots, signs, counts, kept_hist, totals, discarded = arrays
        exact = (merged, votes, magnitudes, elected, signs, counts, kept_hist, totals)
        return Close(norms, dots, discarded), b"".join(a.tobytes() for a in exact)

    magnitudes = report.magnitude_histogram(len(fts))
    outputs = report.interference_outputs(len(fts))
    elected = np.empty(n, np.int8)  # (allocated once: fresh pages cost 0.1 ns per element)

    def kernel() -> tuple[Close, bytes]:
        for a in (magnitudes, *outputs):
            a.fill(0)
        votes = np.zeros(4, np.int64)
        no_alt = np.zeros(0, np.uint16)
        counts = (0, magnitudes, elected, *outputs)
        ties.merge(base, fts, thr, quota, weights, lam, True, True, True, out, votes, none, none, no_alt, None, counts)
        return split((out, votes[:3], magnitudes, elected, *outputs))

    def oracle() -> tuple[Close, bytes]:
        return split(ties.merge_oracle(base, fts, thr, quota, weights, lam, True, np.dtype(np.uint16), offset=0))

    return kernel, oracle


CASES: dict[str, Callable[[np.random.Generator, int], Thunks]] = {
    **{name: pair.case for name, pair in PAIRS.items()},
    "merge_trim": _merge_trim,
    "counted_trim": _counted_trim,
}
"""Every case by name: the table's and the two above."""


def _best(runs: list[Callable[[], Any]], repeat: int) -> list[float]:
    """The best time of each run over ``repeat`` rounds, the runs taking turns in each round."""
    best = [float("inf")] * len(runs)
    for _ in range(repeat):
        for i, run in enumerate(runs):
            started = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kernels", nargs="*", help="kernels to time (default: all)")
    parser.add_argument("--elements", type=int, default=1 << 22)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    names = args.kernels or sorted(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown kernel {unknown[0]!r} (known: {', '.join(sorted(CASES))})")
    n = args.elements
    cases = {name: CASES[name](np.random.default_rng(0), n) for name in names}
    for name, (kernel, oracle) in cases.items():
        if kernel() != oracle():  # (also compiles the kernel)
            raise SystemExit(f"{name}: the kernel and its oracle disagree")
    kernels = _best([kernel for kernel, _ in cases.values()], args.repeat)
    print(f"{'kernel':<20} {'ns/element':>11} {'oracle ns/el':>13} {'oracle/kernel':>14}")
    for name, k in zip(names, kernels, strict=True):
        o = _best([cases[name][1]], max(1, args.repeat // 2))[0] / n * 1e9
        k = k / n * 1e9
        print(f"{name:<20} {k:>11.2f} {o:>13.2f} {o / k:>13.1f}x")


if __name__ == "__main__":
    main()
