"""Each tensor's weights of the fine-tuned models: the merge's own, or the tensor's from a configuration."""

from __future__ import annotations

import numpy as np

from ooc_ties.config import MergeOptions

__all__ = ["TensorWeights"]


class TensorWeights:
    """``weights(name)``: the float32 weights of one tensor's models (the merge's, or the tensor's own
    from a configuration's gradients or filters, :meth:`MergeOptions.for_tensor`), each computed once.

    Pass 1's reads and pass 2's blocks ask for them block by block. A copy sent to a cluster's worker
    leaves the cache behind and fills its own."""

    def __init__(self, options: MergeOptions, n_models: int) -> None:
        self.options = options
        self.n_models = n_models
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, name: str) -> np.ndarray:
        weights = self._cache.get(name)
        if weights is None:  # (two threads may both compute it: the same value)
            weights = self._cache[name] = self.options.for_tensor(name).model_weights(self.n_models)
        return weights

    def __getstate__(self) -> dict[str, object]:
        return {"options": self.options, "n_models": self.n_models, "_cache": {}}
