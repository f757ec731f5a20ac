"""The interference report: what a merge does to each tensor, in numbers and pictures (docs/report.md).

Modules, in the order a report is made:

- :mod:`~ooc_ties.report.collect`: pass 2 counts every block as it merges it (the merge kernel's
  ``counts``) and adds each tensor's blocks up;
- :mod:`~ooc_ties.report.document`: ``report.json`` and ``tensors.csv`` from those sums, the
  thresholds and pass 1's magnitude histograms;
- :mod:`~ooc_ties.report.plots`: the PNG plots (matplotlib, the ``[plot]`` extra);
- :mod:`~ooc_ties.report.write`: the report folder, staged and published, with its ``index.html``.

:func:`ooc_ties.analyze.analyze` makes a report without writing a merge; ``merge(..., report=...)``
makes it beside one.
"""
