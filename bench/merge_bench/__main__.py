"""``python -m merge_bench`` (from bench/) runs the benchmark, as ``python bench/bench_merge.py`` does."""

import sys

from .cli import main

sys.exit(main())
