"""Pass 1: the statistics pass 2 needs, computed out of core from integer histograms and counts.

Modules, in the order a group is computed:

- :mod:`~ooc_ties.pass1.costs`: what pass 1 reads and holds (the plan's estimates come from it);
- :mod:`~ooc_ties.pass1.scan`: one read, a kernel over some blocks on the plan's threads;
- :mod:`~ooc_ties.pass1.order`: exact order statistics of ``|tau|`` (the trim thresholds);
- :mod:`~ooc_ties.pass1.quotas`: how many ties at a threshold each block keeps (``topk``);
- :mod:`~ooc_ties.pass1.votes`: the majority sign (the paper's zero-sign rule);
- :mod:`~ooc_ties.pass1.thresholds`: the result as a value to save and reuse;
- :mod:`~ooc_ties.pass1.run`: :func:`~ooc_ties.pass1.run.compute_thresholds`, the stage itself.

The package re-exports nothing: the plan imports :mod:`~ooc_ties.pass1.costs`, and importing the
package must not import the stage's machinery (which imports the plan).
"""
