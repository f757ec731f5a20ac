"""The table of kernels and oracles (``ooc_ties.kernels.pairs.PAIRS``): every kernel is in it, and every
kernel gives its oracle's result on random blocks of several sizes (across the kernels' 2048-element
tiles). Each kernel's own tests go further (hypothesis strategies, edge cases)."""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

import ooc_ties.kernels
from ooc_ties.kernels.pairs import PAIRS


def _kernels() -> set[str]:
    """The names of the compiled entry points (``@kernel``) of every module of ``ooc_ties.kernels``
    (``@helper``s, called only from kernels, are marked ``is_helper``)."""
    found = set()
    for info in pkgutil.iter_modules(ooc_ties.kernels.__path__):
        module = importlib.import_module(f"ooc_ties.kernels.{info.name}")
        for name, value in vars(module).items():
            ours = isinstance(value, CPUDispatcher) and value.__module__ == module.__name__
            if ours and not getattr(value, "is_helper", False):
                found.add(name)
    return found


def test_every_kernel_has_its_oracle_in_the_table() -> None:
    assert _kernels() == set(PAIRS)


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("n", [1, 700, 2048 * 2 + 350])
@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_matches_its_oracle(name: str, n: int, seed: int) -> None:
    kernel, oracle = PAIRS[name].case(np.random.default_rng([seed, n]), n)
    assert kernel() == oracle()
