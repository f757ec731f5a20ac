"""Time every kernel beside its NumPy oracle, from the one table of pairs (``ooc_ties.kernels.pairs``).

    python bench/kernel_bench.py [--elements 4194304] [--repeat 5] [KERNEL ...]

Each pair's case builds a block of ``--elements`` values (three bf16 fine-tunes and a base, with ties
and cancelling values), then the kernel and the oracle each run ``--repeat`` times after a warm-up
(the kernel's compilation); the best time per element is printed, with the oracle's and their ratio,
and the two results are checked equal. One thread, warm caches: a kernel's cost, not a merge's
(bench/bench_merge.py measures whole merges).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ooc_ties.kernels.pairs import PAIRS


def _best(run: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kernels", nargs="*", help="kernels to time (default: all)")
    parser.add_argument("--elements", type=int, default=1 << 22)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    names = args.kernels or sorted(PAIRS)
    unknown = sorted(set(names) - set(PAIRS))
    if unknown:
        parser.error(f"unknown kernel {unknown[0]!r} (known: {', '.join(sorted(PAIRS))})")
    n = args.elements
    print(f"{'kernel':<20} {'ns/element':>11} {'oracle ns/el':>13} {'oracle/kernel':>14}")
    for name in names:
        kernel, oracle = PAIRS[name].case(np.random.default_rng(0), n)
        if kernel() != oracle():  # (also compiles the kernel)
            raise SystemExit(f"{name}: the kernel and its oracle disagree")
        k = _best(kernel, args.repeat) / n * 1e9
        o = _best(oracle, max(1, args.repeat // 2)) / n * 1e9
        print(f"{name:<20} {k:>11.2f} {o:>13.2f} {o / k:>13.1f}x")


if __name__ == "__main__":
    main()
