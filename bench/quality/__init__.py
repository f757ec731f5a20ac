"""A small, real multi-task benchmark of the merge methods (issue 17): ``python -m bench.quality``.

Trains a small 1-D conv backbone on a pretext task, fine-tunes one copy per task on MNIST-1D variants,
merges the fine-tunes with the ``ooc-ties`` CLI and reports normalised accuracy (see README.md here).
"""
