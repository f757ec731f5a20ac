"""The ``ooc-ties merge`` benchmark, one module per stage of its flow.

- :mod:`.data`: the synthetic models (generated once, located, counted), the workdir, the mergekit configs
  (TIES as the ``mergekit`` preset, and one per merge method);
- :mod:`.variants`: what is run, as data: ooc-ties presets and thread counts, ooc-ties on a method's config,
  ``mergekit-yaml``, the in-RAM reference, and the I/O floors they are compared with;
- :mod:`.measure`: running one command: wall time, rusage, sampled RssAnon / RssFile, how it ended, and
  the phases of a ``-vv`` run;
- :mod:`.run`: one shape, in order: warm-up reads, dry-run estimates, phase runs, the timed rounds;
- :mod:`.compare`: ``--compare-output``, mergekit-yaml's output against ooc-ties', tensor by tensor;
- :mod:`.report`: medians, ratios, the printed tables (one row per method with ``--methods``) and the JSON;
- :mod:`.environment`: the machine, the executable, the sources' digest and git state;
- :mod:`.cli`: the options; ``bench/bench_merge.py`` is its entry point.

The benchmark process never imports ``ooc_ties`` or NumPy: a child's ``ru_maxrss`` starts from the RSS of
the process it was forked from. What needs them runs in a child. See bench/README.md.
"""
