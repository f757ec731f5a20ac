"""Accuracy of a merged backbone with each task's own (frozen, never merged) head."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from .data import TaskData
from .model import Backbone, accuracy, load_backbone

log = logging.getLogger(__name__)


class Evaluator:
    """Caches the accuracy of (model folder, task, split), so a point evaluated twice is computed once."""

    def __init__(self, tasks: Sequence[TaskData], heads: dict[str, nn.Linear]) -> None:
        self.tasks = {t.name: t for t in tasks}
        self.heads = heads
        self._cache: dict[tuple[Path, str, str], float] = {}
        self._loaded: tuple[Path, Backbone] | None = None

    def _backbone(self, folder: Path) -> Backbone:
        if self._loaded is None or self._loaded[0] != folder:
            self._loaded = (folder, load_backbone(folder))
        return self._loaded[1]

    def acc(self, folder: Path, task: str, split: str) -> float:
        key = (folder, task, split)
        if key not in self._cache:
            data = getattr(self.tasks[task], split)
            value = accuracy(self._backbone(folder), self.heads[task], data)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"accuracy {value} of {folder} on {task}/{split} is not in [0, 1]")
            self._cache[key] = value
        return self._cache[key]

    def accs(self, folder: Path, tasks: Sequence[str], split: str) -> dict[str, float]:
        return {t: self.acc(folder, t, split) for t in tasks}


def normalised(accs: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """Each task's accuracy divided by its fine-tuned model's accuracy on the same split."""
    return {t: a / reference[t] for t, a in accs.items()}


def mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values)
