"""The data: procedurally generated MNIST-1D signals (no download), a pretext split and eight tasks.

Every task is a different "dataset" over one input domain (length-40 signals): its own disjoint draw of
MNIST-1D samples, an input transformation of its own and, for two of them, a label function of its own.
The pretext task (the analogue of the paper's pretrained CLIP) is 10-class digit recognition on the plain,
untransformed signals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mnist1d.data import get_dataset_args, make_dataset

log = logging.getLogger(__name__)

Array = np.ndarray
Transform = Callable[[Array, np.random.Generator], Array]
LabelFn = Callable[[Array], Array]


@dataclass(frozen=True)
class Split:
    """Inputs (n, 40) float32 and integer labels (n,)."""

    x: Array
    y: Array


@dataclass(frozen=True)
class TaskData:
    """One task's train / validation / test splits and its number of classes."""

    name: str
    n_classes: int
    train: Split
    val: Split
    test: Split


@dataclass(frozen=True)
class Sizes:
    """Samples per split: the pretext set, and each task's train / validation / test."""

    pretext: int
    train: int
    val: int
    test: int

    @property
    def per_task(self) -> int:
        return self.train + self.val + self.test


FULL = Sizes(pretext=6000, train=2000, val=500, test=1500)
SMOKE = Sizes(pretext=1500, train=600, val=200, test=300)


def _standardise(x: Array) -> Array:
    return ((x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-6)).astype(np.float32)


def _reverse(x: Array, rng: np.random.Generator) -> Array:
    return x[:, ::-1]


def _negate(x: Array, rng: np.random.Generator) -> Array:
    return -x


def _permute(x: Array, rng: np.random.Generator) -> Array:
    return x[:, rng.permutation(x.shape[1])]  # one fixed permutation of the positions per seed


def _derivative(x: Array, rng: np.random.Generator) -> Array:
    return _standardise(np.gradient(x, axis=1))


def _square(x: Array, rng: np.random.Generator) -> Array:
    return _standardise(x**2)  # the sign of the signal is lost


def _downsample(x: Array, rng: np.random.Generator) -> Array:
    return np.repeat(x[:, ::2], 2, axis=1)


def _roll(x: Array, rng: np.random.Generator) -> Array:
    return np.roll(x, x.shape[1] // 2, axis=1)


def _noise(x: Array, rng: np.random.Generator) -> Array:
    return x + rng.normal(0.0, 0.7, size=x.shape).astype(np.float32)


def _digit(y: Array) -> Array:
    return y


def _half(y: Array) -> Array:
    return y // 2


def _parity(y: Array) -> Array:
    return y % 2


@dataclass(frozen=True)
class TaskSpec:
    name: str
    transform: Transform
    label: LabelFn
    n_classes: int


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("reversed", _reverse, _digit, 10),
    TaskSpec("negated", _negate, _digit, 10),
    TaskSpec("permuted", _permute, _digit, 10),
    TaskSpec("derivative", _derivative, _digit, 10),
    TaskSpec("squared", _square, _digit, 10),
    TaskSpec("downsampled", _downsample, _digit, 10),
    TaskSpec("rolled-pairs", _roll, _half, 5),
    TaskSpec("noisy-parity", _noise, _parity, 2),
)


def generate_pool(n: int, seed: int) -> Split:
    """``n`` MNIST-1D samples made locally by the mnist1d package's generator (``make_dataset``, no network)."""
    args = get_dataset_args()
    args.num_samples = -(-n // 10) * 10  # make_dataset draws num_samples // 10 per class
    args.train_split = 1.0
    args.seed = seed
    data = make_dataset(args)
    x, y = data["x"][:n].astype(np.float32), data["y"][:n].astype(np.int64)
    log.info("generated %d MNIST-1D samples (seed %d)", len(y), seed)
    return Split(x, y)


def _slice(pool: Split, start: int, stop: int) -> Split:
    return Split(pool.x[start:stop], pool.y[start:stop])


def _make_task(spec: TaskSpec, raw: Split, sizes: Sizes, rng: np.random.Generator) -> TaskData:
    x = np.ascontiguousarray(spec.transform(raw.x, rng), dtype=np.float32)
    y = spec.label(raw.y)
    part = Split(x, y)
    a, b = sizes.train, sizes.train + sizes.val
    return TaskData(spec.name, spec.n_classes, _slice(part, 0, a), _slice(part, a, b), _slice(part, b, sizes.per_task))


def build(seed: int, n_tasks: int, sizes: Sizes) -> tuple[Split, list[TaskData]]:
    """The pretext split and the first ``n_tasks`` tasks, from disjoint parts of one pool drawn with ``seed``."""
    if not 1 <= n_tasks <= len(TASKS):
        raise ValueError(f"--tasks must be 1..{len(TASKS)}, not {n_tasks}")
    pool = generate_pool(sizes.pretext + n_tasks * sizes.per_task, seed)
    pretext = _slice(pool, 0, sizes.pretext)
    rng = np.random.default_rng(seed)
    tasks = []
    for i, spec in enumerate(TASKS[:n_tasks]):
        start = sizes.pretext + i * sizes.per_task
        tasks.append(_make_task(spec, _slice(pool, start, start + sizes.per_task), sizes, rng))
    return pretext, tasks
