#!/usr/bin/env python3
"""Benchmark ``ooc-ties merge`` against the I/O floor of reading its inputs from a warm page cache.

    python bench/bench_merge.py --shape 1b --workdir /tmp/oocbench --repeat 3 [--budget 256MiB] [--json out.json]

* Generates ``WORKDIR/models/{base,ft1,ft2,ft3}`` once with ``ooc-ties generate SHAPE WORKDIR/models``.
* Per round (``--repeat`` rounds, alternating): the I/O floor (``cat`` every input file twice, as one
  command), then every merge variant (output deleted after each run). Every timed run starts after an
  untimed read of the inputs, so each finds them in the page cache whatever ran before it.
* Per run, for the whole child process (tree): wall time, CPU time (user+sys from ``os.wait4``), peak
  RSS (``ru_maxrss``), peak ``RssAnon`` and ``RssFile`` (sampled from ``/proc/<pid>/status`` every
  ~20 ms) and GB/s of input (input bytes counted once, whatever the number of passes).
* Reports medians per variant, ooc-ties/floor wall ratios and 1-thread/2-thread speedups, as a table
  and optionally as JSON.
* ``--methods all`` adds one row per merge method: ``ooc-ties merge --config METHOD.yml`` beside
  ``mergekit-yaml METHOD.yml`` on the same config, against the floor of reading the inputs once.

Before the timed rounds, each merge variant runs once untimed with ``-vv`` and progress bars (a warm-up
of the Numba cache and the page cache) and its stderr is timestamped line by line, which gives the
time of startup, pass 1 (and its sub-passes) and pass 2. See bench/README.md.

The work is done by the ``merge_bench`` package beside this file, one module per stage: ``data`` (the
models and the mergekit configs), ``variants`` (what is run), ``measure`` (one command), ``run`` (one shape),
``report`` (medians, ratios, tables, JSON) and ``cli`` (the options).
"""

import sys

from merge_bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
